"""The bundle run the way users run it: the README's commands, evaluate, inference, export and the bundle checks."""

import json
import os
import re

import pytest
import torch
import yaml
from helpers import BUNDLE_ROOT, CONFIGS, EVALUATE, INFERENCE, ORGANS, TRAIN, run_bundle
from monai.bundle import ConfigParser


@pytest.mark.slow
def test_training_writes_best_and_last_checkpoints_and_logs(tiny_bundle):
    assert (tiny_bundle["phantom_dir"] / "dataset_0.json").is_file()
    assert (tiny_bundle["ckpt_dir"] / "model.pt").is_file()
    assert (tiny_bundle["ckpt_dir"] / "checkpoint_epoch=2.pt").is_file()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tiny_bundle["output_dir"]))
    last = torch.load(tiny_bundle["ckpt_dir"] / "checkpoint_epoch=2.pt", weights_only=True)  # as a resume loads it
    assert set(last) == {"model", "optimizer", "lr_scheduler", "trainer", "best_model", "checkpointer"}
    # the files kept, this one included, and the best validation score so far (its model.pt)
    assert last["checkpointer"]["_saved"] == [(2, "checkpoint_epoch=2.pt")]
    assert len(last["best_model"]["_saved"]) == 1 and 0 <= last["best_model"]["_saved"][0][0] <= 1
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]  # saved after epoch 2
    # one summary line instead of per-iteration and per-epoch log lines: the losses and the best validation score
    log = tiny_bundle["image_log"]
    number = r"(\d+\.\d{4})"
    line = (
        rf"^image network: 2 epochs in \d+ s; loss {number} -> {number}; best val_accuracy (\d\.\d{{3}}) at epoch (\d)$"
    )
    summary = re.findall(line, log, re.MULTILINE)
    assert len(summary) == 1, log
    first, final, best, epoch = summary[0]
    assert float(first) > 0 and float(final) > 0
    assert float(best) == round(last["best_model"]["_saved"][0][0], 3) and int(epoch) in (1, 2)
    assert "Epoch[" not in log and "train_loss:" not in log and "Engine run" not in log


@pytest.mark.slow
def test_evaluate_reports_per_organ_metrics(tiny_bundle):
    config = str([TRAIN, EVALUATE])
    run_bundle("run", "evaluate_image", "--config_file", config, *tiny_bundle["overrides"])
    report = json.loads((tiny_bundle["output_dir"] / "image_metrics.json").read_text())
    assert report["samples"] == 2 * 7  # two validation cases, seven organs each
    assert list(report["recall_per_organ"]) == ORGANS
    counts = torch.tensor(report["confusion_matrix"]["counts"])
    assert counts.sum() == 14 and counts.sum(1).tolist() == [2] * 7
    assert report["accuracy"] == pytest.approx(float(counts.trace()) / 14)


@pytest.mark.slow
def test_inference_classifies_every_organ_of_a_ct(tiny_bundle, tmp_path):
    case = json.loads((tiny_bundle["phantom_dir"] / "dataset_0.json").read_text())["validation"][0]
    output = tmp_path / "predictions.json"
    run_bundle(
        "run",
        "inference",
        "--config_file",
        "bundle/configs/inference.yaml",
        "--image",
        str(tiny_bundle["phantom_dir"] / case["image"]),
        "--label",
        str(tiny_bundle["phantom_dir"] / case["label"]),
        "--ckpt_dir",
        str(tiny_bundle["ckpt_dir"]),
        "--output_file",
        str(output),
    )
    (predictions,) = json.loads(output.read_text()).values()
    assert sorted(predictions) == sorted(ORGANS)
    for organ in predictions.values():
        assert sum(organ["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert organ["predicted"] == max(organ["probabilities"], key=organ["probabilities"].get)


@pytest.mark.slow
def test_exported_torchscript_matches_the_eager_model(tiny_bundle, tmp_path):
    ts_file = tmp_path / "model.ts"
    run_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts_file),
        "--ckpt_file",
        str(tiny_bundle["ckpt_dir"] / "model.pt"),
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.yaml",
        cwd=BUNDLE_ROOT,
    )
    scripted = torch.jit.load(str(ts_file))
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(tiny_bundle["ckpt_dir"] / "model.pt", weights_only=True))
    net.eval()
    x = torch.rand(2, 1, 64, 64, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.slow
def test_bundle_checks_pass():
    run_bundle(
        "verify_metadata",
        "--meta_file",
        "configs/metadata.json",
        "--filepath",
        "docs/meta_schema.json",
        cwd=BUNDLE_ROOT,
    )
    run_bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.yaml",
        cwd=BUNDLE_ROOT,
    )


def test_inference_config_builds_the_trained_network_and_preprocessing():
    """inference.yaml stands alone (model-zoo style); its copies of train.yaml's blocks must not drift."""
    train, inference = (yaml.safe_load(open(f)) for f in (TRAIN, INFERENCE))
    shared = [
        "label_convention",
        "label_conventions",
        "label_ids",
        "organ_labels",
        "known_labels",
        "num_classes",
        "pixdim",
        "hu_window",
        "organ_margin",
        "num_slices",
        "slice_size",
        "volume_size",
        "vit_2d_def",
        "image_features",
        "pretrained_2d",
        "vit_2d",
        "vit_3d",
        "fusion",
        "network_def",
        "load_transforms",
        "sample_slices",
    ]
    assert {k: inference[k] for k in shared} == {k: train[k] for k in shared}


def test_metadata_describes_the_network():
    meta = json.load(open(os.path.join(CONFIGS, "metadata.json")))
    parser = ConfigParser()
    parser.read_config(TRAIN)
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["spatial_shape"] == parser.get_parsed_content("volume_size")
    assert pred["spatial_shape"] == [parser["num_slices"], len(parser.get_parsed_content("organ_labels"))]
    assert meta["version"] in meta["changelog"]


@pytest.mark.parametrize(
    "ablation, branches",
    [(None, ["2d", "3d", "fusion"]), ("2d_only", ["2d"]), ("3d_only", ["3d"]), ("concat", ["2d", "3d", "fusion"])],
)
def test_ablation_overrides_select_the_structure(ablation, branches):
    files = [TRAIN] + ([os.path.join(CONFIGS, "ablations", f"{ablation}.yaml")] if ablation else [])
    parser = ConfigParser()
    parser.read_config(files)
    net = parser.get_parsed_content("network_def")
    assert net.branches == branches
    fusion = type(net.fusion).__name__ if net.fusion is not None else None
    assert fusion == {None: "CrossAttentionFusion", "concat": "ConcatFusion"}.get(ablation)
    assert net(torch.rand(1, 1, 64, 64, 16)).shape == (1, len(branches), 16, 7)


@pytest.mark.parametrize(
    "files",
    [
        [],
        ["ablations/2d_only.yaml"],
        ["ablations/3d_only.yaml"],
        ["ablations/concat.yaml"],
        ["paper.yaml", "ablations/3d_only.yaml"],
    ],
)
def test_the_aligner_takes_the_features_of_every_structure(files):
    """The text is aligned with whatever organ features the structure gives; the paper preset's optimizer builds."""
    parser = ConfigParser()
    parser.read_config([TRAIN, os.path.join(CONFIGS, "text.yaml")] + [os.path.join(CONFIGS, f) for f in files])
    net = parser.get_parsed_content("network_def")
    size = parser.get_parsed_content("volume_size")
    features = net.features(torch.rand(1, 1, *size))
    aligner = parser.get_parsed_content("aligner_def")
    assert tuple(features.shape[1:]) == tuple(aligner.reference.shape[1:])
    assert aligner.organ_scores(
        torch.rand(2, aligner.text_model.mlp[0].in_features), features.expand(7, -1, -1)
    ).shape == (2, 7)
    assert len(parser.get_parsed_content("optimizer").param_groups) >= 1


def test_paper_preset_is_the_papers_architecture():
    parser = ConfigParser()
    parser.read_config([TRAIN, os.path.join(CONFIGS, "paper.yaml")])
    vit_2d, vit_3d = parser["vit_2d_def"], parser["vit_3d"]
    assert (vit_2d["hidden_size"], vit_2d["num_layers"], vit_2d["num_heads"], vit_2d["patch_size"]) == (
        1024,
        24,
        16,
        [16, 16],
    )
    assert parser["slice_size"] == [224, 224] and parser["epochs"] == 50
    assert vit_3d["patch_size"] == [16, 16, 8] and vit_3d["num_layers"] == 6  # the paper's (8, 16, 16) in (D, H, W)


def test_misspelt_override_is_refused(tmp_path):
    result = run_bundle(
        "run",
        "training",
        "--config_file",
        "bundle/configs/train.yaml",
        "--epoch",
        "1",
        "--phantom_dir",
        str(tmp_path / "phantom"),
        check=False,
    )
    assert result.returncode != 0
    assert "unknown override key(s) --epoch (did you mean --epochs?)" in result.stderr
    assert not (tmp_path / "phantom").exists()  # refused before any work

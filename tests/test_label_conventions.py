"""Label conventions chosen by name: the same CT labelled with BTCV or TotalSegmentator ids gives the same organs."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import BTCV, INFERENCE, ORGANS, TRAIN, cli, run_bundle
from monai.bundle import ConfigParser, ConfigWorkflow

from medsora.image import phantom
from medsora.image.gate import ImageGate
from medsora.organs import label_convention

TOTALSEGMENTATOR = {
    "liver": [5],
    "pancreas": [7],
    "kidney": [2, 3],
    "gallbladder": [4],
    "spleen": [1],
    "stomach": [6],
    "adrenal_gland": [8, 9],
}
# every BTCV structure's TotalSegmentator v2 id (esophagus 15, aorta 52, IVC 63, portal and splenic veins 64)
BTCV_TO_TOTALSEGMENTATOR = {1: 1, 2: 2, 3: 3, 4: 4, 5: 15, 6: 5, 7: 6, 8: 52, 9: 63, 10: 64, 11: 7, 12: 8, 13: 9}
# a site's own ids, given on the command line
MINE = {
    "liver": [21],
    "pancreas": [22],
    "kidney": [23, 24],
    "gallbladder": [25],
    "spleen": [26],
    "stomach": [27],
    "adrenal_gland": [28, 29],
}
BTCV_TO_MINE = {btcv: mine for organ, ids in BTCV.items() for btcv, mine in zip(ids, MINE[organ])} | {
    5: 30,
    8: 31,
    9: 32,
    10: 33,
}


def remap(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(label)
    for source, target in mapping.items():
        out[label == source] = target
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """One phantom CT with its label map written three times: BTCV, TotalSegmentator and a site's own ids."""
    root = tmp_path_factory.mktemp("conventions")
    image, label, affine = phantom.generate_case((5, 1), shape=(64, 64, 32))
    paths = {"image": str(root / "ct.nii.gz")}
    nib.save(nib.Nifti1Image(image, affine), paths["image"])
    for name, mapping in (("btcv", None), ("totalsegmentator", BTCV_TO_TOTALSEGMENTATOR), ("mine", BTCV_TO_MINE)):
        paths[name] = str(root / f"labels_{name}.nii.gz")
        ids = label if mapping is None else remap(label, mapping).astype(np.uint8)
        nib.save(nib.Nifti1Image(ids, affine), paths[name])
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    torch.manual_seed(0)
    (root / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    ImageGate(0.5, tuple(ORGANS)).save(str(root / "models" / "image_gate.json"))
    return {"root": root, **paths}


def parse(config_file, **overrides):
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("config_file", [TRAIN, INFERENCE], ids=["train", "inference"])
@pytest.mark.parametrize(
    "name, organ_labels, known",
    [("btcv", BTCV, list(range(1, 14))), ("totalsegmentator", TOTALSEGMENTATOR, list(range(1, 118)))],
)
def test_configs_resolve_a_convention_by_name_in_class_order(config_file, name, organ_labels, known):
    parser = parse(config_file, label_convention=name)
    resolved = parser.get_parsed_content("organ_labels")
    assert list(resolved) == ORGANS and resolved == organ_labels
    assert parser.get_parsed_content("known_labels") == known
    assert parser.get_parsed_content("num_classes") == 7


def test_btcv_is_the_default():
    assert parse(TRAIN)["label_convention"] == parse(INFERENCE)["label_convention"] == "btcv"


def organ_samples(case, convention, label_file):
    parser = parse(INFERENCE, label_convention=convention)
    return parser.get_parsed_content("preprocessing")({"image": case["image"], "label": case[label_file]})


def test_a_totalsegmentator_label_map_gives_the_same_organ_samples(case):
    btcv = organ_samples(case, "btcv", "btcv")
    total = organ_samples(case, "totalsegmentator", "totalsegmentator")
    assert [s["organ"] for s in btcv] == [s["organ"] for s in total] == ORGANS
    for ours, theirs in zip(total, btcv):
        assert int(ours["label"]) == int(theirs["label"]) == ORGANS.index(ours["organ"])
        torch.testing.assert_close(ours["mask"].as_tensor(), theirs["mask"].as_tensor(), rtol=0, atol=0)
        torch.testing.assert_close(ours["image"].as_tensor(), theirs["image"].as_tensor(), rtol=0, atol=0)


def root_cause(error: BaseException) -> str:
    """The message of the first error in a chain: what a user reads at the top of the traceback."""
    while error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, ValueError), repr(error)
    return str(error)


def test_a_label_map_in_another_convention_is_refused_naming_the_file(case):
    with pytest.raises(RuntimeError) as raised:  # Compose names the transform and chains the transform's error
        organ_samples(case, "btcv", "totalsegmentator")
    message = root_cause(raised.value)
    assert re.search(r"labels_totalsegmentator\.nii\.gz contains unknown label ids \[15, 52, 63, 64\]", message)
    assert "--label_convention" in message


def test_an_unknown_convention_is_named_with_the_available_ones():
    parser = parse(INFERENCE, label_convention="nnunet")
    with pytest.raises(RuntimeError) as raised:  # MONAI names the config expression and chains its error
        parser.get_parsed_content("organ_labels")
    assert re.search(r"unknown label convention 'nnunet'; available: btcv, totalsegmentator", root_cause(raised.value))


def test_a_convention_is_put_in_class_order_and_checked():
    shuffled = {"mine": {"organ_labels": dict(reversed(list(MINE.items()))), "known_labels": list(range(1, 40))}}
    resolved = label_convention(shuffled, "mine")
    assert list(resolved["organ_labels"]) == ORGANS and resolved["organ_labels"] == MINE
    assert label_convention({"any": {"organ_labels": MINE}}, "any")["known_labels"] is None  # any id accepted
    without_stomach = {k: v for k, v in MINE.items() if k != "stomach"}
    with pytest.raises(ValueError, match=r"label_conventions#x#organ_labels must map exactly .* missing \['stomach'\]"):
        label_convention({"x": {"organ_labels": without_stomach}}, "x")
    with pytest.raises(ValueError, match=r"unexpected \['colon'\]"):
        label_convention({"x": {"organ_labels": {**MINE, "colon": [40]}}}, "x")
    with pytest.raises(ValueError, match=r"label id 21 is listed for both 'liver' and 'spleen'"):
        label_convention({"x": {"organ_labels": {**MINE, "spleen": [21]}}}, "x")
    with pytest.raises(ValueError, match=r"label_conventions#x#organ_labels#kidney must be a list of positive label"):
        label_convention({"x": {"organ_labels": {**MINE, "kidney": [0]}}}, "x")
    with pytest.raises(ValueError, match=r"label_conventions#x#known_labels lacks the organ label ids \[28, 29\]"):
        label_convention({"x": {"organ_labels": MINE, "known_labels": list(range(1, 28))}}, "x")
    with pytest.raises(ValueError, match=r"label_conventions#x must hold 'organ_labels'"):
        label_convention({"x": {"known_labels": [1]}}, "x")


def predictions(path):
    (case_predictions,) = json.loads(path.read_text()).values()
    return case_predictions


@pytest.mark.slow
def test_a_convention_of_ones_own_from_the_command_line(case, tmp_path):
    """The documented override adds a convention without editing a config; predictions match the BTCV run."""
    reference = tmp_path / "btcv.json"
    workflow = ConfigWorkflow(
        config_file=INFERENCE,
        workflow_type="infer",
        image=case["image"],
        label=case["btcv"],
        ckpt_dir=str(case["root"] / "models"),
        output_file=str(reference),
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    mine = {"organ_labels": MINE, "known_labels": list(range(21, 34))}
    output = tmp_path / "mine.json"
    files = {"image": case["image"], "label": case["mine"], "ckpt_dir": case["root"] / "models", "output_file": output}
    run_bundle(
        "run",
        "inference",
        "--config_file",
        INFERENCE,
        *cli(files),
        *cli({"label_conventions#mine": mine}),
        "--label_convention",
        "mine",
    )
    ours, theirs = predictions(output), predictions(reference)
    assert list(ours) == list(theirs) == ORGANS
    for organ in ORGANS:
        assert ours[organ]["predicted"] == theirs[organ]["predicted"]
        for name, p in ours[organ]["probabilities"].items():
            assert p == pytest.approx(theirs[organ]["probabilities"][name], abs=1e-5)

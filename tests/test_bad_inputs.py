"""Bad input, the way a hostile or careless user gives it: every case of bundle/docs/README.md's "What bad input gets"
table, each asserting what the input now gets (the literal value, a clear error naming the file or option, or a
warning), in the table's order."""

import codecs
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from dicom_series import write_dicom_series
from helpers import BUNDLE_ROOT, INFERENCE, REPO_ROOT, TRAIN, run_bundle
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import Compose, LoadImaged, Orientationd

from medsora.atomic_io import TMP_PREFIX, remove_stale_temporaries, write_text_atomic
from medsora.checkpoints import CheckpointLoader
from medsora.config_check import check_cli_overrides, error_message, unknown_override_keys
from medsora.image import phantom
from medsora.image.datalist import case_datalist, load_datalist
from medsora.image.label_anatomy import anatomy_problems
from medsora.image.organ_masking import OrganMaskd
from medsora.literal_options import literal, literal_overrides, needs_literal
from medsora.organs import label_convention
from medsora.query import run_query
from medsora.stages import load_weights

MAIN = os.path.join("site-packages", "monai", "bundle", "__main__.py")
# texts that fire or MONAI's config parser would read as something else than typed
TEXTS_AS_CODE = [
    "$__import__('os').system('touch PWNED') or 'jaundice'",
    "@ckpt_dir",
    "%ckpt_dir",
    "%#bundle_root",
    "%pain worse at night",
    "rib #5 hurts, a::b",
    "jaundice @# 3am",
    "123",
    "None",
]
# texts that reach the config unchanged either way
PLAIN_TEXTS = [
    "(epigastric pain)",
    "import os",
    "'quoted' \"twice\" \\ back",
    "douleur abdominale, 腹痛",
    "pain \udcff",
]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """One phantom CT with its BTCV label map as NIfTI files."""
    root = tmp_path_factory.mktemp("bad_inputs")
    image, label, affine = phantom.generate_case(3, shape=(96, 96, 48))
    paths = {"image": str(root / "ct.nii.gz"), "label": str(root / "labels.nii.gz")}
    nib.save(nib.Nifti1Image(image, affine), paths["image"])
    nib.save(nib.Nifti1Image(label, affine), paths["label"])
    return {"root": root, "array": image, "labels": label, "affine": affine, **paths}


@pytest.fixture(scope="module")
def query_model():
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update(literal_overrides(bundle_root=BUNDLE_ROOT))
    return parser.get_parsed_content("query_model")


# --- 1. a text or a path is never config syntax ---


@pytest.mark.parametrize("text", TEXTS_AS_CODE + PLAIN_TEXTS)
def test_a_literal_value_reaches_the_config_as_typed(text, tmp_path):
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update(literal_overrides(text=text, image=str(tmp_path / "ct #1.nii.gz")))
    assert parser.get_parsed_content("text") == text
    assert parser.get_parsed_content("image") == str(tmp_path / "ct #1.nii.gz")
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


def test_which_typed_values_the_parsers_would_change():
    assert all(needs_literal(text) for text in TEXTS_AS_CODE)
    assert not any(needs_literal(text) for text in [*PLAIN_TEXTS, "epigastric pain, vomiting", "CT.nii.gz", "btcv"])
    assert literal("a@b") == "$'a\\x40b'"  # no character MONAI's parser reads is left in the expression


@pytest.mark.slow
@pytest.mark.parametrize(
    "text", ["$__import__('os').system('touch {tmp}/PWNED') or 'jaundice'", "@ckpt_dir", "%ckpt_dir", "rib #5 hurts"]
)
def test_cli_text_is_scored_as_typed_and_never_run(text, tmp_path):
    text = text.format(tmp=tmp_path)
    result = run_bundle("run", "query", "--config_file", INFERENCE, "--text", text)
    assert f"symptoms: {textwrap.shorten(text, width=100, placeholder=' ...')}\n" in result.stdout  # as printed
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_cli_paths_are_read_as_typed_and_errors_end_with_the_real_message(case, tmp_path):
    odd = tmp_path / "@ct #1"
    odd.mkdir()
    os.symlink(case["image"], odd / "ct.nii.gz")
    os.symlink(case["label"], odd / "labels.nii.gz")
    args = ["--text", "jaundice", "--image", str(odd / "ct.nii.gz"), "--label", str(odd / "labels.nii.gz")]
    result = run_bundle("run", "query", "--config_file", INFERENCE, *args, "--maps_dir", str(tmp_path / "%maps"))
    assert (tmp_path / "%maps" / "ct_query0000.png").is_file()
    # a missing file through the same rerun: MONAI's wrappers above it, its own message last
    result = run_bundle(
        "run", "query", "--config_file", INFERENCE, *args[:3], "@nowhere.nii.gz", *args[4:], check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: FileNotFoundError: --image @nowhere.nii.gz does not exist."


def test_python_callers_pass_literal_values_to_config_workflow(query_model, tmp_path, capsys):
    text = "$__import__('os').system('touch PWNED') or 'jaundice'"
    workflow = ConfigWorkflow(
        config_file=INFERENCE,
        workflow_type=None,
        run_id="query",
        **literal_overrides(text=text, bundle_root=BUNDLE_ROOT),
    )
    workflow.initialize()
    workflow.run()
    assert f"symptoms: {text}\n" in capsys.readouterr().out
    assert not os.path.exists("PWNED")


# --- 4. a queries file: every bad line gets its own error ---


def test_a_lone_surrogate_is_an_error_of_its_line_and_a_bom_is_skipped(query_model, tmp_path):
    queries = tmp_path / "q.jsonl"
    lines = [
        '{"text": "jaundice", "id": 1}',
        '{"text": "\\ud800"}',
        '{"text": "pain", "note": "\\udfff"}',
        '{"text": "\\ud83d\\ude00 nausea"}',
    ]
    queries.write_bytes(codecs.BOM_UTF8 + "\n".join(lines).encode() + b"\n")
    answers = run_query(query_model, queries_file=str(queries), output_file=str(tmp_path / "a.jsonl"))
    written = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written == answers and len(written) == 4
    assert written[0]["id"] == 1 and "error" not in written[0] and "error" not in written[3]
    assert written[1] == {"error": "line holds \\ud800, an unpaired UTF-16 surrogate: not a character"}
    assert written[2] == {"error": "line holds \\udfff, an unpaired UTF-16 surrogate: not a character"}
    with pytest.raises(ValueError, match=r"--text: line holds \\udcff, an unpaired"):
        run_query(query_model, text="pain \udcff")


# --- 5. label maps ---


def load_case(item):
    return Compose(
        [
            LoadImaged(["image", "label"], image_only=True, ensure_channel_first=True),
            Orientationd(["image", "label"], axcodes="RAS", labels=None),
        ]
    )(item)


def masker(convention, parser_conventions):
    ids = label_convention(parser_conventions, convention)
    return OrganMaskd(keys="image", label_conventions=parser_conventions, label_convention=convention, **ids)


@pytest.fixture(scope="module")
def conventions():
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    return parser.get_parsed_content("label_conventions")


def test_a_label_map_of_scaled_ids_is_refused(case, conventions, tmp_path):
    nib.save(nib.Nifti1Image(case["labels"].astype(np.float32) * 0.5, case["affine"]), tmp_path / "half.nii.gz")
    with pytest.raises(
        ValueError,
        match=r"label map .*half.nii.gz holds \d+ voxels whose values are not whole label ids \(e.g. \[0.5, 1.5",
    ):
        masker("btcv", conventions)(load_case({"image": case["image"], "label": str(tmp_path / "half.nii.gz")}))


def test_a_label_map_in_another_convention_is_refused_naming_the_likely_one(case, conventions):
    data = load_case({"image": case["image"], "label": case["label"]})
    assert len(masker("btcv", conventions)(data)) == 7
    with pytest.raises(
        ValueError,
        match=r"read in label convention 'totalsegmentator' contradicts the abdomen's anatomy \(the liver "
        r"\(ids \[5\]\) lies left of the stomach;.*while read in 'btcv' it does "
        r"not: pass --label_convention btcv",
    ):
        masker("totalsegmentator", conventions)(data)


def test_the_livers_size_is_not_compared_when_the_scan_cuts_the_liver(conventions):
    """A scan that covers the liver only partly (a pelvic or cropped CT) shows too little of it to be the largest."""
    organs = label_convention(conventions, "btcv")["organ_labels"]
    label = torch.zeros(40, 40, 20, dtype=torch.int64)
    label[2:38, 2:38, 5:15] = organs["kidney"][0]  # the largest organ, well inside the scan
    label[25:35, 25:35, 16:19] = organs["liver"][0]  # smaller than the kidney, inside the scan: a real contradiction
    assert any("the liver is not the largest organ" in p for p in anatomy_problems(label, None, organs))
    label[label == organs["liver"][0]] = 0
    label[25:35, 25:35, 17:20] = organs["liver"][0]  # as small, but cut by the last slice
    assert not any("largest" in p for p in anatomy_problems(label, None, organs))


def test_a_label_map_that_fits_no_convention_is_used_with_a_warning(case, conventions, tmp_path, caplog):
    swapped = case["labels"].copy()
    swapped[case["labels"] == 2], swapped[case["labels"] == 3] = 3, 2  # left and right kidney swapped
    nib.save(nib.Nifti1Image(swapped, case["affine"]), tmp_path / "swapped.nii.gz")
    with caplog.at_level(logging.WARNING):
        samples = masker("btcv", conventions)(
            load_case({"image": case["image"], "label": str(tmp_path / "swapped.nii.gz")})
        )
    assert len(samples) == 7
    assert "of the kidney's ids [2, 3] (right, left) the first lies left of the second" in caplog.text


# --- 6. files that name nothing when they fail ---


def test_a_cut_nifti_is_refused_naming_it_also_inside_a_dataset(case, tmp_path):
    data = open(case["image"], "rb").read()
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    cut = tmp_path / "imagesTr" / "img0001.nii.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    os.symlink(case["label"], tmp_path / "labelsTr" / "label0001.nii.gz")
    item = {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    (tmp_path / "dataset_0.json").write_text(json.dumps({"training": [item], "validation": [item]}))
    with pytest.raises(
        ValueError, match=r"imagesTr/img0001.nii.gz is cut short: its header describes \d+ bytes of image"
    ):
        load_datalist(str(tmp_path / "dataset_0.json"))
    (tmp_path / "flat.nii").write_bytes(nib.Nifti1Image(case["array"], case["affine"]).to_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"flat.nii is cut short"):
        case_datalist(str(tmp_path / "flat.nii"), case["label"])


def test_a_2d_image_and_an_absurd_spacing_are_refused_before_loading(case, tmp_path):
    nib.save(nib.Nifti1Image(case["array"][:, :, 20], case["affine"]), tmp_path / "slice.nii.gz")
    with pytest.raises(ValueError, match=r"slice.nii.gz has shape \(96, 96\): a CT volume"):
        case_datalist(str(tmp_path / "slice.nii.gz"), case["label"])
    huge = case["affine"].copy()
    huge[:3, :3] *= 1000
    nib.save(nib.Nifti1Image(case["array"], huge), tmp_path / "huge.nii.gz")
    with pytest.raises(ValueError, match=r"huge.nii.gz has voxel spacing \[\d+\.\d+, .*field of view"):
        case_datalist(str(tmp_path / "huge.nii.gz"), case["label"])


def test_nan_voxels_are_refused_naming_the_image(case, conventions, tmp_path):
    image = case["array"].astype(np.float32)
    image[40:50, 40:50, 20:25] = np.nan
    nib.save(nib.Nifti1Image(image, case["affine"]), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match=r"image .*nan.nii.gz has 500 voxels that are NaN or infinite"):
        masker("btcv", conventions)(load_case({"image": str(tmp_path / "nan.nii.gz"), "label": case["label"]}))


def test_cli_numbers_and_flags_of_another_type_are_refused():
    with pytest.raises(
        ValueError, match=r"--epochs 'abc': expected an integer like the config's 20; --learning_rate 'fast'"
    ):
        check_cli_overrides(
            [MAIN, "run", "training", "--config_file", TRAIN, "--epochs", "abc", "--learning_rate", "fast"]
        )
    check_cli_overrides([MAIN, "run", "training", "--config_file", TRAIN, "--epochs", "3", "--learning_rate", "1e-4"])


class Payload:
    """Not a tensor: unpickling it would run code, which a weights_only load refuses."""

    def __reduce__(self):
        return (print, ("this ran",))


def test_a_tampered_weights_file_is_named(tmp_path):
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    network = parser.get_parsed_content("network_def")
    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)  # torch.save's protocol: only the payload is wrong
    with pytest.raises(
        RuntimeError,
        match=r"model.pt cannot be loaded as weights \(torch.load with weights_only=True\).*"
        r"run `python -m monai.bundle run training",
    ):
        load_weights(network, str(tmp_path / "model.pt"))
    loader = CheckpointLoader(load_path=str(tmp_path / "model.pt"), load_dict={"model": network})
    with pytest.raises(RuntimeError, match=r"checkpoint .*model.pt cannot be loaded into \['model'\]"):
        loader(None)


def test_monai_wrappers_are_unwrapped_to_the_real_message():
    try:
        try:
            try:
                raise FileNotFoundError("--image CT.nii.gz does not exist.")
            except FileNotFoundError as e:
                raise RuntimeError(
                    "Failed to instantiate component 'medsora.query.run_query' with keywords: text"
                ) from e
        except RuntimeError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: '$...'") from e
    except RuntimeError as e:
        assert error_message(e) == "FileNotFoundError: --image CT.nii.gz does not exist."
    assert error_message(KeyError("unknown override key --x")) == "KeyError: unknown override key --x"


@pytest.mark.slow
def test_cli_type_error_is_the_last_line():
    result = run_bundle("run", "training", "--config_file", TRAIN, "--epochs", "abc", check=False)
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: ValueError: --epochs 'abc': expected an integer like the config's 20."
    )


# --- 7. options that were silently ignored ---


def test_misspelt_nested_keys_are_refused_with_the_closest_one():
    parser = ConfigParser()
    parser.read_config(TRAIN)
    keys = [
        "label_conventions#btcv#known_label",
        "label_conventions#mine",
        "train#trainer#max_epoch",
        "phantom#num_case",
    ]
    assert unknown_override_keys(keys, parser) == {
        "label_conventions#btcv#known_label": "label_conventions#btcv#known_labels",
        "train#trainer#max_epoch": "train#trainer#max_epochs",
        "phantom#num_case": "phantom#num_cases",
    }
    with pytest.raises(
        KeyError, match=r"--label_conventions#btcv#known_label \(did you mean --label_conventions#btcv#known_labels\?\)"
    ):
        check_cli_overrides(
            [MAIN, "run", "training", "--config_file", TRAIN, "--label_conventions#btcv#known_label", "[1]"]
        )


def builder(*args, cwd=REPO_ROOT):
    return subprocess.run(
        [sys.executable, "-m", "dataset_builder", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_builder_refuses_misspelt_keys_and_answers_help_without_running(tmp_path):
    result = builder("dedup", "--out", str(tmp_path / "c"), "--dedup.treshold=0.1")
    assert result.returncode == 1
    assert "error: [config] unknown config key --dedup.treshold (did you mean --dedup.threshold?)" in result.stderr
    for args in (["verify", "--help"], ["dedup", "-h"], ["--help"]):
        result = builder(*args, "--out", str(tmp_path / "c"))
        assert result.returncode == 0 and "NAME" in result.stdout + result.stderr, args
        assert not (tmp_path / "c").exists(), args  # nothing ran


def test_builder_verify_reads_its_corpus_option(monkeypatch, tmp_path):
    import fire

    from dataset_builder import __main__ as cli

    seen = {}
    monkeypatch.setattr(cli, "verify", lambda cfg, corpus, out: seen.update(corpus=corpus, out=out) or [])
    fire.Fire(cli.Commands, command=["verify", "--corpus", str(tmp_path / "mine"), "--out", str(tmp_path / "o")])
    assert seen == {"corpus": str(tmp_path / "mine"), "out": str(tmp_path / "o")}


# --- 2. a corpus stage never reads a cut file ---


def generated(n):
    return [
        {
            "id": f"t{i}",
            "text": f"pain number {i}",
            "content": f"pain number {i}",
            "organ": "liver",
            "domain": "organ",
            "labels": ["liver"],
            "source": "hpo",
            "group": f"g{i}",
            "branch": None,
            "provenance": {"findings": [f"HP:{i}"]},
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("cut", ["lines", "mid-record"])
def test_a_cut_stage_file_is_refused_naming_it_and_the_stage_to_rerun(cut, tmp_path):
    from dataset_builder.config import DEFAULT_CONFIG, load_config
    from dataset_builder.errors import StageError
    from dataset_builder.pipeline import run_stage, stage_path, write_stage_file

    out = str(tmp_path / "corpus")
    path = write_stage_file(out, "generate", generated(40))
    data = open(path, "rb").read()
    keep = data[: data.index(b"\n", len(data) // 2) + 1] if cut == "lines" else data[: len(data) // 2]
    open(path, "wb").write(keep)
    with pytest.raises(
        StageError,
        match=r"\[dedup\] input .*04_generated.jsonl is not the file stage generate wrote: it holds 2\d records "
        r".*generate wrote 40 .*re-run `python -m dataset_builder generate --out",
    ):
        run_stage("dedup", load_config(DEFAULT_CONFIG), out)
    os.remove(path + ".complete.json")
    with pytest.raises(StageError, match=r"04_generated.jsonl has no completeness mark"):
        run_stage("dedup", load_config(DEFAULT_CONFIG), out)
    write_stage_file(out, "generate", generated(40))
    run_stage("dedup", load_config(DEFAULT_CONFIG), out)
    mark = json.loads(open(stage_path(out, "dedup") + ".complete.json").read())
    assert mark["stage"] == "dedup" and mark["records"] == len(open(stage_path(out, "dedup")).readlines())


# --- 8. a DICOM series with a missing or unreadable slice ---


def test_a_dicom_series_with_a_gap_or_an_unreadable_slice_is_refused(case, tmp_path):
    image, label = case["array"][::3, ::3, ::4], case["labels"][::3, ::3, ::4]
    affine = case["affine"] @ np.diag([3, 3, 4, 1])
    write_dicom_series(image, affine, str(tmp_path / "ct"))
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "labels.nii.gz")
    assert case_datalist(str(tmp_path / "ct"), str(tmp_path / "labels.nii.gz"))
    os.rename(tmp_path / "ct" / "IM0005.dcm", tmp_path / "IM0005.dcm")
    with pytest.raises(
        ValueError,
        match=r"DICOM series .*ct is unevenly spaced: .*IM000[46].dcm and .*IM000[46].dcm are \d+ mm apart "
        r"where slices are \d+ mm apart",
    ):
        case_datalist(str(tmp_path / "ct"), str(tmp_path / "labels.nii.gz"))
    (tmp_path / "ct" / "IM0005.dcm").write_bytes((tmp_path / "IM0005.dcm").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"IM0005.dcm in DICOM series .*ct is not a readable DICOM file"):
        case_datalist(str(tmp_path / "ct"), str(tmp_path / "labels.nii.gz"))


# --- 9. temporary files of killed writers ---


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 3600
    leftover = tmp_path / f"{TMP_PREFIX}{dead.pid}-abc.pt"
    running = tmp_path / f"{TMP_PREFIX}{os.getppid()}-def.pt"
    for path in (leftover, running):
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    write_text_atomic(str(tmp_path / "report.json"), "{}\n")
    assert sorted(os.listdir(tmp_path)) == sorted(["report.json", running.name])
    assert remove_stale_temporaries(str(tmp_path)) == []


# --- 10. a text the query model cannot read ---

# the docs' measured set: texts in other languages, random letters and no letters, written for this purpose
OTHER_LANGUAGES_FILE = os.path.join(BUNDLE_ROOT, "docs", "other_language_queries.jsonl")
ENGLISH = [
    "colicky right upper quadrant pain after fatty meals",
    "67F, RUQ pain, fever and jaundice; ALP and GGT raised",
    "Severe epigastric pain radiating to the back with vomiting; lipase three times the upper limit",
]


def test_a_text_the_model_cannot_read_is_out_of_domain(query_model):
    with open(OTHER_LANGUAGES_FILE, encoding="utf-8") as f:
        other_languages = [json.loads(line)["text"] for line in f]
    scores, in_domain = query_model.score(other_languages + ENGLISH)
    assert not in_domain[: len(other_languages)].any() and in_domain[len(other_languages) :].all()
    assert scores[: len(other_languages)].max(axis=1).mean() < 0.2  # lowered like the domain gate's rejections
    vocabulary, query_model.vocabulary = query_model.vocabulary, None
    try:
        ungated, flags = query_model.score(other_languages + ENGLISH)
    finally:
        query_model.vocabulary = vocabulary
    assert flags[: len(other_languages)].sum() == 16  # what the domain gate alone lets through (docs)
    np.testing.assert_array_equal(ungated[len(other_languages) :], scores[len(other_languages) :])


def test_coverage_counts_judged_words_known_to_the_encoder_or_the_corpus(tmp_path):
    from medsora.query.readability import QueryVocabulary, judged_words

    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "Hepatomegaly and jaundice", "organ": "liver"}) + "\n")
    encoder = type("Encoder", (), {"words": lambda self: frozenset({"pain", "the"})})()
    vocabulary = QueryVocabulary(str(tmp_path), encoder)
    assert judged_words("RUQ pain, LFTs up in the 54M: Xyzzy!") == ["pain", "the", "xyzzy"]
    texts = ["jaundice and pain", "pain blorp zzzt", "RUQ, LFTs", "!!!", "腹痛"]
    assert judged_words("腹痛 and 痛") == ["腹痛", "and", "痛"]  # words of scripts without short-word function words
    np.testing.assert_allclose(vocabulary.coverage(texts), [1.0, 1 / 3, 1.0, 0.0, 0.0])
    scores, flags = vocabulary.gate(texts, np.full((5, 7), 0.8), np.ones(5, bool))
    assert flags.tolist() == [True, False, True, False, False]
    np.testing.assert_allclose(scores[:, 0], [0.8, 0.8 * (1 / 3) / 0.4, 0.8, 0.0, 0.0], rtol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"corpus_dir .*empty holds none of the training files"):
        QueryVocabulary(str(tmp_path / "empty"))

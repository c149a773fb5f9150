"""The bundle is found from its config file, so it runs from any working directory; failing that, the error names
--bundle_root."""

import os
import sys

import pytest
from helpers import BUNDLE_ROOT, EVALUATE, INFERENCE, TRAIN, run_bundle

from medsora.bundle_location import BUNDLE_ENV, bundle_config_files, bundle_root, config_bundle

#: sys.argv[0] of `python -m monai.bundle ...`
BUNDLE_MAIN = os.path.join(sys.prefix, "lib", "site-packages", "monai", "bundle", "__main__.py")


def test_the_bundle_of_a_config_file_is_the_directory_above_configs(tmp_path):
    assert config_bundle(INFERENCE) == BUNDLE_ROOT
    assert config_bundle(str(tmp_path / "my.yaml")) == str(tmp_path)  # not in a configs/: its own directory


def test_a_bundle_command_line_names_its_bundle_by_its_first_config_file(tmp_path):
    listed = ["run", "evaluate", "--config_file", str([TRAIN, EVALUATE]), "--epochs", "2"]
    assert bundle_config_files([BUNDLE_MAIN, *listed]) == [TRAIN, EVALUATE]
    assert bundle_root([BUNDLE_MAIN, *listed]) == BUNDLE_ROOT
    elsewhere = tmp_path / "copy" / "configs" / "inference.yaml"
    assert bundle_root([BUNDLE_MAIN, "run", "query", f"--config_file={elsewhere}"]) == str(tmp_path / "copy")
    relative = [BUNDLE_MAIN, "ckpt_export", "network_def", "--config_file", "configs/inference.yaml"]
    assert bundle_root(relative) == os.getcwd()  # run from a bundle directory, as the model zoo's commands are


def test_other_callers_get_the_checkout_bundle_or_an_error_naming_bundle_root(tmp_path, monkeypatch):
    monkeypatch.delenv(BUNDLE_ENV, raising=False)
    assert bundle_root(["pytest", "-q"]) == BUNDLE_ROOT  # the bundle of the checkout medsora is installed from
    assert bundle_config_files(["pytest", "--config_file", INFERENCE]) is None  # not a monai.bundle command line
    monkeypatch.setenv(BUNDLE_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no Med-SORA bundle at .*: pass --bundle_root DIR or set"):
        bundle_root(["pytest", "-q"])


@pytest.mark.slow
def test_the_bundle_runs_from_another_working_directory(tmp_path):
    text = "Sudden colicky flank pain radiating to the groin with blood in the urine"
    result = run_bundle("run", "query", "--config_file", INFERENCE, "--text", text, cwd=tmp_path)
    assert f"symptoms: {text}" in result.stdout and "  1. " in result.stdout
    assert os.listdir(tmp_path) == []  # nothing written where it ran
    answers = tmp_path / "out" / "answers.jsonl"
    queries = tmp_path / "out" / "q.jsonl"
    queries.parent.mkdir()
    queries.write_text('{"text": "painless jaundice and weight loss"}\n')
    config = os.path.relpath(INFERENCE, queries.parent)  # a relative --config_file from elsewhere works too
    options = ["--queries_file", "q.jsonl", "--output_file", answers.name]
    run_bundle("run", "query", "--config_file", config, *options, cwd=queries.parent)
    assert len(answers.read_text().splitlines()) == 1

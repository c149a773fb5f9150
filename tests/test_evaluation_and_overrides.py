"""The per-organ report and the command-line override check, on hand-computed cases."""

import json
import os

import pytest
import torch
from helpers import TRAIN
from monai.bundle import ConfigParser

from medsora.atomic_io import write_json_atomic
from medsora.config_check import check_cli_overrides, unknown_override_keys
from medsora.image.reports import organ_report

ORGANS = ["liver", "pancreas", "kidney"]
MAIN = os.path.join("site-packages", "monai", "bundle", "__main__.py")


def test_organ_report_by_hand():
    # rows are the truth: 3 livers (2 right), 1 pancreas (called kidney), no kidney sample
    confusion = torch.tensor([[2, 1, 0], [0, 0, 1], [0, 0, 0]])
    report = organ_report(confusion, ORGANS)
    assert report["accuracy"] == pytest.approx(2 / 4)
    assert report["samples_per_organ"] == {"liver": 3, "pancreas": 1, "kidney": 0}
    assert report["recall_per_organ"] == {"liver": pytest.approx(2 / 3), "pancreas": 0.0, "kidney": None}
    assert report["confusion_matrix"]["counts"] == confusion.tolist()
    with pytest.raises(ValueError, match="does not match 2 organs"):
        organ_report(confusion, ORGANS[:2])


def test_json_is_written_atomically(tmp_path):
    path = tmp_path / "deep" / "report.json"
    write_json_atomic(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"a": object()})  # a failed write keeps the previous file
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["report.json"]


def test_unknown_override_keys():
    parser = ConfigParser()
    parser.read_config(TRAIN)
    keys = [
        "epochs",
        "phantom#num_cases",
        "phantom#shape",
        "vit_3d#num_layers",
        "epoch",
        "train#trainer#max_epoch",
        "nothing#here",
    ]
    # a new entry inside an existing dictionary is allowed unless it misspells a key there or the dictionary's
    # _target_ takes no such keyword; each refused key comes with the closest valid one
    assert unknown_override_keys(keys, parser) == {
        "epoch": "epochs",
        "train#trainer#max_epoch": "train#trainer#max_epochs",
        "nothing#here": None,
    }


def test_cli_check_reads_the_command_line():
    argv = [MAIN, "run", "training", "--config_file", TRAIN, "--epochs", "2", "--epoch=3"]
    with pytest.raises(KeyError, match=r"--epoch \(did you mean --epochs\?\)"):
        check_cli_overrides(argv)
    check_cli_overrides(argv[:-1])
    merged = [MAIN, "run", "evaluate", "--config_file", str([TRAIN, TRAIN.replace("train", "evaluate")]), "--seed", "1"]
    check_cli_overrides(merged)
    check_cli_overrides(["pytest", "--epoch", "3"])  # not a `monai.bundle run` command line: nothing to check

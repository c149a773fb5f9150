"""Config validation and the command line's error messages."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import yaml

from dataset_builder.config import DEFAULT_CONFIG as CONFIG
from dataset_builder.config import load_config
from dataset_builder.errors import StageError

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def test_unknown_organ_lists_the_valid_ones(tmp_path: Any) -> None:
    cfg = yaml.safe_load(open(CONFIG, encoding="utf-8"))
    cfg["organs"].append("appendix")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(StageError) as err:
        load_config(str(path))
    assert "appendix" in str(err.value) and "liver" in str(err.value) and "adrenal_gland" in str(err.value)


def test_organs_are_put_in_canonical_order(tmp_path: Any) -> None:
    cfg = load_config(CONFIG, organs=["stomach", "liver"])
    assert cfg["organs"] == ["liver", "stomach"]


def test_cli_reports_stage_errors_without_traceback(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dataset_builder", "dedup", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "error: [dedup]" in result.stderr and "04_generated.jsonl does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_ood_train_is_published_and_compared(tmp_path: Any) -> None:
    from dataset_builder.reproduce import PUBLISHED, compare

    assert "ood_train.jsonl" in PUBLISHED and "ood_test.jsonl" in PUBLISHED
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        for name in PUBLISHED:
            (folder / name).write_text("same\n")
    assert compare(str(a), str(b)) == []
    (b / "ood_train.jsonl").write_text("other\n")
    assert compare(str(a), str(b)) == ["ood_train.jsonl"]

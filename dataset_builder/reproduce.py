"""Whole-corpus reproducibility check: rebuild offline and compare the published files byte for byte.

Run `python -m dataset_builder verify --out data/rebuild` (or `python -m dataset_builder.reproduce`).
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile
from typing import Any

PUBLISHED = (
    "train.jsonl",
    "test.jsonl",
    "ood_test.jsonl",
    "ood_train.jsonl",
    "clinical_train.jsonl",
    "clinical_ood_train.jsonl",
    "summary.json",
    "DATASHEET.md",
)


def compare(corpus: str, rebuilt: str) -> list[str]:
    """Names of the published files that differ (or are missing) between two corpus directories."""
    return [
        name
        for name in PUBLISHED
        if not (
            os.path.exists(os.path.join(corpus, name))
            and os.path.exists(os.path.join(rebuilt, name))
            and filecmp.cmp(os.path.join(corpus, name), os.path.join(rebuilt, name), shallow=False)
        )
    ]


def verify(cfg: dict[str, Any], corpus: str, out: str) -> list[str]:
    """Rebuild with `cfg` into `out` and return the published files that differ from `corpus`."""
    from .pipeline import build

    build(cfg, out)
    return compare(corpus, out)


def main() -> None:
    """Rebuild the shipped corpus from the default config in a temporary directory and compare."""
    from .config import DEFAULT_CONFIG, load_config

    with tempfile.TemporaryDirectory() as tmp:
        differing = verify(
            load_config(DEFAULT_CONFIG), os.path.join(os.path.dirname(DEFAULT_CONFIG), "..", "corpus"), tmp
        )
    if differing:
        sys.exit(f"[verify] rebuilt corpus differs: {', '.join(differing)}")
    print("[verify] shipped corpus reproduced byte for byte")


if __name__ == "__main__":
    main()

"""Loads and checks the build config, so a bad config fails before any work is done."""

from __future__ import annotations

import os
from typing import Any

import yaml

from . import ORGANS
from .errors import StageError

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.yaml")


def load_config(path: str, **overrides: Any) -> dict[str, Any]:
    """Read a YAML config, apply dotted overrides (`split.texts_per_organ=20`) and validate it.

    Raises:
        StageError: unknown organ names, or a missing file.
    """
    if not os.path.isfile(path):
        raise StageError("config", f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    for dotted, value in overrides.items():
        set_path(cfg, dotted, value)
    check_organs(cfg)
    return cfg


def set_path(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating the intermediate dicts."""
    keys = dotted.split(".")
    node = cfg
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def check_organs(cfg: dict[str, Any]) -> None:
    """Every organ named in the config must be one of the seven, listed in the canonical order."""
    named = list(cfg.get("organs", []))
    for section in ("hpo", "icd10cm", "pubmed", "wikipedia"):
        block = cfg.get("retrieve", {}).get(section, {})
        for key in ("roots", "codes", "queries", "pages"):
            named += list((block.get(key) or {}).keys())
    named += list((cfg.get("split", {}).get("leakage_patterns") or {}).keys())
    unknown = sorted({o for o in named if o not in ORGANS})
    if unknown:
        raise StageError("config", f"unknown organ(s) {unknown}; valid organs are {list(ORGANS)}")
    if not cfg.get("organs"):
        raise StageError("config", f"no organs configured; valid organs are {list(ORGANS)}")
    cfg["organs"] = [o for o in ORGANS if o in cfg["organs"]]

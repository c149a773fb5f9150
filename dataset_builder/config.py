"""Loads and checks the build config, so a bad config fails before any work is done."""

from __future__ import annotations

import difflib
import os
from typing import Any

import yaml

from . import ORGANS
from .errors import StageError

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.yaml")
# mappings whose keys the user names (HPO branches of the out-of-domain texts); organ-keyed mappings take organ names
OPEN_MAPPINGS = ("retrieve.hpo.ood_roots", "retrieve.hpo.ood_train_roots")


def load_config(path: str, **overrides: Any) -> dict[str, Any]:
    """Read a YAML config, apply dotted overrides (`split.texts_per_organ=20`) and validate it.

    Raises:
        StageError: unknown organ names, an override naming no config key, or a missing file.
    """
    if not os.path.isfile(path):
        raise StageError("config", f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    for dotted, value in overrides.items():
        check_key(cfg, dotted)
        set_path(cfg, dotted, value)
    check_organs(cfg)
    return cfg


def check_key(cfg: dict[str, Any], dotted: str) -> None:
    """An override must name a key of the config, or a new organ or branch of a mapping keyed by them.

    Raises:
        StageError: naming the override and the closest valid key (`dedup.treshold` -> `dedup.threshold`).
    """
    *parents, key = dotted.split(".")
    node: Any = cfg
    for depth, name in enumerate(parents):
        if not isinstance(node, dict) or name not in node:
            _unknown(dotted, ".".join(parents[:depth]), node, name)
        node = node[name]
    if not isinstance(node, dict):
        raise StageError("config", f"override --{dotted}: {'.'.join(parents)} is a value, not a mapping of keys")
    organ_keyed = bool(node) and all(name in ORGANS for name in node)
    if key not in node and not organ_keyed and ".".join(parents) not in OPEN_MAPPINGS:
        _unknown(dotted, ".".join(parents), node, key)


def _unknown(dotted: str, parent: str, node: Any, key: str) -> None:
    keys = [str(k) for k in node] if isinstance(node, dict) else []
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean --{parent + '.' if parent else ''}{close[0]}?)" if close else ""
    raise StageError("config", f"unknown config key --{dotted}{hint}; keys here: {', '.join(keys)}")


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

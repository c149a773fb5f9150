# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Each stage's output file and the bundle run that writes it, named once.

A missing file is the commonest first error (a query before training, a text stage before the image network); every
such error quotes the command from here, so the advice stays right when a config moves.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = ["PRODUCERS", "load_weights", "producer", "require_stage_file", "safe_load"]

TRAIN_CONFIG = "bundle/configs/train.yaml"
TEXT_CONFIGS = "\"['bundle/configs/train.yaml','bundle/configs/text.yaml']\""


def _text_stage(run_id: str) -> str:
    return f"python -m monai.bundle run {run_id} --config_file {TEXT_CONFIGS}"


#: file name -> the command that writes it (into the bundle's ``models/``)
PRODUCERS: dict[str, str] = {
    "model.pt": f"python -m monai.bundle run training --config_file {TRAIN_CONFIG}",
    "image_gate.json": f"python -m monai.bundle run calibrate_image_gate --config_file {TRAIN_CONFIG}",
    "text_anchors.pt": _text_stage("train_anchors"),
    "text_model.pt": _text_stage("train_text_model"),
    "domain_gate.pt": _text_stage("train_domain_gate"),
    "alignment.pt": _text_stage("train_text"),
    "text_index.pt": _text_stage("build_index"),
    "fusion.json": _text_stage("build_index"),
}


def producer(path: str) -> str:
    """The command that writes the stage file ``path`` (by its file name)."""
    name = os.path.basename(path)
    if name not in PRODUCERS:
        raise KeyError(f"no stage writes {name!r}; stage files are {sorted(PRODUCERS)}.")
    return PRODUCERS[name]


def require_stage_file(path: str, what: str, produced_by: str | None = None) -> None:
    """Raise ``FileNotFoundError`` naming ``what``, ``path`` and the command that writes it, unless ``path`` exists.

    Args:
        path: the stage file.
        what: what the file holds, e.g. "image gate".
        produced_by: the command that writes ``path``; default: the bundle run of :data:`PRODUCERS` for its name.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found: run `{produced_by or producer(path)}` first.")


def safe_load(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file that fails it (damaged, cut, or holding more than tensors and
    plain values, which may run code) is an error naming the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        rerun = (
            f" run `{PRODUCERS[os.path.basename(path)]}` to write it again;"
            if os.path.basename(path) in PRODUCERS
            else ""
        )
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"{path} cannot be loaded as weights (torch.load with weights_only=True): it is damaged or holds more "
            f"than tensors and plain values;{rerun} {reason}"
        ) from e


def load_weights(module: nn.Module, path: str, produced_by: str | None = None) -> nn.Module:
    """Load a stage's saved weights into ``module`` (in eval mode); a missing file names the command that writes it.

    Args:
        module: the network, built from the same config as the one that was saved.
        path: the weights file.
        produced_by: the command that writes ``path``; default: the bundle run of :data:`PRODUCERS` for its name.
    """
    require_stage_file(path, "weights file", produced_by)
    state = safe_load(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(
            f"{path} does not fit the configured network (was it trained with another config?): {e}"
        ) from e
    return module.eval()

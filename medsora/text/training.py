# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""What the four text stages (anchors, text model, domain gate, alignment) share: tensor datasets of frozen
embeddings, and one trainer that reseeds every epoch, keeps a per-epoch loss history and shows one progress bar and
one summary line."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from torch.utils.data import Dataset, TensorDataset

from medsora.determinism import EpochSeedHandler
from medsora.progress import StageProgress
from medsora.training_history import LossHistory

__all__ = ["STAGE_TITLES", "TextStageTrainer", "pair_dataset", "prepare_pair"]

#: how the progress bar and summary line name each text stage
STAGE_TITLES = {"anchors": "organ anchors", "text": "text model", "gate": "domain gate", "align": "alignment"}


def pair_dataset(inputs: torch.Tensor, targets: torch.Tensor) -> Dataset:
    """A dataset of ``(input, target)`` rows for the text trainers."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets.")
    return TensorDataset(inputs, targets)


def prepare_pair(batch: Sequence[torch.Tensor], device: torch.device | str, non_blocking: bool = False, **_: Any):
    """``prepare_batch`` for MONAI engines fed by :func:`pair_dataset`: ``(inputs, targets)`` on ``device``."""
    inputs, targets = batch
    return inputs.to(device, non_blocking=non_blocking), targets.to(device, non_blocking=non_blocking)


class TextStageTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for a text stage: batches are whole tensors (no decollation), every epoch is reseeded
    from ``seed`` (so a stage is reproducible alone), the mean loss of every epoch goes to
    ``history_dir/<stage>_loss.json``, and a :class:`StageProgress` bar and summary line (with the best validation
    loss when early stopping records one) replace the engine's per-epoch log lines.

    Args:
        stage: the stage's name in the history file (``anchors``, ``text``, ``gate``, ``align``); its
            :data:`STAGE_TITLES` entry names it in the bar and the summary.
        seed: base seed of :class:`EpochSeedHandler`.
        history_dir: directory of the loss history files.
        prepare_batch: default :func:`prepare_pair`.
        kwargs: the rest of ``SupervisedTrainer``'s arguments (``max_epochs``, ``device``, ``train_data_loader``,
            ``network``, ``optimizer``, ``loss_function``, ``train_handlers``, ...).
    """

    def __init__(
        self,
        stage: str,
        seed: int,
        history_dir: str,
        prepare_batch: Callable = prepare_pair,
        **kwargs: Any,
    ) -> None:
        super().__init__(prepare_batch=prepare_batch, decollate=False, **kwargs)
        EpochSeedHandler(seed).attach(self)
        LossHistory(stage, os.path.join(history_dir, f"{stage}_loss.json")).attach(self)
        StageProgress(STAGE_TITLES.get(stage, stage), engine_metric="validation_loss").attach(self)

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""MONAI's checkpoint handlers, with the bookkeeping a resumed run needs and errors that name the file.

MONAI's ``CheckpointSaver`` keeps in memory which files it wrote and the best score so far. A run resumed from
``checkpoint_epoch=N.pt`` starts with that memory empty: its first validation always counts as a new best and
overwrites ``model.pt``, and the checkpoint it resumed from is never removed. :class:`ResumableCheckpointSaver` keeps
that memory in the checkpoints themselves, so a resumed run writes the same files as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader as MonaiCheckpointLoader
from monai.handlers import CheckpointSaver

__all__ = ["CheckpointLoader", "ResumableCheckpointSaver"]


class ResumableCheckpointSaver(CheckpointSaver):
    """A ``CheckpointSaver`` whose record of the files it keeps (and of the best score) survives a resume.

    Give each saver one role, as the configs do:

    * best model (``save_key_metric``): :meth:`state_dict` is the best score so far and its file; put the saver in
      the trainer's checkpoint (``train#checkpoint_state``) and a resumed run replaces ``model.pt`` only when it beats
      that score;
    * checkpoints at an interval (``save_interval``): every file it writes records the files kept, itself included
      (ignite's ``include_self``, under the key ``checkpointer``); load that key into this saver
      (``CheckpointLoader``'s ``load_dict``) and a resumed run removes the checkpoints beyond ``n_saved``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        roles = [c for c in (self._key_metric_checkpoint, self._interval_checkpoint) if c is not None]
        if len(roles) != 1 or self._final_checkpoint is not None:
            raise ValueError(
                "ResumableCheckpointSaver keeps one record: give it either save_key_metric or save_interval (without "
                "save_final); use one saver per role."
            )
        self._checkpoint = roles[0]
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.include_self = True

    def state_dict(self) -> dict[str, Any]:
        """The files kept, with their scores (ignite's ``Checkpoint.state_dict``)."""
        return dict(self._checkpoint.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the record of :meth:`state_dict` (or of a checkpoint file's ``checkpointer`` entry)."""
        self._checkpoint.load_state_dict(state_dict)


class CheckpointLoader(MonaiCheckpointLoader):
    """MONAI's ``CheckpointLoader`` whose errors name the file: a missing, damaged or tampered checkpoint (which
    fails the safe ``weights_only`` load) or one that does not fit the configured network."""

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(
                f"checkpoint {self.load_path} cannot be loaded into {sorted(self.load_dict)} (torch.load with "
                f"weights_only=True, then load_state_dict): {type(e).__name__}: {reason}"
            ) from e

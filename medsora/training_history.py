# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Per-epoch loss history of the short text-side trainings, so that convergence can be shown, not assumed."""

from __future__ import annotations

from ignite.engine import Engine, Events

from medsora.atomic_io import write_json_atomic

__all__ = ["LossHistory"]


class LossHistory:
    """Mean loss of every epoch, written to a JSON file when training ends.

    A trainer with thousands of tiny iterations keeps one number per epoch here; the terminal shows only a progress
    bar and a summary line (:class:`medsora.progress.StageProgress`).

    Args:
        name: stage name recorded in the file.
        history_file: JSON file ``{"stage": name, "epoch_loss": [...]}`` written at the end (atomically).
    """

    def __init__(self, name: str, history_file: str) -> None:
        self.name, self.history_file = name, history_file
        self.epoch_loss: list[float] = []
        self._sum, self._count = 0.0, 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._close_epoch)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, _: Engine) -> None:
        self.epoch_loss.clear()

    def _accumulate(self, engine: Engine) -> None:
        self._sum += float(engine.state.output["loss"].detach())
        self._count += 1

    def _close_epoch(self, _: Engine) -> None:
        self.epoch_loss.append(self._sum / max(self._count, 1))
        self._sum, self._count = 0.0, 0

    def _write(self, _: Engine) -> None:
        write_json_atomic(self.history_file, {"stage": self.name, "epoch_loss": self.epoch_loss})

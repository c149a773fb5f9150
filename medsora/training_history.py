# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Per-epoch loss history of the short text-side trainings, so that convergence can be shown, not assumed."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from medsora.atomic_io import write_json_atomic

__all__ = ["LossHistory"]


class LossHistory:
    """Mean loss of every epoch, logged every ``log_interval`` epochs and written to a JSON file when training ends.

    Per-iteration logging of a trainer with thousands of tiny iterations would drown the log; this keeps one
    number per epoch instead.

    Args:
        name: stage name used in the log and the file.
        history_file: JSON file ``{"stage": name, "epoch_loss": [...]}`` written at the end (atomically).
        log_interval: epochs between log lines (the first and last epochs are always logged).
    """

    def __init__(self, name: str, history_file: str, log_interval: int = 25) -> None:
        self.name, self.history_file, self.log_interval = name, history_file, max(1, log_interval)
        self.epoch_loss: list[float] = []
        self._sum, self._count = 0.0, 0
        self.logger = logging.getLogger(f"medsora.{name}")

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

    def _close_epoch(self, engine: Engine) -> None:
        self.epoch_loss.append(self._sum / max(self._count, 1))
        self._sum, self._count = 0.0, 0
        epoch = engine.state.epoch
        if epoch == 1 or epoch % self.log_interval == 0 or epoch == engine.state.max_epochs:
            self.logger.info(f"{self.name} epoch {epoch}/{engine.state.max_epochs}: loss {self.epoch_loss[-1]:.5f}")

    def _write(self, _: Engine) -> None:
        write_json_atomic(self.history_file, {"stage": self.name, "epoch_loss": self.epoch_loss})

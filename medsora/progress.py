# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""One progress bar per training stage and one summary line when it ends.

Per-iteration and per-epoch log lines drown what a person wants to know (is it moving, how long is left, how did it
end); a bar over the epochs answers the first two and the summary line the third. The bar shows only on a terminal;
the summary line is always printed, so logs keep the result.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import torch
from ignite.engine import Engine, Events
from tqdm import tqdm

__all__ = ["StageProgress"]


class StageProgress:
    """A tqdm bar over a trainer's epochs (mean loss and the key validation metric as its postfix), then one line:
    ``"<stage>: N epochs in T; loss a -> b; best <metric> v at epoch e"``.

    Attaching it also lowers the trainer's own per-epoch log lines to warnings, which this line replaces.

    Args:
        stage: the stage's name in the bar and the summary.
        validator: the evaluator that runs at each epoch's end (its key metric and best value are shown), if any.
        stream: where bar and summary go (default ``sys.stdout``).
    """

    def __init__(self, stage: str, validator: Engine | None = None, stream: TextIO | None = None) -> None:
        self.stage, self.validator, self.stream = stage, validator, stream
        self._bar: tqdm | None = None
        self._losses: list[float] = []
        self._sum, self._count, self._start = 0.0, 0, 0.0

    def attach(self, engine: Engine) -> None:
        engine.logger.setLevel(logging.WARNING)
        if self.validator is not None:
            self.validator.logger.setLevel(logging.WARNING)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _started(self, engine: Engine) -> None:
        self._losses.clear()
        self._start = time.monotonic()
        total = engine.state.max_epochs
        self._bar = tqdm(
            total=total,
            initial=engine.state.epoch,
            desc=self.stage,
            unit="epoch",
            file=self._out(),
            disable=None,
            leave=False,
            dynamic_ncols=True,
        )

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output  # a dict, or one dict per sample when the trainer decollates
        first = output[0] if isinstance(output, list) and output else output
        if isinstance(first, dict) and "loss" in first:
            self._sum += float(torch.as_tensor(first["loss"]).detach())
            self._count += 1

    def _metric(self) -> tuple[str, Any, Any, int] | None:
        state = getattr(self.validator, "state", None)
        name = getattr(state, "key_metric_name", None)
        if not name or name not in state.metrics:
            return None
        return name, state.metrics[name], state.best_metric, state.best_metric_epoch

    def _epoch(self, engine: Engine) -> None:
        if self._count:
            self._losses.append(self._sum / self._count)
        self._sum, self._count = 0.0, 0
        postfix = {"loss": f"{self._losses[-1]:.4f}"} if self._losses else {}
        metric = self._metric()
        if metric is not None:
            postfix[metric[0]] = f"{float(metric[1]):.3f}"
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def summary(self, engine: Engine) -> str:
        """The stage's one-line result."""
        minutes, seconds = divmod(int(round(time.monotonic() - self._start)), 60)
        took = f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
        parts = [f"{self.stage}: {engine.state.epoch} epochs in {took}"]
        if self._losses:
            parts.append(f"loss {self._losses[0]:.4f} -> {self._losses[-1]:.4f}")
        metric = self._metric()
        if metric is not None:
            parts.append(f"best {metric[0]} {float(metric[2]):.3f} at epoch {metric[3]}")
        return "; ".join(parts)

    def _completed(self, engine: Engine) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        print(self.summary(engine), file=self._out(), flush=True)

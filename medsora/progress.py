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
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

if TYPE_CHECKING:  # torch and ignite load when a stage is attached, so the command line's help needs neither
    from ignite.engine import Engine

__all__ = ["StageProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``95`` -> ``"1 min 35 s"``; under a minute ``"42 s"``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class StageProgress:
    """A tqdm bar over a trainer's epochs (mean loss and the key validation metric as its postfix), then one line:
    ``"<stage>: N epochs in T; loss a -> b; best <metric> v at epoch e"`` (``"N of M epochs"`` when it stopped early).

    Attaching it also lowers the trainer's own per-epoch log lines to warnings, which this line replaces.

    Args:
        stage: the stage's name in the bar and the summary.
        validator: the evaluator that runs at each epoch's end (its key metric and best value are shown), if any.
        stream: where bar and summary go (default ``sys.stdout``).
        engine_metric: without a validator, a metric the trainer itself records in ``state.metrics`` each epoch, lower
            being better (a validation loss); its best value and epoch are shown when it is there.
    """

    def __init__(
        self,
        stage: str,
        validator: Engine | None = None,
        stream: TextIO | None = None,
        engine_metric: str | None = None,
    ) -> None:
        self.stage, self.validator, self.stream, self.engine_metric = stage, validator, stream, engine_metric
        self._bar: tqdm | None = None
        self._losses: list[float] = []
        self._sum, self._count, self._start = 0.0, 0, 0.0
        self._best: tuple[float, int] | None = None  # the engine metric's lowest value and its epoch

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

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
        self._best = None
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
            loss = first["loss"]
            self._sum += float(loss.detach() if hasattr(loss, "detach") else loss)
            self._count += 1

    def _metric(self, engine: Engine) -> tuple[str, Any, Any, int] | None:
        """``(name, current, best, best epoch)`` of the validator's key metric, else of the engine metric."""
        if self.validator is None:
            current = engine.state.metrics.get(self.engine_metric) if self.engine_metric else None
            if current is None or self._best is None:
                return None
            return str(self.engine_metric), current, *self._best
        state = getattr(self.validator, "state", None)
        name = getattr(state, "key_metric_name", None)
        if not name or name not in state.metrics:
            return None
        return name, state.metrics[name], state.best_metric, state.best_metric_epoch

    def _epoch(self, engine: Engine) -> None:
        if self._count:
            self._losses.append(self._sum / self._count)
        self._sum, self._count = 0.0, 0
        value = engine.state.metrics.get(self.engine_metric) if self.engine_metric else None
        if value is not None and (self._best is None or float(value) < self._best[0]):
            self._best = (float(value), engine.state.epoch)
        postfix = {"loss": f"{self._losses[-1]:.4f}"} if self._losses else {}
        metric = self._metric(engine)
        if metric is not None:
            postfix[metric[0]] = f"{float(metric[1]):.3f}"
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def summary(self, engine: Engine) -> str:
        """The stage's one-line result."""
        took = format_duration(time.monotonic() - self._start)
        epochs, planned = engine.state.epoch, engine.state.max_epochs
        counted = f"{epochs} of {planned} epochs" if epochs < planned else f"{epochs} epoch{'s' if epochs != 1 else ''}"
        parts = [f"{self.stage}: {counted} in {took}"]
        if self._losses:
            parts.append(f"loss {self._losses[0]:.4f} -> {self._losses[-1]:.4f}")
        metric = self._metric(engine)
        if metric is not None:
            parts.append(f"best {metric[0]} {float(metric[2]):.3f} at epoch {metric[3]}")
        return "; ".join(parts)

    def _completed(self, engine: Engine) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        print(self.summary(engine), file=self._out(), flush=True)

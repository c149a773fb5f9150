# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Early stopping of a text stage on its loss over the held-out validation split, keeping the best epoch's weights.

The text MLP memorises the corpus's phrasing: on the shipped corpus its validation loss is lowest after about 15
epochs and rises after, while texts written unlike the corpus are ranked worse the longer it trains (bundle
docs, "Why the learned pipeline lost to retrieval"). The validation split is held out by source group, so its loss
sees the memorising the training loss hides. MONAI's ``EarlyStopHandler`` stops a run but keeps the last weights;
this handler also puts the best epoch's weights back before the final checkpoint is written.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from ignite.engine import Engine, Events

__all__ = ["ValidationEarlyStopping"]


class ValidationEarlyStopping:
    """After every epoch, the loss of ``network(inputs)`` against ``targets``; stop after ``patience`` epochs without
    improvement and end with the weights of the best epoch.

    Attach it before the ``CheckpointSaver`` that saves the final weights (list it first in ``train_handlers``), so
    that the saved file holds the best epoch.

    Args:
        inputs: ``(N, dim)`` validation inputs.
        targets: their targets, as the training loss takes them.
        loss_function: the training loss.
        patience: epochs without a lower validation loss before training stops; ``None`` never stops early (the
            best epoch's weights are still kept).
        min_delta: the smallest decrease that counts as an improvement.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        patience: int | None = 10,
        min_delta: float = 0.0,
    ) -> None:
        if len(inputs) != len(targets) or not len(inputs):
            raise ValueError(
                f"early stopping needs as many validation inputs as targets, got {len(inputs)} and {len(targets)}."
            )
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}.")
        self.inputs, self.targets, self.loss_function = inputs, targets, loss_function
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_epoch = float("inf"), 0
        self.history: list[float] = []
        self._best_state: dict[str, torch.Tensor] | None = None
        self.logger = logging.getLogger("medsora.early_stopping")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    @torch.no_grad()
    def validation_loss(self, network: torch.nn.Module, device: torch.device | str) -> float:
        training = network.training
        network.eval()
        loss = float(self.loss_function(network(self.inputs.to(device)), self.targets.to(device)))
        network.train(training)
        return loss

    def epoch_completed(self, engine: Engine) -> None:
        loss = self.validation_loss(engine.network, engine.state.device)
        self.history.append(loss)
        engine.state.metrics["validation_loss"] = loss
        epoch = engine.state.epoch
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch = loss, epoch
            self._best_state = copy.deepcopy(engine.network.state_dict())
        elif self.patience is not None and epoch - self.best_epoch >= self.patience:
            self.logger.debug(f"no lower validation loss for {self.patience} epochs: stopping after epoch {epoch}.")
            engine.terminate()

    def completed(self, engine: Engine) -> None:
        if self._best_state is not None:
            engine.network.load_state_dict(self._best_state)
            self.logger.debug(  # the stage's summary line names the best epoch
                f"kept the weights of epoch {self.best_epoch} (validation loss {self.best_loss:.5f}) of "
                f"{engine.state.epoch}."
            )

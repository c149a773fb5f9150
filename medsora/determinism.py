# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Reproducible training, also across a resume from a checkpoint."""

from __future__ import annotations

import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.transforms import Randomizable
from monai.utils import set_determinism

__all__ = ["EpochSeedHandler"]


class EpochSeedHandler:
    """Reseed every random generator from ``seed + epoch`` when an epoch starts.

    Random augmentation, shuffling and dropout of epoch ``k`` then depend only on ``(seed, k)``, not on how many
    epochs ran in this process, so a run resumed from the checkpoint of epoch ``k - 1`` continues exactly as the
    uninterrupted run would have. In distributed runs each rank gets its own stream, so ranks augment differently.

    Args:
        seed: base seed.
        transform: the training dataset's transform, whose own generators are reseeded too.
    """

    def __init__(self, seed: int, transform: Randomizable | None = None) -> None:
        self.seed = seed
        self.transform = transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        epoch_seed = self.seed + engine.state.epoch + 100_003 * rank
        set_determinism(seed=epoch_seed)
        if self.transform is not None:
            self.transform.set_random_state(seed=epoch_seed)

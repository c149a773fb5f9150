# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Image classification loss of the paper (eq. 11): ``L_image = L2D + L3D + L_fusion``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BranchCrossEntropyLoss"]


class BranchCrossEntropyLoss(nn.Module):
    """Sum over branches of the per-slice cross-entropy between branch logits and the organ class.

    Args:
        label_smoothing: passed to ``torch.nn.functional.cross_entropy``.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: ``(B, K, D, N)`` from ``MedSoraImageNet``: K branches, D slices, N organs.
            target: organ class indices, ``(B,)`` or ``(B, 1)``.

        Returns:
            scalar loss: the mean over samples and slices, summed over the K branches.
        """
        if logits.ndim != 4:
            raise ValueError(f"expected branch logits of shape (B, K, D, N), got {tuple(logits.shape)}.")
        batch, branches, slices, _ = logits.shape
        target = target.reshape(-1).long()
        if target.numel() != batch:
            raise ValueError(
                f"expected one organ class per sample ({batch}), got target of shape {tuple(target.shape)}."
            )
        per_slice = F.cross_entropy(
            logits.permute(0, 3, 1, 2),
            target.view(batch, 1, 1).expand(batch, branches, slices),
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        return per_slice.mean(dim=(0, 2)).sum()

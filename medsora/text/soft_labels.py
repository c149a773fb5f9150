# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Soft labels from learnable organ anchors (paper section 3.2, eqs. 1-4).

A symptom often points to several organs, so instead of one-hot labels each organ gets a positive anchor
``v+`` (what is specific to it) and a negative anchor ``v-`` (what other organs' symptoms share), trained on the
frozen text embeddings with the anchor margin loss; the soft label of a text for an organ is then
``(cos(v+, f) + 1) / 2``.

On a frozen text encoder the anchors cannot reach the margins, so eq. 4 alone gives flat labels whose highest organ
is not always the text's own (about one training text in ten on the shipped corpus; one pancreas text in five
peaks at another organ, mostly stomach or gallbladder). ``label_mode: soft_annotated`` keeps eq. 4 for every other organ
and gives the annotated organ a target of 1, so the one-to-many associations stay and the annotation is never
contradicted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from medsora.stages import load_weights

__all__ = [
    "LABEL_MODES",
    "OrganAnchors",
    "AnchorMarginLoss",
    "soft_labels",
    "one_hot_labels",
    "uses_anchors",
    "training_targets",
    "load_anchors",
    "anchors_for_mode",
]

# text head targets: eq. 4 as printed, eq. 4 with the annotated organ at 1, one-hot (Table 2's baseline)
LABEL_MODES = ("soft", "soft_annotated", "hard")


class OrganAnchors(nn.Module):
    """Positive and negative anchors ``v+_i, v-_i`` for each organ, in the text embedding space.

    ``forward`` gives the cosine similarities of eq. 1 for every text and organ: ``(B, 2, N)``, row 0 ``s+``,
    row 1 ``s-``.

    Args:
        embedding_dim: dimension of the frozen text embeddings.
        num_organs: number of organs.
    """

    def __init__(self, embedding_dim: int, num_organs: int = 7) -> None:
        super().__init__()
        self.positive = nn.Parameter(torch.randn(num_organs, embedding_dim) / embedding_dim**0.5)
        self.negative = nn.Parameter(torch.randn(num_organs, embedding_dim) / embedding_dim**0.5)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        text = F.normalize(embeddings, dim=-1)
        s_pos = text @ F.normalize(self.positive, dim=-1).T
        s_neg = text @ F.normalize(self.negative, dim=-1).T
        return torch.stack([s_pos, s_neg], dim=1)


class AnchorMarginLoss(nn.Module):
    """The anchor margin loss of eq. 3, averaged over organs.

    For organ ``i``, its own texts (``P``) should have ``s+_i >= m`` and ``s-_i <= 1 - m``; texts of other organs
    (``N``) the reverse, ``M(s-_i, s+_i)`` with ``M(a, b) = max(0, m - a) + max(0, b - (1 - m))`` (eq. 2). Each
    expectation is a mean over the texts of the batch in that set; an organ with no text of the batch in a set
    contributes nothing for that set.

    Args:
        margin: ``m``; the paper uses 0.8.
    """

    def __init__(self, margin: float = 0.8) -> None:
        super().__init__()
        if not 0.5 <= margin <= 1.0:
            raise ValueError(f"margin must be in [0.5, 1] so that m >= 1 - m, got {margin}.")
        self.margin = margin

    def _margin(self, pulled: torch.Tensor, pushed: torch.Tensor) -> torch.Tensor:
        return F.relu(self.margin - pulled) + F.relu(pushed - (1.0 - self.margin))

    def forward(self, similarities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            similarities: ``(B, 2, N)`` from :class:`OrganAnchors`.
            target: organ index of each text, ``(B,)`` or ``(B, 1)``.
        """
        s_pos, s_neg = similarities[:, 0], similarities[:, 1]
        own = F.one_hot(target.reshape(-1).long(), s_pos.shape[-1]).to(s_pos.dtype)
        other = 1.0 - own
        positive_term = (self._margin(s_pos, s_neg) * own).sum(0) / own.sum(0).clamp_min(1.0)
        negative_term = (self._margin(s_neg, s_pos) * other).sum(0) / other.sum(0).clamp_min(1.0)
        return (positive_term + negative_term).mean()


def soft_labels(anchors: OrganAnchors, embeddings: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ``(cos(v+_i, f) + 1) / 2`` for every text and organ, ``(B, N)`` in ``[0, 1]``."""
    with torch.no_grad():
        return ((anchors(embeddings)[:, 0] + 1.0) / 2.0).clamp(0.0, 1.0)


def one_hot_labels(organs: torch.Tensor, num_organs: int) -> torch.Tensor:
    """The hard-label alternative: each text labelled with its source organ only."""
    return F.one_hot(organs.reshape(-1).long(), num_organs).float()


def uses_anchors(mode: str) -> bool:
    """Whether a label mode's targets come from the organ anchors (so the train_anchors stage must run first)."""
    return mode != "hard"


def training_targets(
    mode: str, embeddings: torch.Tensor, organs: torch.Tensor, num_organs: int, anchors: OrganAnchors | None = None
) -> torch.Tensor:
    """Targets for the text head, one of :data:`LABEL_MODES`: ``"soft"`` (eq. 4), ``"soft_annotated"`` (eq. 4 with
    the annotated organ's target at 1) or ``"hard"`` (one-hot)."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {list(LABEL_MODES)}, got {mode!r}.")
    if mode == "hard":
        return one_hot_labels(organs, num_organs)
    if anchors is None:
        raise ValueError(f"label_mode {mode!r} needs trained organ anchors; run the train_anchors stage first.")
    soft = soft_labels(anchors, embeddings)
    return torch.maximum(soft, one_hot_labels(organs, num_organs)) if mode == "soft_annotated" else soft


def load_anchors(path: str, embedding_dim: int, num_organs: int = 7) -> OrganAnchors:
    """Anchors saved by the ``train_anchors`` stage; the error says how to produce them when the file is missing."""
    return load_weights(OrganAnchors(embedding_dim, num_organs), path)


def anchors_for_mode(mode: str, path: str, embedding_dim: int, num_organs: int = 7) -> OrganAnchors | None:
    """The trained anchors when label ``mode`` needs them (:func:`uses_anchors`), else ``None`` (hard labels)."""
    return load_anchors(path, embedding_dim, num_organs) if uses_anchors(mode) else None

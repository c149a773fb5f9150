# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Trainable text side on top of the frozen encoder: the symptom MLP with its organ head, and the domain gate.

The MLP feature ``f_bar = MLP(f)`` is what the alignment projects into the image space (paper section 3.2); the
sigmoid head over it is trained on the soft labels, one independent output per organ, so a text may point to
several organs. The domain gate is ours: the paper shows non-abdominal queries scoring uniformly low (Fig. 7c)
without saying how; a logistic model on the frozen embedding, trained on abdominal vs. non-abdominal texts,
scales all organ scores of a query so that they do.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SymptomTextModel", "DomainGate"]


class SymptomTextModel(nn.Module):
    """``f -> f_bar -> organ logits``: an MLP feature extractor and a per-organ sigmoid head.

    ``forward`` returns the head's logits ``(B, N)`` (apply a sigmoid for the predicted soft labels);
    ``features`` returns ``f_bar`` ``(B, feature_dim)``.

    Args:
        embedding_dim: dimension of the frozen text embedding ``f``.
        hidden_dim: width of the MLP's hidden layer.
        feature_dim: dimension of ``f_bar``.
        num_organs: number of head outputs.
        dropout_rate: dropout after each hidden activation.
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int = 512,
        feature_dim: int = 256,
        num_organs: int = 7,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout_rate),
            nn.Linear(hidden_dim, feature_dim),
        )
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout_rate), nn.Linear(feature_dim, num_organs))

    def features(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(embeddings)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(embeddings))


class DomainGate(nn.Module):
    """Logistic model of ``P(abdominal | f)`` on the frozen text embedding; ``forward`` returns the logit ``(B, 1)``.

    Args:
        embedding_dim: dimension of the frozen text embedding.
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_dim, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)

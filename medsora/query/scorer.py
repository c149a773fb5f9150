# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Organ scores of symptom texts: the frozen encoder, then the trained aligner against organ features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medsora.organs import rank_organs
from medsora.query.readability import QueryVocabulary
from medsora.text.alignment import TextImageAligner

__all__ = ["OrganQuery"]


class OrganQuery:
    """Score symptom texts against the seven organs with a trained :class:`TextImageAligner`.

    Args:
        encoder: the frozen text encoder the aligner was trained with (``encode(texts) -> (N, dim)``).
        aligner: trained aligner (see ``alignment.load_weights``).
        organs: organ names in class-index order.
        batch_size: texts encoded per call.
        vocabulary: the words the model can read (``readability.QueryVocabulary``); a text mostly of other words is
            out of domain. ``None``: the domain gate alone decides.
    """

    def __init__(
        self,
        encoder: Any,
        aligner: TextImageAligner,
        organs: Sequence[str],
        batch_size: int = 128,
        vocabulary: QueryVocabulary | None = None,
    ) -> None:
        if aligner.encoder_id and aligner.encoder_id != encoder.model_id:
            raise ValueError(
                f"the query model was trained with text encoder {aligner.encoder_id!r} but the configured encoder is "
                f"{encoder.model_id!r}; configure the same encoder or retrain the text stages with this one."
            )
        self.encoder, self.aligner, self.organs = encoder, aligner.eval(), list(organs)
        self.batch_size = batch_size
        self.vocabulary = vocabulary

    @property
    def threshold(self) -> float:
        return float(self.aligner.threshold)

    def score(self, texts: Sequence[str], organ_features: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Organ scores ``(Q, K)`` in ``[0, 1]`` and the in-domain flags ``(Q,)``; ``organ_features`` ``(K, D, d)``
        replace the reference organs."""
        scores, flags = [np.zeros((0, len(self.organs)), dtype=np.float32)], [np.zeros(0, dtype=bool)]
        for start in range(0, len(texts), self.batch_size):
            embeddings = torch.as_tensor(self.encoder.encode(list(texts[start : start + self.batch_size]))).float()
            scores.append(self.aligner.organ_scores(embeddings, organ_features).numpy())
            flags.append(self.aligner.in_domain(embeddings).numpy())
        if self.vocabulary is not None:
            return self.vocabulary.gate(texts, np.concatenate(scores), np.concatenate(flags))
        return np.concatenate(scores), np.concatenate(flags)

    def answer(self, scores: np.ndarray, in_domain: bool) -> dict[str, Any]:
        """The JSON answer for one query: ``scores``, ``ranking`` and ``in_domain``."""
        return {
            "scores": {organ: round(float(s), 6) for organ, s in zip(self.organs, scores)},
            "ranking": rank_organs(scores, self.organs),
            "in_domain": bool(in_domain),
        }

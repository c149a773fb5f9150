# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Organ scores of symptom texts: the frozen encoder, then the trained aligner against organ features, fused with
retrieval over the corpus's training texts, and the evidence of every answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from medsora.organs import rank_organs
from medsora.query.evidence import organ_evidence
from medsora.query.fusion import FusionParameters, fuse
from medsora.query.readability import QueryVocabulary
from medsora.text.alignment import TextImageAligner
from medsora.text.retrieval import TextIndex

__all__ = ["OrganQuery", "QueryScores"]


class QueryScores(NamedTuple):
    """What :meth:`OrganQuery.score_with_evidence` gives for ``Q`` texts, in the order :meth:`OrganQuery.answer`
    takes it.

    Attributes:
        scores: ``(Q, K)`` organ scores in ``[0, 1]``.
        in_domain: ``(Q,)`` whether each text points to the abdomen.
        evidence: each text's supporting corpus texts (empty lists without an index).
        p_abdominal: ``(Q,)`` the scorer's ``P(abdominal)``, which ``in_domain`` compares with :attr:`OrganQuery.
            threshold` (a text mostly of words the model cannot read is out of domain whatever its ``P``).
    """

    scores: np.ndarray
    in_domain: np.ndarray
    evidence: list[list[dict[str, Any]]]
    p_abdominal: np.ndarray


class OrganQuery:
    """Score symptom texts against the seven organs with a trained :class:`TextImageAligner`.

    Args:
        encoder: the frozen text encoder the aligner was trained with (``encode(texts) -> (N, dim)``).
        aligner: trained aligner (see ``alignment.load_weights``).
        organs: organ names in class-index order.
        batch_size: texts encoded per call.
        vocabulary: the words the model can read (``readability.QueryVocabulary``); a text mostly of other words is
            out of domain. ``None``: the domain gate alone decides.
        index: the corpus's training texts (:mod:`medsora.text.retrieval`): the evidence of every answer, and the
            retrieval half of the fused scorer. ``None``: answers carry no evidence.
        fusion: the fused scorer's parameters (:mod:`medsora.query.fusion`; needs ``index``); ``None``: the paper's
            scorer, the aligner's avgSim alone.
        evidence_organs: how many of an answer's top organs get evidence.
        evidence_texts: supporting texts per organ.
    """

    def __init__(
        self,
        encoder: Any,
        aligner: TextImageAligner,
        organs: Sequence[str],
        batch_size: int = 128,
        vocabulary: QueryVocabulary | None = None,
        index: TextIndex | None = None,
        fusion: FusionParameters | None = None,
        evidence_organs: int = 3,
        evidence_texts: int = 2,
    ) -> None:
        if aligner.encoder_id and aligner.encoder_id != encoder.model_id:
            raise ValueError(
                f"the query model was trained with text encoder {aligner.encoder_id!r} but the configured encoder is "
                f"{encoder.model_id!r}; configure the same encoder or retrain the text stages with this one."
            )
        if fusion is not None and index is None:
            raise ValueError("the fused scorer needs the text index; give index=, or fusion=None for the paper's.")
        if index is not None:
            index.check_encoder(encoder.model_id)
            if index.organs != list(organs):
                raise ValueError(f"the text index holds organs {index.organs}, the query model {list(organs)}.")
        self.encoder, self.aligner, self.organs = encoder, aligner.eval(), list(organs)
        self.batch_size = batch_size
        self.vocabulary = vocabulary
        self.index, self.fusion = index, fusion
        self.evidence_organs, self.evidence_texts = evidence_organs, evidence_texts

    @property
    def scorer(self) -> str:
        """``"fused"`` or ``"paper"``."""
        return "paper" if self.fusion is None else "fused"

    @property
    def threshold(self) -> float:
        """The threshold on ``P(abdominal)`` behind ``in_domain``."""
        return float(self.aligner.threshold) if self.fusion is None else self.fusion.threshold

    def _similarities(
        self, texts: Sequence[str], embeddings: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The batch's similarities with the indexed texts: by embedding (``None`` without an index) and by
        character n-grams (``None`` unless the fused scorer uses them)."""
        if self.index is None:
            return None, None
        uses_words = self.fusion is not None and self.fusion.lexical_share > 0
        return self.index.similarities(embeddings), self.index.lexical.similarities(texts) if uses_words else None

    def _score_batch(
        self,
        texts: Sequence[str],
        embeddings: torch.Tensor,
        organ_features: torch.Tensor | None,
        similarities: torch.Tensor | None,
        lexical: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Organ scores and ``P(abdominal)`` of a batch of texts and their embeddings."""
        if self.fusion is None:
            return (
                self.aligner.organ_scores(embeddings, organ_features),
                self.aligner.abdominal_probability(embeddings)[:, 0],
            )
        assert self.index is not None
        scores, abdominal, _ = fuse(
            self.fusion, self.index, self.aligner, embeddings, texts, organ_features, similarities, lexical
        )
        if organ_features is not None:
            scores = self._keep_reference_scores(scores, texts, embeddings, organ_features, similarities, lexical)
        return scores, abdominal

    def _keep_reference_scores(
        self,
        scores: torch.Tensor,
        texts: Sequence[str],
        embeddings: torch.Tensor,
        organ_features: torch.Tensor,
        similarities: torch.Tensor | None,
        lexical: torch.Tensor | None,
    ) -> torch.Tensor:
        """The fused scores couple the organs (a softmax over them, the top organ's share), so a patient's features for
        one organ would move the others' scores too. An organ that takes the reference features (the image gate's
        fallback) keeps exactly its text-only score: a CT the network cannot read never changes that organ's answer."""
        assert self.fusion is not None and self.index is not None
        reference = self.aligner.reference
        on_reference = (organ_features.to(reference) == reference).flatten(1).all(dim=1)
        if not on_reference.any():
            return scores
        text_only, _, _ = fuse(self.fusion, self.index, self.aligner, embeddings, texts, None, similarities, lexical)
        return torch.where(on_reference[None, :], text_only, scores)

    def score_with_evidence(self, texts: Sequence[str], organ_features: torch.Tensor | None = None) -> QueryScores:
        """Organ scores, in-domain flags, evidence and ``P(abdominal)`` of each text (:class:`QueryScores`);
        ``organ_features`` ``(K, D, d)`` replace the reference organs."""
        scores, abdominal = [np.zeros((0, len(self.organs)), dtype=np.float32)], [np.zeros(0, dtype=np.float32)]
        evidence: list[list[dict[str, Any]]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            embeddings = torch.as_tensor(self.encoder.encode(batch)).float()
            similarities, lexical = self._similarities(batch, embeddings)
            batch_scores, batch_abdominal = self._score_batch(batch, embeddings, organ_features, similarities, lexical)
            scores.append(batch_scores.numpy())
            abdominal.append(batch_abdominal.numpy())
            if similarities is None:
                evidence += [[] for _ in batch]
            else:
                assert self.index is not None
                rankings = [rank_organs(row, self.organs) for row in scores[-1]]
                share = 0.0 if self.fusion is None else self.fusion.lexical_share
                evidence += organ_evidence(
                    self.index, similarities, rankings, self.evidence_organs, self.evidence_texts, lexical, share
                )
        all_scores, all_abdominal = np.concatenate(scores), np.concatenate(abdominal)
        all_flags = all_abdominal >= self.threshold
        if self.vocabulary is not None:
            all_scores, all_flags = self.vocabulary.gate(texts, all_scores, all_flags)
        return QueryScores(all_scores, all_flags, evidence, all_abdominal)

    def score(self, texts: Sequence[str], organ_features: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Organ scores ``(Q, K)`` in ``[0, 1]`` and the in-domain flags ``(Q,)``; ``organ_features`` ``(K, D, d)``
        replace the reference organs."""
        scored = self.score_with_evidence(texts, organ_features)
        return scored.scores, scored.in_domain

    def answer(
        self,
        scores: np.ndarray,
        in_domain: bool,
        evidence: list[dict[str, Any]],
        p_abdominal: float,
    ) -> dict[str, Any]:
        """The JSON answer for one query: ``scores``, ``ranking``, ``in_domain``, ``evidence`` and the
        ``p_abdominal`` that ``in_domain`` compares with :attr:`threshold`."""
        return {
            "scores": {organ: round(float(s), 6) for organ, s in zip(self.organs, scores)},
            "ranking": rank_organs(scores, self.organs),
            "in_domain": bool(in_domain),
            "p_abdominal": round(float(p_abdominal), 6),
            "evidence": list(evidence),
        }

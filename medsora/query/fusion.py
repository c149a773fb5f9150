# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The default scorer of ``query``: retrieval over the corpus index fused with the learned organ scores.

The learned pipeline generalises from its training texts through one small network, the retrieval by the frozen
encoder's own neighbourhoods; on texts phrased unlike the corpus each misses what the other finds, so an answer takes
both. For a query with unit embedding ``q``:

* retrieval: the ``neighbours`` most similar indexed texts vote with weights ``softmax(cos / temperature)``; the
  abdominal texts' share is ``P_retrieval(abdominal)`` and their votes per organ, renormalised, ``r``. It is hybrid:
  the votes of the nearest texts by embedding and those of the nearest texts by character n-grams
  (:mod:`medsora.text.lexical`) are mixed, the latter at ``lexical_share`` (for a query that shares no n-gram with any
  indexed text, the embedding's votes alone);
* learned: ``softmax(avgSim / learned_temperature)`` over the organs, the alignment's InfoNCE turned into organ
  probabilities ``l`` (against the reference organ features, or the patient's own with ``--image``);
* relevance ``m = retrieval_weight * r + (1 - retrieval_weight) * l``;
* ``P(abdominal)`` is the mean of the domain gate's and the retrieval's, and ``in_domain`` is ``P >= threshold``;
* organ scores ``P(abdominal) * m_k * ((1 - relative_share) + relative_share / max(m))``: in ``[0, 1]``, low for
  every organ of a non-abdominal text; ``relative_share`` trades the top organ's confidence (0) against the query's
  abdominal probability (1) in its score.

Every parameter is chosen on the corpus's validation split (:mod:`medsora.query.fusion_choice`) and stored in
``fusion.json`` next to the index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from medsora.atomic_io import write_json_atomic
from medsora.stages import producer, require_stage_file
from medsora.text.retrieval import TextIndex

if TYPE_CHECKING:
    from medsora.text.alignment import TextImageAligner

__all__ = [
    "FusionParameters",
    "fuse",
    "fused_scores",
    "load_fusion",
    "query_fusion",
    "hybrid_votes",
    "retrieval_votes",
    "save_fusion",
]

SCORERS = ("fused", "paper")


@dataclass(frozen=True)
class FusionParameters:
    """The few numbers of the fused scorer (see the module's docstring).

    Args:
        neighbours: indexed texts that vote per query.
        temperature: softmax temperature over their cosine similarities.
        retrieval_weight: share of the retrieval votes in an organ's relevance, the rest the learned scores'.
        learned_temperature: softmax temperature of the learned avgSim (the alignment's InfoNCE temperature).
        relative_share: weight of the relevance relative to the top organ's in the score.
        threshold: on the fused ``P(abdominal)``; ``in_domain`` is ``P >= threshold``.
        lexical_share: share of the votes of the nearest texts by character n-grams in the retrieval's.
    """

    neighbours: int = 30
    temperature: float = 0.05
    retrieval_weight: float = 0.5
    learned_temperature: float = 0.1
    relative_share: float = 0.5
    threshold: float = 0.5
    lexical_share: float = 0.0

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ValueError(f"fusion neighbours must be >= 1, got {self.neighbours}.")
        if self.temperature <= 0 or self.learned_temperature <= 0:
            raise ValueError(f"fusion temperatures must be > 0, got {self.temperature} and {self.learned_temperature}.")
        for name in ("retrieval_weight", "relative_share", "threshold", "lexical_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fusion {name} must be in [0, 1], got {value}.")


def retrieval_votes(
    index: TextIndex, similarities: torch.Tensor, rows: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Organ distribution ``(Q, K)`` of the abdominal neighbours' votes and their share ``(Q,)`` of all votes.

    Args:
        index: the index the neighbours come from.
        similarities: ``(Q, n)`` cosine similarities of each query's neighbours, most similar first.
        rows: ``(Q, n)`` their rows in the index.
        temperature: softmax temperature over the similarities.
    """
    weights = torch.softmax(similarities / temperature, dim=1)
    organs = index.organ_index[rows]
    votes = torch.zeros(len(rows), len(index.organs) + 1, dtype=weights.dtype)
    votes.scatter_add_(1, torch.where(organs < 0, len(index.organs), organs), weights)
    inside = votes[:, :-1].sum(dim=1)
    uniform = torch.full_like(votes[:, :-1], 1.0 / len(index.organs))
    distribution = torch.where(inside[:, None] > 0, votes[:, :-1] / inside.clamp_min(1e-12)[:, None], uniform)
    return distribution, inside


def hybrid_votes(
    index: TextIndex,
    dense: torch.Tensor,
    lexical: torch.Tensor | None,
    neighbours: int,
    temperature: float,
    lexical_share: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The retrieval's organ distribution ``(Q, K)`` and abdominal share ``(Q,)``: the votes of the nearest texts by
    embedding and, at ``lexical_share``, by character n-grams.

    Args:
        index: the index searched.
        dense: ``(Q, N)`` cosine similarities of the queries' embeddings with every indexed text.
        lexical: ``(Q, N)`` their TF-IDF cosine similarities (:meth:`TextIndex.lexical`); ``None`` when
            ``lexical_share`` is 0.
        neighbours: nearest texts that vote, by each measure.
        temperature: softmax temperature over either measure's similarities.
        lexical_share: weight of the lexical votes; a query with no n-gram in common with the index takes none.
    """
    k = min(neighbours, len(index))
    nearest = dense.topk(k, dim=1)
    votes, inside = retrieval_votes(index, nearest.values, nearest.indices, temperature)
    if lexical_share == 0.0:
        return votes, inside
    if lexical is None:
        raise ValueError("a lexical_share above 0 needs the queries' lexical similarities.")
    nearest = lexical.topk(k, dim=1)
    lexical_votes, _ = retrieval_votes(index, nearest.values, nearest.indices, temperature)
    share = lexical_share * (nearest.values[:, :1] > 0).to(votes.dtype)
    return (1.0 - share) * votes + share * lexical_votes, inside


def fused_scores(
    parameters: FusionParameters,
    votes: torch.Tensor,
    retrieval_abdominal: torch.Tensor,
    avg_sim: torch.Tensor,
    gate_abdominal: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Organ scores ``(Q, K)`` in ``[0, 1]`` and the fused ``P(abdominal)`` ``(Q,)``.

    Args:
        parameters: the fusion's parameters.
        votes: ``(Q, K)`` retrieval organ distribution (:func:`retrieval_votes`).
        retrieval_abdominal: ``(Q,)`` abdominal share of the retrieval votes.
        avg_sim: ``(Q, K)`` the aligner's avgSim of each query with each organ's features.
        gate_abdominal: ``(Q,)`` the domain gate's ``P(abdominal)``.
    """
    learned = torch.softmax(avg_sim / parameters.learned_temperature, dim=1)
    relevance = parameters.retrieval_weight * votes + (1.0 - parameters.retrieval_weight) * learned
    top = relevance.max(dim=1, keepdim=True).values.clamp_min(1e-12)
    shape = (1.0 - parameters.relative_share) + parameters.relative_share / top
    abdominal = (gate_abdominal + retrieval_abdominal) / 2.0
    return (abdominal[:, None] * relevance * shape).clamp(0.0, 1.0), abdominal


@torch.no_grad()
def fuse(
    parameters: FusionParameters,
    index: TextIndex,
    aligner: TextImageAligner,
    embeddings: torch.Tensor,
    texts: Sequence[str],
    organ_features: torch.Tensor | None = None,
    similarities: torch.Tensor | None = None,
    lexical: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused organ scores ``(Q, K)``, fused ``P(abdominal)`` ``(Q,)`` and retrieval votes ``(Q, K)`` of ``texts`` and
    their embeddings ``(Q, dim)``; ``organ_features`` ``(K, D, d)`` replace the reference organs, ``similarities``
    and ``lexical`` ``(Q, N)`` (:meth:`TextIndex.similarities`, ``TextIndex.lexical.similarities``) spare computing
    them again."""
    if len(texts) != len(embeddings):
        raise ValueError(f"fuse needs one text per embedding, got {len(texts)} texts and {len(embeddings)} embeddings.")
    if similarities is None:
        similarities = index.similarities(embeddings)
    if lexical is None and parameters.lexical_share > 0:
        lexical = index.lexical.similarities(texts)
    votes, retrieval_abdominal = hybrid_votes(
        index, similarities, lexical, parameters.neighbours, parameters.temperature, parameters.lexical_share
    )
    scores, abdominal = fused_scores(
        parameters,
        votes,
        retrieval_abdominal,
        aligner.avg_sim(embeddings, organ_features),
        aligner.abdominal_probability(embeddings)[:, 0],
    )
    return scores, abdominal, votes


def save_fusion(parameters: FusionParameters, path: str, report: dict[str, Any] | None = None) -> str:
    """Write the parameters (and how they were chosen) as JSON, atomically; returns ``path``."""
    write_json_atomic(path, {"parameters": asdict(parameters), **({"choice": report} if report else {})})
    return path


def load_fusion(path: str) -> FusionParameters:
    """The parameters saved by :func:`save_fusion`; a missing or malformed file names the command that writes it."""
    require_stage_file(path, "fusion parameters")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)["parameters"]
        known = {field.name for field in fields(FusionParameters)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fields {unknown}; expected {sorted(known)}")
        return FusionParameters(**values)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"fusion parameters {path} are unusable ({e}); rebuild them: `{producer(path)}`.") from e


def query_fusion(scorer: str, path: str) -> FusionParameters | None:
    """The fusion of the configured ``query_scorer``: ``"fused"`` reads ``path``, ``"paper"`` (eq. 13's avgSim
    alone, the paper's scorer) needs none."""
    if scorer not in SCORERS:
        raise ValueError(f"query_scorer must be one of {list(SCORERS)}, got {scorer!r}.")
    return load_fusion(path) if scorer == "fused" else None

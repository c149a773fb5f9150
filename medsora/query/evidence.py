# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The evidence of an answer: for its top organs, the corpus texts most like the query, with where they come from.

A ranking alone cannot be checked; the texts behind it can. Each item names the indexed text, its organ, its cosine
similarity to the query and its provenance exactly as the corpus records it (``source`` and ``identifier``: an HPO,
OMIM or ICD-10-CM id, or the knowledge table with the ``findings`` the text was written from). Under hybrid retrieval
an organ's texts are chosen as they voted: by the similarity of their embeddings and of their character n-grams, mixed
at the fusion's ``lexical_share``, and each item also carries its ``lexical_similarity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medsora.text.retrieval import TextIndex

__all__ = ["organ_evidence"]


def organ_evidence(
    index: TextIndex,
    similarities: torch.Tensor,
    rankings: Sequence[Sequence[str]],
    organs_per_answer: int = 3,
    texts_per_organ: int = 2,
    lexical: torch.Tensor | None = None,
    lexical_share: float = 0.0,
) -> list[list[dict[str, Any]]]:
    """Evidence of each query: for its ``organs_per_answer`` best-ranked organs, that organ's
    ``texts_per_organ`` indexed texts most like the query, best organ first.

    Args:
        index: the text index.
        similarities: ``(Q, N)`` cosine similarity of every query with every indexed text.
        rankings: each query's organs, best first.
        organs_per_answer: how many of the top organs get evidence.
        texts_per_organ: supporting texts per organ.
        lexical: ``(Q, N)`` character n-gram similarities (:mod:`medsora.text.lexical`), if the scorer used them.
        lexical_share: their weight in choosing the texts.

    Returns:
        per query, a list of ``{"text", "organ", "similarity", "provenance"}``, with ``"lexical_similarity"`` when
        ``lexical`` is given.
    """
    if organs_per_answer < 0 or texts_per_organ < 0:
        raise ValueError(f"evidence counts must be >= 0, got {organs_per_answer} and {texts_per_organ}.")
    closeness = similarities if lexical is None else (1.0 - lexical_share) * similarities + lexical_share * lexical
    evidence: list[list[dict[str, Any]]] = []
    rows_of = {organ: torch.nonzero(index.organ_index == k).reshape(-1) for k, organ in enumerate(index.organs)}
    for query, ranking in enumerate(rankings):
        items = []
        for organ in list(ranking)[:organs_per_answer]:
            rows = rows_of[organ]
            if not len(rows) or not texts_per_organ:
                continue
            best = closeness[query, rows].topk(min(texts_per_organ, len(rows)))
            for row in rows[best.indices].tolist():
                record = index.records[row]
                item = {"text": record["text"], "organ": organ, "similarity": round(float(similarities[query, row]), 4)}
                if lexical is not None:
                    item["lexical_similarity"] = round(float(lexical[query, row]), 4)
                items.append({**item, "provenance": dict(record["provenance"])})
        evidence.append(items)
    return evidence

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""A lexical baseline for Table 4: BM25 retrieval of the training texts, no neural text encoder at all.

An organ's score for a query is the best BM25 score among the training texts labelled with that organ, i.e. the
organ of the lexically nearest training symptom wins. It shows how much of the task word overlap alone solves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bm25_organ_scores"]


def bm25_organ_scores(train_texts: Sequence[str], train_labels: np.ndarray, queries: Sequence[str]) -> np.ndarray:
    """Organ scores ``(Q, K)`` of ``queries``: per organ, the highest BM25 score of its training texts.

    Args:
        train_texts: the training symptom texts (the index).
        train_labels: ``(N, K)`` multi-hot organs of each training text.
        queries: query texts.
    """
    import bm25s  # only the evaluation needs it

    labels = np.asarray(train_labels, dtype=bool)
    if labels.ndim != 2 or len(labels) != len(train_texts):
        raise ValueError(f"train_labels must be (N, K) for {len(train_texts)} texts, got shape {labels.shape}.")
    if not labels.any(axis=0).all():
        raise ValueError("every organ needs at least one training text for the BM25 baseline.")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(train_texts), stopwords="en", show_progress=False), show_progress=False)
    scores = np.zeros((len(queries), labels.shape[1]), dtype=np.float64)
    tokenized = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
    for row, tokens in enumerate(tokenized):
        known = [t for t in tokens if t in retriever.vocab_dict]  # words absent from the index score nothing
        text_scores = retriever.get_scores(known) if known else np.zeros(len(train_texts))
        scores[row] = np.where(labels, text_scores[:, None], -np.inf).max(axis=0)
    return scores

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Symptom-to-organ retrieval metrics (Rank-k, class- and query-wise mAP) and out-of-domain rejection scores.

The paper reports these numbers without pinning down ties, multi-label queries or organs without test queries, so
they are fixed here once and shared by training, evaluation and the ``query`` workflow:

* every ranking is by descending score with a stable sort, so equal scores keep their canonical order (organs in
  ``ORGANS`` order, queries in query-index order) and no metric can profit from a lucky tie;
* a query may carry several organ labels; a query with none is not a valid test query and is refused;
* average precision is the non-interpolated one: the mean over positives of the precision at the positive's rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medsora.organs import ORGANS, check_organs, descending_order
from medsora.thresholds import check_score_vector, threshold_operating_point

__all__ = [
    "label_matrix",
    "rank_k",
    "classwise_average_precision",
    "classwise_map",
    "querywise_average_precision",
    "querywise_map",
    "retrieval_report",
    "ood_auroc",
    "threshold_operating_point",
]


def label_matrix(labels: Sequence[Sequence[str]], organs: Sequence[str] = ORGANS) -> np.ndarray:
    """Multi-hot matrix of organ-name labels.

    Args:
        labels: for each query, the names of its labelled organs.
        organs: organ names in column order.

    Returns:
        bool array ``(Q, K)``, True where the query is labelled with the organ.

    Raises:
        ValueError: a name not in ``organs`` (the message names it and the query index), or a query given as a
            bare string instead of a sequence of names.
    """
    organs = check_organs(organs)
    column = {organ: j for j, organ in enumerate(organs)}
    matrix = np.zeros((len(labels), len(organs)), dtype=bool)
    for i, names in enumerate(labels):
        if isinstance(names, str):
            raise ValueError(f"query {i}: labels must be a sequence of organ names, got the string {names!r}.")
        for name in names:
            if name not in column:
                raise ValueError(f"query {i}: unknown organ {name!r}; expected one of {organs}.")
            matrix[i, column[name]] = True
    return matrix


def _check_scores(scores: Any, organs: Sequence[str]) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(organs):
        raise ValueError(f"scores must have shape (queries, {len(organs)}), one column per organ; got {scores.shape}.")
    if scores.shape[0] == 0:
        raise ValueError("scores has no queries.")
    if np.isnan(scores).any():
        query = int(np.nonzero(np.isnan(scores).any(axis=1))[0][0])
        raise ValueError(f"scores contain NaN (first at query {query}).")
    return scores


def _check_labels(labels: Any, shape: tuple[int, int], organs: Sequence[str]) -> np.ndarray:
    """Labels as a bool ``shape`` matrix, from organ names or a binary matrix; every query needs a label."""
    is_names = not isinstance(labels, np.ndarray) and all(
        isinstance(row, str) or (isinstance(row, Sequence) and all(isinstance(name, str) for name in row))
        for row in labels
    )
    if is_names:
        matrix = label_matrix(labels, organs)
    else:
        values = np.asarray(labels)
        if values.size and not np.isin(values, (0, 1)).all():
            raise ValueError("label matrix must be binary (0/1 or bool); got other values.")
        matrix = values.astype(bool)
    if matrix.shape != shape:
        raise ValueError(f"labels have shape {matrix.shape} but scores have shape {shape}.")
    empty = np.nonzero(~matrix.any(axis=1))[0]
    if empty.size:
        raise ValueError(
            f"query {int(empty[0])} has no labelled organ ({empty.size} of {shape[0]} queries have none); "
            "such a query is not a valid test query."
        )
    return matrix


def _inputs(scores: Any, labels: Any, organs: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    organs = check_organs(organs)
    scores = _check_scores(scores, organs)
    return scores, _check_labels(labels, scores.shape, organs), organs


def _average_precision(relevant: np.ndarray) -> np.ndarray:
    """Non-interpolated AP of each row of a ranked relevance matrix ``(N, L)``; NaN for rows without positives."""
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    positives = relevant.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, (precision * relevant).sum(axis=1) / positives, np.nan)


def rank_k(scores: Any, labels: Any, k: int, organs: Sequence[str] = ORGANS) -> float:
    """Share of queries with at least one labelled organ among their ``k`` best-ranked organs.

    Args:
        scores: ``(Q, K)`` organ scores, higher is more relevant.
        labels: ``(Q, K)`` binary matrix or, per query, a sequence of organ names.
        k: how many top-ranked organs count, ``1 <= k <= K``.
        organs: organ names in column order.

    Returns:
        Rank-k in ``[0, 1]``.
    """
    scores, labels, organs = _inputs(scores, labels, organs)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(organs):
        raise ValueError(f"k must be an integer in [1, {len(organs)}]; got {k!r}.")
    top = descending_order(scores, axis=1)[:, :k]
    return float(np.take_along_axis(labels, top, axis=1).any(axis=1).mean())


def classwise_average_precision(scores: Any, labels: Any, organs: Sequence[str] = ORGANS) -> dict[str, float | None]:
    """AP of each organ when the queries are ranked by that organ's score (ties: earlier query first).

    Args:
        scores: ``(Q, K)`` organ scores.
        labels: ``(Q, K)`` binary matrix or, per query, a sequence of organ names.
        organs: organ names in column order.

    Returns:
        organ -> AP; ``None`` for an organ that no query is labelled with (its AP is undefined).
    """
    scores, labels, organs = _inputs(scores, labels, organs)
    order = descending_order(scores.T, axis=1)
    ap = _average_precision(np.take_along_axis(labels.T, order, axis=1))
    return {organ: None if np.isnan(value) else float(value) for organ, value in zip(organs, ap)}


def classwise_map(scores: Any, labels: Any, organs: Sequence[str] = ORGANS) -> float:
    """Class-wise mAP: mean of :func:`classwise_average_precision` over the organs that have a labelled query.

    Organs without any labelled query have no AP and are left out of the mean rather than counted as 0 or 1.

    Args:
        scores: ``(Q, K)`` organ scores.
        labels: ``(Q, K)`` binary matrix or, per query, a sequence of organ names.
        organs: organ names in column order.

    Returns:
        Class-wise mAP in ``[0, 1]``.
    """
    return _mean_defined(classwise_average_precision(scores, labels, organs))


def _mean_defined(per_organ: dict[str, float | None]) -> float:
    defined = [value for value in per_organ.values() if value is not None]
    if not defined:
        raise ValueError("no organ has a labelled query; class-wise mAP is undefined.")
    return float(np.mean(defined))


def querywise_average_precision(scores: Any, labels: Any, organs: Sequence[str] = ORGANS) -> np.ndarray:
    """AP of each query's organ ranking (the order of :func:`rank_organs`).

    Args:
        scores: ``(Q, K)`` organ scores.
        labels: ``(Q, K)`` binary matrix or, per query, a sequence of organ names.
        organs: organ names in column order.

    Returns:
        ``(Q,)`` float array of APs.
    """
    scores, labels, _ = _inputs(scores, labels, organs)
    order = descending_order(scores, axis=1)
    return _average_precision(np.take_along_axis(labels, order, axis=1))


def querywise_map(scores: Any, labels: Any, organs: Sequence[str] = ORGANS) -> float:
    """Query-wise mAP: mean of :func:`querywise_average_precision` over the queries.

    Args:
        scores: ``(Q, K)`` organ scores.
        labels: ``(Q, K)`` binary matrix or, per query, a sequence of organ names.
        organs: organ names in column order.

    Returns:
        Query-wise mAP in ``[0, 1]``.
    """
    return float(querywise_average_precision(scores, labels, organs).mean())


def retrieval_report(
    scores: Any, labels: Any, organs: Sequence[str] = ORGANS, ks: Sequence[int] = (1, 2, 3)
) -> dict[str, Any]:
    """All retrieval metrics of one set of test queries, as fractions in ``[0, 1]``.

    Args:
        scores: ``(Q, K)`` organ scores.
        labels: ``(Q, K)`` binary matrix or, per query, a sequence of organ names.
        organs: organ names in column order.
        ks: the ``k`` of each reported Rank-k.

    Returns:
        ``{"Rank-k": ... for k in ks, "mAP (class-wise)": ..., "mAP (query-wise)": ..., "AP per organ":
        {organ: AP or None}, "queries": Q}``; organs without a labelled query have AP ``None`` and are left out of
        the class-wise mAP.
    """
    scores, labels, organs = _inputs(scores, labels, organs)
    per_organ = classwise_average_precision(scores, labels, organs)
    report: dict[str, Any] = {f"Rank-{k}": rank_k(scores, labels, k, organs) for k in ks}
    report["mAP (class-wise)"] = _mean_defined(per_organ)
    report["mAP (query-wise)"] = querywise_map(scores, labels, organs)
    report["AP per organ"] = per_organ
    report["queries"] = int(scores.shape[0])
    return report


def ood_auroc(in_domain_scores: Any, ood_scores: Any) -> float:
    """AUROC of the maximum organ score separating abdominal (positive) from non-abdominal queries.

    Mann-Whitney form: the share of (in-domain, out-of-domain) pairs where the in-domain score is higher, a tie
    counting 1/2.

    Args:
        in_domain_scores: ``(N,)`` maximum organ scores of abdominal queries.
        ood_scores: ``(M,)`` maximum organ scores of non-abdominal queries.

    Returns:
        AUROC in ``[0, 1]``; 0.5 when the two sets cannot be told apart.
    """
    inside = check_score_vector(in_domain_scores, "in_domain_scores")
    outside = np.sort(check_score_vector(ood_scores, "ood_scores"))
    below = np.searchsorted(outside, inside, side="left")
    ties = np.searchsorted(outside, inside, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (inside.size * outside.size))

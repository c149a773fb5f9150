# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Thresholds that tell abdominal from non-abdominal queries: calibrated when the text side is finalised, scored
by the evaluation. Kept apart from the metrics so that training code never imports the evaluation package."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_score_vector", "calibrate_threshold", "threshold_operating_point"]


def check_score_vector(values: Any, name: str) -> np.ndarray:
    """``values`` as a finite, non-empty 1-D float array; the error names the argument."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of maximum organ scores; got shape {values.shape}.")
    if values.size == 0:
        raise ValueError(f"{name} is empty.")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return values


def threshold_operating_point(in_scores: Any, ood_scores: Any, threshold: float) -> dict[str, float]:
    """In-domain recall and out-of-domain rejection of a threshold on the maximum organ score.

    A query is accepted as abdominal when its maximum score is ``>= threshold``.

    Args:
        in_scores: ``(N,)`` maximum organ scores of abdominal queries.
        ood_scores: ``(M,)`` maximum organ scores of non-abdominal queries.
        threshold: the threshold.

    Returns:
        ``{"threshold", "in_domain_recall", "ood_rejection"}``, the last two as fractions in ``[0, 1]``.
    """
    inside = check_score_vector(in_scores, "in_scores")
    outside = check_score_vector(ood_scores, "ood_scores")
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold is NaN.")
    return {
        "threshold": threshold,
        "in_domain_recall": float(np.mean(inside >= threshold)),
        "ood_rejection": float(np.mean(outside < threshold)),
    }


def calibrate_threshold(in_scores: Any, ood_scores: Any, min_in_domain_recall: float | None = None) -> float:
    """Threshold on the maximum organ score that separates abdominal from non-abdominal queries.

    Candidates are the smallest observed score (accept everything) and the midpoints between consecutive distinct
    observed scores of both sets, so a chosen threshold never sits exactly on a calibration score.

    Args:
        in_scores: ``(N,)`` maximum organ scores of abdominal queries.
        ood_scores: ``(M,)`` maximum organ scores of non-abdominal queries.
        min_in_domain_recall: if given, in ``(0, 1]``: the largest candidate whose in-domain recall is at least
            this; if ``None``: the candidate maximising Youden's J (recall + rejection - 1), the smallest on ties.

    Returns:
        The threshold (accept a query when its maximum score is ``>= threshold``).
    """
    inside = np.sort(check_score_vector(in_scores, "in_scores"))
    outside = np.sort(check_score_vector(ood_scores, "ood_scores"))
    values = np.unique(np.concatenate([inside, outside]))
    candidates = np.concatenate([values[:1], values[:-1] + (values[1:] - values[:-1]) / 2])
    accepted = inside.size - np.searchsorted(inside, candidates, side="left")
    rejected = np.searchsorted(outside, candidates, side="left")
    if min_in_domain_recall is None:
        youden = accepted * outside.size + rejected * inside.size  # (J + 1) * N * M, exact in integers
        return float(candidates[int(np.argmax(youden))])
    recall = float(min_in_domain_recall)
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"min_in_domain_recall must be in (0, 1]; got {min_in_domain_recall!r}.")
    keeps = np.nonzero(accepted / inside.size >= recall)[0]
    return float(candidates[keeps[-1]])

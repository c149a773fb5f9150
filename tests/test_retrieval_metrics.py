# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Retrieval and out-of-domain metrics on small cases worked out by hand, plus a cross-check with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from medsora.evaluation.metrics import (
    classwise_average_precision,
    classwise_map,
    label_matrix,
    ood_auroc,
    querywise_average_precision,
    querywise_map,
    rank_k,
    retrieval_report,
    threshold_operating_point,
)
from medsora.organs import ORGANS, rank_organs
from medsora.thresholds import calibrate_threshold

# Three queries over the seven organs (liver, pancreas, kidney, gallbladder, spleen, stomach, adrenal_gland).
SCORES = np.array(
    [
        [0.5, 0.9, 0.5, 0.9, 0.1, 0.5, 0.9],  # ties: 0.9 x3, 0.5 x3
        [0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2],  # all tied: canonical order
    ]
)
LABELS = [["kidney", "adrenal_gland"], ["liver"], ["stomach"]]


def test_organ_order_and_label_matrix():
    assert ORGANS == ("liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland")
    matrix = label_matrix(LABELS)
    assert matrix.dtype == bool and matrix.shape == (3, 7)
    assert matrix.sum() == 4 and matrix[0, 2] and matrix[0, 6] and matrix[1, 0] and matrix[2, 5]
    assert label_matrix([["b"], ["a", "b"]], organs=("a", "b")).tolist() == [[False, True], [True, True]]


def test_rank_organs_breaks_ties_by_canonical_order():
    # 0.9: pancreas, gallbladder, adrenal_gland (canonical order); 0.5: liver, kidney, stomach; then spleen.
    assert rank_organs(SCORES[0]) == [
        "pancreas",
        "gallbladder",
        "adrenal_gland",
        "liver",
        "kidney",
        "stomach",
        "spleen",
    ]
    assert rank_organs(SCORES[2]) == list(ORGANS)
    assert rank_organs([1, 2, 2], organs=("a", "b", "c")) == ["b", "c", "a"]


def test_rank_k_with_ties_and_multi_label_queries():
    # Query 0 ranks pancreas, gallbladder, adrenal_gland, liver, kidney, ...: its first label (adrenal_gland) is 3rd.
    # Query 1: liver is 1st. Query 2 (all tied): stomach is 6th.
    # Rank-1 = Rank-2 = 1/3 (query 1 only); Rank-3 = 2/3 (queries 0 and 1); Rank-6 = 3/3.
    assert rank_k(SCORES, LABELS, 1) == pytest.approx(1 / 3)
    assert rank_k(SCORES, LABELS, 2) == pytest.approx(1 / 3)
    assert rank_k(SCORES, LABELS, 3) == pytest.approx(2 / 3)
    assert rank_k(SCORES, LABELS, 5) == pytest.approx(2 / 3)
    assert rank_k(SCORES, LABELS, 6) == 1.0
    # binary matrix labels give the same numbers as organ names
    assert rank_k(SCORES, label_matrix(LABELS).astype(int), 3) == pytest.approx(2 / 3)


def test_querywise_ap_two_positives_and_ties():
    # Query 0: positives kidney (rank 5) and adrenal_gland (rank 3): AP = (1/3 + 2/5) / 2 = 11/30.
    # Query 1: liver at rank 1: AP = 1. Query 2: stomach at rank 6 of the all-tied row: AP = 1/6.
    # Query-wise mAP = (11/30 + 30/30 + 5/30) / 3 = 46/90 = 23/45.
    np.testing.assert_allclose(querywise_average_precision(SCORES, LABELS), [11 / 30, 1.0, 1 / 6])
    assert querywise_map(SCORES, LABELS) == pytest.approx(23 / 45)


def test_classwise_ap_organ_without_positives_is_none_and_excluded():
    # liver column (0.5, 0.8, 0.2), positive query 1 ranked 1st: AP 1.
    # kidney column (0.5, 0.1, 0.2), positive query 0 ranked 1st: AP 1.
    # stomach column (0.5, 0.1, 0.2), positive query 2 ranked 2nd: AP 1/2.
    # adrenal_gland column (0.9, 0.1, 0.2), positive query 0 ranked 1st: AP 1.
    # pancreas, gallbladder, spleen: no positive query -> None.
    # Class-wise mAP = (1 + 1 + 1/2 + 1) / 4 = 0.875 (not (3.5 + 0) / 7 = 0.5, nor (3.5 + 3) / 7).
    per_organ = classwise_average_precision(SCORES, LABELS)
    assert per_organ == {
        "liver": 1.0,
        "pancreas": None,
        "kidney": 1.0,
        "gallbladder": None,
        "spleen": None,
        "stomach": 0.5,
        "adrenal_gland": 1.0,
    }
    assert classwise_map(SCORES, LABELS) == pytest.approx(0.875)


def test_classwise_ap_breaks_query_ties_by_query_index():
    organs = ("liver", "spleen")
    scores = np.array([[0.5, 0.3], [0.5, 0.3], [0.5, 0.3], [0.9, 0.3]])
    labels = [["spleen"], ["spleen"], ["liver"], ["liver"]]
    # liver: queries ranked 3, 0, 1, 2 (ties by index), positives 3 and 2 at ranks 1 and 4: AP = (1/1 + 2/4) / 2.
    # spleen: all tied, ranked 0, 1, 2, 3, positives 0 and 1 at ranks 1 and 2: AP = 1.
    assert classwise_average_precision(scores, labels, organs) == {"liver": 0.75, "spleen": 1.0}
    assert classwise_map(scores, labels, organs) == pytest.approx(0.875)
    # the same tie with the positives first in index order is a perfect ranking
    assert classwise_average_precision(scores[:, :1], [["liver"]] * 4, ("liver",)) == {"liver": 1.0}
    assert classwise_average_precision(np.full((3, 2), 0.5), [["spleen"], ["spleen"], ["liver"]], organs) == {
        "liver": pytest.approx(1 / 3),
        "spleen": 1.0,
    }


def test_perfect_and_worst_rankings():
    eye = np.eye(7)
    labels = eye.astype(bool)  # query i is labelled with organ i
    perfect = retrieval_report(eye, labels)
    assert perfect["Rank-1"] == perfect["mAP (class-wise)"] == perfect["mAP (query-wise)"] == 1.0
    # Worst: each query's organ scores -1, the rest 0, so it is ranked last among 7 organs and, in its organ's
    # column, last among 7 queries: AP = 1/7 both ways, Rank-k = 0 for k < 7.
    worst = retrieval_report(-eye, labels, ks=(1, 3, 6, 7))
    assert worst["Rank-1"] == worst["Rank-3"] == worst["Rank-6"] == 0.0 and worst["Rank-7"] == 1.0
    assert worst["mAP (query-wise)"] == pytest.approx(1 / 7)
    assert worst["mAP (class-wise)"] == pytest.approx(1 / 7)
    # Two positives ranked 6th and 7th of 7: AP = (1/6 + 2/7) / 2 = 19/84.
    row = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    assert querywise_map(row, [["stomach", "adrenal_gland"]]) == pytest.approx(19 / 84)


def test_retrieval_report_keys_and_values():
    report = retrieval_report(SCORES, LABELS)
    assert list(report) == [
        "Rank-1",
        "Rank-2",
        "Rank-3",
        "mAP (class-wise)",
        "mAP (query-wise)",
        "AP per organ",
        "queries",
    ]
    assert report["Rank-1"] == pytest.approx(1 / 3) and report["Rank-3"] == pytest.approx(2 / 3)
    assert report["mAP (class-wise)"] == pytest.approx(0.875)
    assert report["mAP (query-wise)"] == pytest.approx(23 / 45)
    assert report["AP per organ"]["pancreas"] is None
    assert report["queries"] == 3
    # organs passed positionally, labels as a bool matrix (as the evaluation workflow calls it)
    assert retrieval_report(SCORES, label_matrix(LABELS), ORGANS) == report


def test_ood_auroc_ties_count_half():
    assert ood_auroc([0.3, 0.3], [0.3, 0.3, 0.3]) == 0.5
    # pairs (in, out): (0.9, 0.5) 1, (0.9, 0.1) 1, (0.5, 0.5) 1/2, (0.5, 0.1) 1 -> 3.5 / 4
    assert ood_auroc([0.9, 0.5], [0.5, 0.1]) == pytest.approx(0.875)
    assert ood_auroc([0.8, 0.9], [0.1, 0.2]) == 1.0
    assert ood_auroc([0.1, 0.2], [0.8, 0.9]) == 0.0


def test_threshold_operating_point():
    point = threshold_operating_point([0.2, 0.5, 0.7, 0.9], [0.1, 0.4, 0.5, 0.8], 0.5)
    # in >= 0.5: 0.5, 0.7, 0.9 -> 3/4; ood < 0.5: 0.1, 0.4 -> 2/4 (0.5 itself is accepted)
    assert point == {"threshold": 0.5, "in_domain_recall": 0.75, "ood_rejection": 0.5}


def test_calibrate_threshold_separable():
    # candidates: 0.1 (minimum), midpoints 0.2, 0.45, 0.7; Youden J: 0, 0.5, 1, 0.5 -> 0.45
    inside, outside = [0.6, 0.8], [0.1, 0.3]
    assert calibrate_threshold(inside, outside) == pytest.approx(0.45)
    # largest candidate keeping recall >= 1 is 0.45; recall >= 0.5 allows 0.7
    assert calibrate_threshold(inside, outside, min_in_domain_recall=1.0) == pytest.approx(0.45)
    assert calibrate_threshold(inside, outside, min_in_domain_recall=0.5) == pytest.approx(0.7)


def test_calibrate_threshold_non_separable():
    inside, outside = [0.2, 0.5, 0.7, 0.9], [0.1, 0.4, 0.6, 0.8]
    # candidates  0.1  0.15 0.3  0.45 0.55 0.65 0.75 0.85
    # accepted in  4    4    3    3    2    2    1    1
    # rejected ood 0    1    1    2    2    3    3    4
    # 4 * J        0    1    0    1    0    1    0    1   -> J = 1/4 at 0.15, 0.45, 0.65, 0.85: smallest, 0.15
    assert calibrate_threshold(inside, outside) == pytest.approx(0.15)
    assert calibrate_threshold(inside, outside, min_in_domain_recall=1.0) == pytest.approx(0.15)
    assert calibrate_threshold(inside, outside, min_in_domain_recall=0.75) == pytest.approx(0.45)
    assert calibrate_threshold(inside, outside, min_in_domain_recall=0.6) == pytest.approx(0.45)
    assert calibrate_threshold(inside, outside, min_in_domain_recall=0.5) == pytest.approx(0.65)
    threshold = calibrate_threshold(inside, outside, min_in_domain_recall=0.75)
    assert threshold_operating_point(inside, outside, threshold)["in_domain_recall"] == 0.75


def test_retrieval_errors():
    with pytest.raises(ValueError, match=r"query 1: unknown organ 'heart'"):
        label_matrix([["liver"], ["heart"]])
    with pytest.raises(ValueError, match=r"query 0: .*string 'liver'"):
        label_matrix(["liver"])
    with pytest.raises(ValueError, match=r"query 2 has no labelled organ"):
        rank_k(SCORES, [["liver"], ["liver"], []], 1)
    with pytest.raises(ValueError, match=r"query 1 has no labelled organ"):
        classwise_map(SCORES, np.array([[1] + [0] * 6, [0] * 7, [1] + [0] * 6]))
    nan_scores = SCORES.copy()
    nan_scores[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN \(first at query 1\)"):
        retrieval_report(nan_scores, LABELS)
    with pytest.raises(ValueError, match="NaN"):
        rank_organs([0.1, np.nan], organs=("a", "b"))
    with pytest.raises(ValueError, match=r"shape \(queries, 7\)"):
        retrieval_report(SCORES[:, :6], LABELS)
    with pytest.raises(ValueError, match=r"labels have shape \(2, 7\) but scores have shape \(3, 7\)"):
        querywise_map(SCORES, LABELS[:2])
    with pytest.raises(ValueError, match="binary"):
        rank_k(SCORES, np.full((3, 7), 0.5), 1)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 7\]"):
        rank_k(SCORES, LABELS, 8)
    with pytest.raises(ValueError, match="no queries"):
        retrieval_report(np.zeros((0, 7)), [])
    with pytest.raises(ValueError, match="distinct"):
        rank_organs([1, 2], organs=("a", "a"))


def test_ood_errors():
    with pytest.raises(ValueError, match="ood_scores is empty"):
        ood_auroc([0.5], [])
    with pytest.raises(ValueError, match="in_scores contains NaN"):
        calibrate_threshold([0.5, np.nan], [0.1])
    with pytest.raises(ValueError, match="in_domain_scores must be a 1-D array"):
        ood_auroc(np.ones((2, 7)), [0.1])
    with pytest.raises(ValueError, match="infinite"):
        threshold_operating_point([0.5], [np.inf], 0.5)
    with pytest.raises(ValueError, match="threshold is NaN"):
        threshold_operating_point([0.5], [0.1], float("nan"))
    with pytest.raises(ValueError, match=r"min_in_domain_recall must be in \(0, 1\]"):
        calibrate_threshold([0.5], [0.1], min_in_domain_recall=0.0)


def test_matches_sklearn_without_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.random((60, 7))
    assert np.unique(scores).size == scores.size
    labels = rng.random((60, 7)) < 0.3
    labels[:, 4] = False  # spleen has no positive query
    labels[np.arange(60), rng.choice([0, 1, 2, 3, 5, 6], 60)] = True  # every query has a label
    per_organ = classwise_average_precision(scores, labels)
    assert per_organ["spleen"] is None
    for j, organ in enumerate(ORGANS):
        if organ != "spleen":
            assert per_organ[organ] == pytest.approx(metrics.average_precision_score(labels[:, j], scores[:, j]))
    expected = [metrics.average_precision_score(y, s) for y, s in zip(labels, scores)]
    np.testing.assert_allclose(querywise_average_precision(scores, labels), expected)
    # AUROC also agrees with ties, which roc_auc_score counts as 1/2 too
    inside, outside = np.round(rng.random(40), 1), np.round(rng.random(30) * 0.8, 1)
    y = np.r_[np.ones(40), np.zeros(30)]
    assert ood_auroc(inside, outside) == pytest.approx(metrics.roc_auc_score(y, np.r_[inside, outside]))

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The fused scorer's parameters, chosen on the corpus's validation split.

The validation split holds whole source groups the index and the text stages never saw, with the held-out
out-of-domain texts beside them. Every combination of the grid is scored there; the one with the best mean of
Rank-1, class-wise mAP and OOD AUROC wins (the first in grid order on ties). For each ``(neighbours, temperature,
lexical_share)`` the ``in_domain`` threshold on the fused ``P(abdominal)`` maximises Youden's J on the same texts, as
the paper scorer's threshold does.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from medsora.evaluation.metrics import ood_auroc, retrieval_report
from medsora.query.fusion import FusionParameters, fused_scores, hybrid_votes, save_fusion
from medsora.text.alignment import TextImageAligner
from medsora.text.retrieval import TextIndex
from medsora.thresholds import calibrate_threshold

__all__ = ["GRID_KEYS", "choose_fusion"]

GRID_KEYS = ("neighbours", "temperature", "lexical_share", "retrieval_weight", "relative_share")


def _objective(scores: np.ndarray, labels: np.ndarray, organs: Sequence[str], inside: int) -> dict[str, float]:
    report = retrieval_report(scores[:inside], labels, organs)
    maximum = scores.max(axis=1)
    auroc = ood_auroc(maximum[:inside], maximum[inside:])
    metrics = {"Rank-1": report["Rank-1"], "mAP (class-wise)": report["mAP (class-wise)"], "OOD AUROC": auroc}
    return {**metrics, "objective": float(np.mean(list(metrics.values())))}


@torch.no_grad()
def choose_fusion(
    aligner: TextImageAligner,
    index: TextIndex,
    corpus: Any,
    grid: Mapping[str, Sequence[float]],
    learned_temperature: float = 0.1,
    output_file: str | None = None,
) -> FusionParameters:
    """Score every combination of ``grid`` on the validation split and return (and save) the best.

    Args:
        aligner: the trained query model (its avgSim against the reference organs and its domain gate).
        index: the text index of the corpus's training split.
        corpus: the :class:`~medsora.text.corpus.SymptomCorpus` (its ``validation`` and ``ood_validation`` splits).
        grid: candidate values of each of :data:`GRID_KEYS`.
        learned_temperature: softmax temperature of the learned avgSim (the alignment's InfoNCE temperature).
        output_file: ``fusion.json`` to write, with the chosen parameters and their validation metrics.
    """
    missing = [key for key in GRID_KEYS if not grid.get(key)]
    if missing or set(grid) - set(GRID_KEYS):
        raise ValueError(f"fusion grid must give candidate lists for exactly {list(GRID_KEYS)}; got {sorted(grid)}.")
    inside, outside = len(corpus.records["validation"]), len(corpus.records["ood_validation"])
    if not inside or not outside:
        raise ValueError(
            f"the corpus's validation split holds {inside} abdominal and {outside} non-abdominal texts; the fusion "
            "is chosen on both: raise the corpus's validation_fraction or add training texts."
        )
    embeddings = torch.cat([corpus.embeddings("validation"), corpus.embeddings("ood_validation")])
    texts = corpus.texts("validation") + corpus.texts("ood_validation")
    labels = corpus.label_matrix("validation").numpy().astype(bool)
    avg_sim = aligner.avg_sim(embeddings)
    gate = aligner.abdominal_probability(embeddings)[:, 0]
    dense = index.similarities(embeddings)
    lexical = index.lexical.similarities(texts) if any(float(v) > 0 for v in grid["lexical_share"]) else None
    best: tuple[float, FusionParameters, dict[str, float]] | None = None
    for neighbours, temperature, lexical_share in itertools.product(
        grid["neighbours"], grid["temperature"], grid["lexical_share"]
    ):
        votes, retrieval_abdominal = hybrid_votes(
            index, dense, lexical, int(neighbours), float(temperature), float(lexical_share)
        )
        abdominal = ((gate + retrieval_abdominal) / 2.0).numpy()
        threshold = calibrate_threshold(abdominal[:inside], abdominal[inside:])
        for weight, share in itertools.product(grid["retrieval_weight"], grid["relative_share"]):
            parameters = FusionParameters(
                int(neighbours),
                float(temperature),
                float(weight),
                learned_temperature,
                float(share),
                lexical_share=float(lexical_share),
            )
            scores, _ = fused_scores(parameters, votes, retrieval_abdominal, avg_sim, gate)
            metrics = _objective(scores.numpy(), labels, corpus.organs, inside)
            if best is None or metrics["objective"] > best[0]:
                chosen = FusionParameters(**{**asdict(parameters), "threshold": float(threshold)})
                best = (metrics["objective"], chosen, metrics)
    assert best is not None
    _, parameters, metrics = best
    if output_file:
        report = {
            "split": "validation",
            "queries": {"in_domain": inside, "out_of_domain": outside},
            "grid": {key: list(grid[key]) for key in GRID_KEYS},
            "validation": metrics,
            "encoder": index.encoder_id,
        }
        save_fusion(parameters, output_file, report)
    return parameters

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Symptom-to-organ retrieval scores of the trained query model next to the zero-shot baseline.

The baseline is the same frozen encoder comparing a query with the organ's name: what the encoder knows without
any of Med-SORA's training. Out-of-domain rejection is scored on the corpus's held-out non-abdominal texts: the AUROC
of the maximum organ score (the project's metric) and of the gate's ``P(abdominal)``, and the operating point of the
stored threshold. Given the text index and the fusion, the fused scorer of ``query`` and the retrieval votes alone
are scored too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from medsora.atomic_io import write_json_atomic
from medsora.evaluation.metrics import ood_auroc, retrieval_report, threshold_operating_point
from medsora.query.fusion import FusionParameters, fuse
from medsora.text.alignment import TextImageAligner
from medsora.text.corpus import SymptomCorpus
from medsora.text.retrieval import TextIndex

__all__ = ["metrics_summary", "organ_name_scores", "text_retrieval_metrics"]

#: the scorers of the summary: name in the summary, its report and its out-of-domain report in the metrics
SUMMARY_ROWS = (
    ("fused (query's default)", "Med-SORA fused (retrieval + learned)", "out-of-domain, fused"),
    ("paper's scorer", "Med-SORA", "out-of-domain"),
    ("zero-shot (organ name)", "zero-shot (organ name)", None),
)


def organ_name_scores(encoder: Any, embeddings: torch.Tensor, organs: Sequence[str]) -> np.ndarray:
    """Zero-shot scores ``(cos(query, organ name) + 1) / 2``, ``(Q, K)``."""
    names = torch.as_tensor(encoder.encode([organ.replace("_", " ") for organ in organs])).float()
    return ((F.normalize(embeddings, dim=-1) @ F.normalize(names, dim=-1).T + 1.0) / 2.0).numpy()


def _report(scores: np.ndarray, labels: torch.Tensor, organs: Sequence[str]) -> dict[str, Any]:
    return retrieval_report(scores, labels.numpy().astype(bool), organs)


def _fused_reports(
    aligner: TextImageAligner,
    corpus: SymptomCorpus,
    index: TextIndex,
    fusion: FusionParameters,
    split: str,
    ood_split: str,
) -> dict[str, Any]:
    scores, abdominal_in, votes = fuse(fusion, index, aligner, corpus.embeddings(split), corpus.texts(split))
    ood_scores, abdominal_out, _ = fuse(fusion, index, aligner, corpus.embeddings(ood_split), corpus.texts(ood_split))
    labels = corpus.label_matrix(split)
    return {
        "Med-SORA fused (retrieval + learned)": _report(scores.numpy(), labels, corpus.organs),
        "retrieval votes alone": _report(votes.numpy(), labels, corpus.organs),
        "out-of-domain, fused": {
            "queries": len(ood_scores),
            "AUROC": ood_auroc(scores.max(dim=1).values.numpy(), ood_scores.max(dim=1).values.numpy()),
            "AUROC of P(abdominal)": ood_auroc(abdominal_in.numpy(), abdominal_out.numpy()),
            **threshold_operating_point(abdominal_in.numpy(), abdominal_out.numpy(), fusion.threshold),
        },
    }


def text_retrieval_metrics(
    aligner: TextImageAligner,
    corpus: SymptomCorpus,
    output_file: str | None = None,
    splits: Sequence[str] = ("test",),
    index: TextIndex | None = None,
    fusion: FusionParameters | None = None,
) -> dict[str, Any]:
    """Rank-k, class- and query-wise mAP of Med-SORA, its text head alone and the zero-shot baseline, plus OOD.

    Args:
        aligner: the trained query model (reference organ features, threshold on ``P(abdominal)``).
        corpus: the symptom corpus with its encoder.
        output_file: JSON file to write, if given.
        splits: in-domain splits to score (``"validation"``, ``"test"``); the matching OOD split is scored with each.
        index, fusion: the text index and the fused scorer's parameters; given both, the fused scorer is scored too.

    Returns:
        ``{split: {"Med-SORA": report, "text head only": report, "zero-shot (organ name)": report,
        "out-of-domain": {...}}}`` plus the settings; with ``index`` and ``fusion`` also
        ``"Med-SORA fused (retrieval + learned)"``, ``"retrieval votes alone"`` and ``"out-of-domain, fused"``.
    """
    organs = corpus.organs
    ood_split = {"validation": "ood_validation", "test": "ood_test"}
    results: dict[str, Any] = {"encoder": corpus.encoder.model_id, "threshold": float(aligner.threshold)}
    for split in splits:
        embeddings, labels = corpus.embeddings(split), corpus.label_matrix(split)
        ood_embeddings = corpus.embeddings(ood_split[split])
        medsora = aligner.organ_scores(embeddings).numpy()
        inside, outside = medsora.max(axis=1), aligner.organ_scores(ood_embeddings).max(dim=1).values.numpy()
        gate_in = aligner.abdominal_probability(embeddings)[:, 0].numpy()
        gate_out = aligner.abdominal_probability(ood_embeddings)[:, 0].numpy()
        results[split] = {
            "queries": len(embeddings),
            "Med-SORA": _report(medsora, labels, organs),
            "text head only": _report(aligner.text_head_scores(embeddings).numpy(), labels, organs),
            "zero-shot (organ name)": _report(organ_name_scores(corpus.encoder, embeddings, organs), labels, organs),
            "out-of-domain": {
                "queries": len(outside),
                "AUROC": ood_auroc(inside, outside),
                "AUROC of P(abdominal)": ood_auroc(gate_in, gate_out),
                **threshold_operating_point(gate_in, gate_out, float(aligner.threshold)),
            },
        }
        if index is not None and fusion is not None:
            results[split].update(_fused_reports(aligner, corpus, index, fusion, split, ood_split[split]))
    if output_file:
        write_json_atomic(output_file, results)
    return results


def metrics_summary(metrics: Mapping[str, Any], output_file: str | None = None, split: str = "test") -> str:
    """A few lines for the terminal: each scorer's Rank-1, Rank-3, class-wise mAP and out-of-domain AUROC on one
    split of :func:`text_retrieval_metrics`; the rest (every split, per-organ AP, operating points) is in
    ``output_file``, which the last line names."""
    if split not in metrics:
        raise KeyError(f"the text metrics hold no {split!r} split; give one of the splits they were computed on.")
    scored = metrics[split]
    lines = [f"text side on the corpus's {split} split ({scored['queries']} queries):"]
    for name, key, ood in SUMMARY_ROWS:
        if key not in scored:
            continue
        report = scored[key]
        row = f"  {name:<24} Rank-1 {report['Rank-1']:.3f}  Rank-3 {report['Rank-3']:.3f}  "
        row += f"class-wise mAP {report['mAP (class-wise)']:.3f}"
        if ood is not None and ood in scored:
            row += f"  out-of-domain AUROC {scored[ood]['AUROC']:.3f}"
        lines.append(row)
    if output_file:
        lines.append(f"all text metrics (every split, per-organ AP, out-of-domain operating points): {output_file}")
    return "\n".join(lines)

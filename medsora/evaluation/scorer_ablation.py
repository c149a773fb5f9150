# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Why the learned pipeline loses to retrieval: its parts taken away or replaced one at a time, on labelled queries.

Every row scores the same queries with the same trained files; only the scorer changes. Rows that rank with a
learned part keep the domain gate's weighting, so that their OOD AUROC is comparable with the paper's scorer:

* the paper's scorer (``W_align`` over the text MLP, the trained image projection, the phantom's reference organ
  features, the domain gate), and without the gate;
* the text head alone (the soft-label head on the text MLP, no image);
* ``W_align`` with the image projection removed (the frozen image network's own reference features);
* ``W_align`` against text prototypes (each organ's mean projected training text) instead of the phantom's features;
* the paper's scorer with per-organ calibration (each organ's mean score over the validation texts subtracted);
* nearest neighbours (the mean of the three best cosine similarities per organ over the training texts);
* the retrieval votes alone, by embedding only and hybrid (by embedding and by character n-grams), the fused scorer
  without the character n-grams' votes, and the fused scorer itself (``query``'s default).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from medsora.atomic_io import write_json_atomic, write_text_atomic
from medsora.evaluation.metrics import ood_auroc, retrieval_report
from medsora.query.fusion import FusionParameters, fuse
from medsora.text.alignment import TextImageAligner
from medsora.text.corpus import SymptomCorpus, read_corpus
from medsora.text.retrieval import TextIndex

__all__ = ["ablation_scorers", "scorer_ablation"]

Scorer = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


def _organ_means(embeddings: torch.Tensor, organs: torch.Tensor, num_organs: int) -> torch.Tensor:
    return F.normalize(torch.stack([embeddings[organs == k].mean(dim=0) for k in range(num_organs)]), dim=-1)


@torch.no_grad()
def ablation_scorers(
    aligner: TextImageAligner, corpus: SymptomCorpus, index: TextIndex, fusion: FusionParameters
) -> dict[str, Scorer]:
    """Row name -> ``(embeddings (Q, dim), texts) -> organ scores (Q, K)``, in the order of the module's docstring."""
    train, organs = corpus.embeddings("train"), corpus.organ_indices("train")
    num_organs = len(corpus.organs)
    identity_reference = F.normalize(aligner.reference, dim=-1).mean(dim=-2)
    prototypes = _organ_means(aligner.project(train), organs, num_organs)
    offsets = aligner.organ_scores(corpus.embeddings("validation")).mean(dim=0)
    train_unit = F.normalize(train, dim=-1)
    dense_only = replace(fusion, lexical_share=0.0)

    def gated(relevance: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return relevance * aligner.domain_weight(embeddings)

    def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(embeddings, dim=-1) @ train_unit.T
        best = [
            similarity[:, organs == k].topk(min(3, int((organs == k).sum())), dim=1).values for k in range(num_organs)
        ]
        return torch.stack([values.mean(dim=1) for values in best], dim=1)

    return {
        "paper scorer (W_align, image projection, phantom organ features, gate)": lambda e, t: aligner.organ_scores(e),
        "paper scorer without the domain gate": lambda e, t: (aligner.avg_sim(e) + 1.0) / 2.0,
        "text head alone (no image)": lambda e, t: gated(aligner.text_head_scores(e), e),
        "W_align without the image projection": lambda e, t: gated(
            (aligner.project(e) @ identity_reference.T + 1) / 2, e
        ),
        "W_align against text prototypes instead of the phantom": lambda e, t: gated(
            (aligner.project(e) @ prototypes.T + 1) / 2, e
        ),
        "paper scorer, per-organ calibration": lambda e, t: aligner.organ_scores(e) - offsets,
        "nearest neighbours (mean of the 3 best cosines per organ)": lambda e, t: nearest_neighbours(e),
        "retrieval votes by embedding alone": lambda e, t: fuse(dense_only, index, aligner, e, t)[2],
        "retrieval votes alone": lambda e, t: fuse(fusion, index, aligner, e, t)[2],
        "fused scorer without the character n-grams": lambda e, t: fuse(dense_only, index, aligner, e, t)[0],
        "fused scorer (query's default)": lambda e, t: fuse(fusion, index, aligner, e, t)[0],
    }


def _table(rows: dict[str, dict[str, float]], queries: int, ood: int) -> str:
    lines = [
        f"{queries} abdominal and {ood} non-abdominal queries; percent.",
        "",
        "| scorer | Rank-1 | Rank-2 | Rank-3 | mAP (class-wise) | mAP (query-wise) | OOD AUROC |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = ("Rank-1", "Rank-2", "Rank-3", "mAP (class-wise)", "mAP (query-wise)", "OOD AUROC")
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[key]:.1f}" for key in keys) + " |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def scorer_ablation(
    aligner: TextImageAligner,
    corpus: SymptomCorpus,
    index: TextIndex,
    fusion: FusionParameters,
    queries_file: str,
    output_file: str | None = None,
) -> dict[str, Any]:
    """Score labelled queries (JSONL: ``text`` and ``labels``, empty for a non-abdominal text) with every row.

    Returns:
        ``{"queries_file", "encoder", "rows": {name: {"Rank-1", ..., "OOD AUROC"}}, "table": Markdown}``; with
        ``output_file`` written as JSON, and the table as Markdown next to it (``.md``).
    """
    records = read_corpus(queries_file, corpus.organs, "queries")
    inside = np.array([bool(r["labels"]) for r in records])
    if not inside.any() or inside.all():
        raise ValueError(f"{queries_file}: the ablation needs abdominal and non-abdominal queries (empty labels).")
    texts = [r["text"] for r in records]
    embeddings = torch.as_tensor(corpus.encoder.encode(texts)).float()
    labels = np.array([[organ in r["labels"] for organ in corpus.organs] for r in records])
    rows = {}
    for name, scorer in ablation_scorers(aligner, corpus, index, fusion).items():
        scores = scorer(embeddings, texts).numpy().astype(np.float64)
        report = retrieval_report(scores[inside], labels[inside], corpus.organs)
        maximum = scores.max(axis=1)
        rows[name] = {
            **{key: report[key] for key in ("Rank-1", "Rank-2", "Rank-3", "mAP (class-wise)", "mAP (query-wise)")},
            "OOD AUROC": ood_auroc(maximum[inside], maximum[~inside]),
        }
    table = _table(rows, int(inside.sum()), int((~inside).sum()))
    result = {"queries_file": queries_file, "encoder": corpus.encoder.model_id, "rows": rows, "table": table}
    if output_file:
        write_json_atomic(output_file, result)
        write_text_atomic(os.path.splitext(output_file)[0] + ".md", table)
    return result

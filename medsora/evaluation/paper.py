# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The ``evaluate`` workflow's tables and figures: the paper's evidence regenerated from this bundle.

``ExperimentGrid`` trains every row for every seed; this module scores what it trained on the corpus's test files
(the BM25 baseline needs no training) and, for every labelling, on a file of clinician-phrased queries (the way users
write, unlike the ontology-derived test split), summarises the seeds, draws the figures from the first seed's models
and writes ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medsora.atomic_io import write_json_atomic, write_text_atomic
from medsora.evaluation.bm25 import bm25_organ_scores
from medsora.evaluation.figures import (
    fusion_attention_figure,
    organ_correlation_heatmaps,
    query_organ_heatmaps,
    text_feature_map,
)
from medsora.evaluation.grid import Alignment, ExperimentGrid
from medsora.evaluation.metrics import retrieval_report
from medsora.evaluation.report import markdown_report, summarize, summarize_reports
from medsora.query import OrganQuery, run_query
from medsora.stages import load_weights
from medsora.text.corpus import read_corpus
from medsora.text.soft_labels import load_anchors, uses_anchors

__all__ = ["run_paper_evaluation"]

OOD_KEYS = ("AUROC", "AUROC of P(abdominal)", "threshold", "in_domain_recall", "ood_rejection")
OOD_SCALE = {
    "AUROC": 1.0,
    "AUROC of P(abdominal)": 1.0,
    "threshold": 1.0,
    "in_domain_recall": 100.0,
    "ood_rejection": 100.0,
}
MEDSORA_ROW = "Med-SORA (ours)"


def _bm25_report(grid: ExperimentGrid, seed: int) -> dict[str, Any]:
    """BM25 over the seed's training split, scored on the test queries."""
    corpus = grid.parser(
        Alignment(seed, grid.default.structure, grid.default.encoder, grid.default.labeling)
    ).get_parsed_content("corpus")
    scores = bm25_organ_scores(corpus.texts("train"), corpus.label_matrix("train").numpy(), corpus.texts("test"))
    return retrieval_report(scores, corpus.label_matrix("test").numpy().astype(bool), corpus.organs)


def _tables(
    grid: ExperimentGrid,
    results: Mapping[int, Any],
    bm25: Mapping[int, Any],
    paper: Mapping[str, Any],
    organs: Sequence[str],
) -> dict[str, Any]:
    seeds, d = grid.seeds, grid.default

    def test_reports(
        model: str, structure: str = d.structure, encoder: str = d.encoder, labeling: str = d.labeling
    ) -> list[dict]:
        return [results[s]["alignments"][Alignment(s, structure, encoder, labeling)]["test"][model] for s in seeds]

    labeling = {name: summarize_reports(test_reports("Med-SORA", labeling=name)) for name in grid.labelings}
    structure = {name: summarize_reports(test_reports("Med-SORA", structure=name)) for name in grid.image_structures}
    text_models: dict[str, Any] = {}
    for encoder in grid.text_encoders:
        text_models[f"{encoder}* (zero-shot: query vs. organ name)"] = summarize_reports(
            test_reports("zero-shot (organ name)", encoder=encoder)
        )
    text_models["BM25 over the training texts"] = summarize_reports([bm25[s] for s in seeds])
    for encoder in grid.text_encoders:
        text_models[f"{encoder}: text head alone (no image)"] = summarize_reports(
            test_reports("text head only", encoder=encoder)
        )
        text_models[MEDSORA_ROW if encoder == d.encoder else encoder] = summarize_reports(
            test_reports("Med-SORA", encoder=encoder)
        )
    ood = {}
    for encoder in grid.text_encoders:
        reports = test_reports("out-of-domain", encoder=encoder)
        ood[MEDSORA_ROW if encoder == d.encoder else encoder] = {
            key: summarize([r[key] for r in reports], OOD_SCALE[key]) for key in OOD_KEYS
        }
    image = {}
    for name in grid.image_structures:
        per_seed = [results[s]["image"][name] for s in seeds]
        image[name] = {
            "accuracy": summarize([m["accuracy"] for m in per_seed], 100.0),
            "recall_per_organ": {o: summarize([m["recall_per_organ"][o] for m in per_seed], 100.0) for o in organs},
        }
    return {
        "labeling": {
            "title": "Table 2: hard vs. soft labelling (%)",
            "rows": labeling,
            "paper": paper.get("table2"),
            "caption": f"Full model ({d.structure}, {d.encoder} encoder); only the text labels change.",
        },
        "structure": {
            "title": "Table 3: 2D / 3D image feature fusion (%)",
            "rows": structure,
            "paper": paper.get("table3"),
            "caption": f"Each image structure retrained, then aligned with the {d.encoder} text model "
            f"({d.labeling} labels).",
        },
        "text_models": {
            "title": "Table 4: text models and baselines (%)",
            "rows": text_models,
            "paper": paper.get("table4"),
            "caption": "`*`: zero-shot. An encoder row is that frozen encoder trained through every "
            f"Med-SORA text stage and aligned with the {d.structure} image network; "
            f"{MEDSORA_ROW} uses the {d.encoder} encoder. The paper's rows use encoders that "
            "are not shipped here; configure them under evaluation#text_encoders.",
        },
        "out_of_domain": ood,
        "image": image,
    }


def _load_aligner(grid: ExperimentGrid, alignment: Alignment):
    parser = grid.parser(alignment)
    path = os.path.join(grid.alignment_dir(alignment), "models", "alignment.pt")
    return parser, load_weights(parser.get_parsed_content("aligner_def"), path, "python -m monai.bundle run evaluate")


def _clinician_query_table(grid: ExperimentGrid, parser, path: str, organs: Sequence[str]) -> dict[str, Any]:
    """Med-SORA and its text head alone, for every Table 2 labelling, on the abdominal queries of ``path`` (encoded
    with the text encoder of ``parser``, the full model's config)."""
    d = grid.default
    records = [r for r in read_corpus(path, organs, "queries") if r["labels"]]
    labels = np.array([[organ in r["labels"] for organ in organs] for r in records])
    encoder = parser.get_parsed_content("text_encoder")
    embeddings = torch.as_tensor(encoder.encode([r["text"] for r in records]), dtype=torch.float32)
    reports: dict[str, list[dict]] = {}
    for name in grid.labelings:
        for seed in grid.seeds:
            aligner = _load_aligner(grid, Alignment(seed, d.structure, d.encoder, name))[1]
            for row, scores in (
                (f"Med-SORA, {name} labels", aligner.organ_scores(embeddings)),
                (f"text head alone, {name} labels", aligner.text_head_scores(embeddings)),
            ):
                reports.setdefault(row, []).append(retrieval_report(scores.numpy(), labels, organs))
    return {
        "title": "Clinician-phrased queries, per labelling (%)",
        "rows": {row: summarize_reports(per_seed) for row, per_seed in reports.items()},
        "paper": None,
        "caption": f"The {len(records)} abdominal queries of `{os.path.basename(path)}`, written the way clinicians "
        "write (abbreviations, eponymous signs, laboratory values); the test split is ontology-derived. "
        "They were written by the authors of the corpus's presentation table, so they are not an "
        f"independent test. {d.structure}, {d.encoder} encoder.",
    }


def _text_figures(grid: ExperimentGrid, seed: int, parser, full, figures_dir: str) -> dict[str, str]:
    """Figs. 5 and 6 from the seed's text model of every labelling, and the full model's (``full``) test scores."""
    d = grid.default
    models = {
        name: full if name == d.labeling else _load_aligner(grid, Alignment(seed, d.structure, d.encoder, name))[1]
        for name in grid.labelings
    }
    organs = list(parser.get_parsed_content("organ_labels"))
    corpus = parser.get_parsed_content("corpus")
    test, labels = corpus.embeddings("test"), corpus.label_matrix("test").numpy().astype(bool)
    figures = {}
    panels = []
    for name, aligner in models.items():
        anchors = None
        anchor_file = os.path.join(grid.text_dir(seed, d.encoder, name), "models", "text_anchors.pt")
        if uses_anchors(grid.labelings[name]) and os.path.isfile(anchor_file):
            positive = load_anchors(anchor_file, test.shape[1], len(organs)).positive.detach()
            anchors = aligner.text_model.features(positive).detach().numpy()
        with torch.no_grad():
            panels.append((f"{name} labels", aligner.text_model.features(test).numpy(), anchors))
    figures["Fig. 5: t-SNE of the text MLP features of the test queries"] = text_feature_map(
        panels, labels.argmax(axis=1), organs, os.path.join(figures_dir, "fig5_text_features.png"), seed
    )
    train = corpus.embeddings("train")
    correlation = [
        (f"({chr(ord('a') + i)}) {name} labels", aligner.text_head_scores(train).numpy())
        for i, (name, aligner) in enumerate(models.items())
    ]
    figures["Fig. 6: correlation between organs of the text head's scores on the training texts"] = (
        organ_correlation_heatmaps(correlation, organs, os.path.join(figures_dir, "fig6_organ_correlation.png"))
    )
    figures["Test queries vs. organs: top-1 confusion and mean scores of the full model"] = query_organ_heatmaps(
        full.organ_scores(test).numpy(),
        labels,
        organs,
        os.path.join(figures_dir, "fig6_queries_vs_organs.png"),
        MEDSORA_ROW,
    )
    return figures


def _ct_figures(
    grid: ExperimentGrid,
    seed: int,
    parser,
    aligner,
    figures_dir: str,
    example_queries: Sequence[str],
    attention_organ: str,
) -> dict[str, str]:
    """Fig. 7: the ``query`` workflow on the first validation CT, and the fusion attention over one organ's slices."""
    d = grid.default
    organs = list(parser.get_parsed_content("organ_labels"))
    case = parser.get_parsed_content("validate#datalist")[0]
    network = parser.get_parsed_content("network_def")
    image_weights = os.path.join(grid.image_dir(seed, d.structure), "models", "model.pt")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    query = OrganQuery(parser.get_parsed_content("text_encoder"), aligner, organs)
    queries = os.path.join(figures_dir, "fig7_queries.jsonl")
    write_text_atomic(queries, "".join(json.dumps({"text": text}) + "\n" for text in example_queries))
    answers = run_query(
        query,
        queries_file=queries,
        output_file=os.path.join(figures_dir, "fig7_answers.jsonl"),
        image=case["image"],
        label=case["label"],
        maps_dir=os.path.join(figures_dir, "fig7"),
        organ_labels=parser.get_parsed_content("organ_labels"),
        image_network=network,
        image_weights=image_weights,
        preprocessing=preprocessing,
        image_gate=os.path.join(grid.image_dir(seed, d.structure), "models", "image_gate.json"),
    )
    figures = {f'Fig. 7: "{a["text"]}"': a["figure"] for a in answers if "figure" in a}
    fusion = getattr(network, "fusion", None)
    if fusion is not None and hasattr(fusion, "attention"):
        index = organs.index(attention_organ)
        sample = next(s for s in preprocessing(dict(case)) if int(s["label"].reshape(-1)[0]) == index)
        with torch.no_grad():
            network.eval().features(sample["image"].as_tensor()[None])
        slices = sample["image"].as_tensor()[0].permute(2, 0, 1).numpy()
        figures[f"Fig. 7: fusion attention over the {attention_organ.replace('_', ' ')} slices"] = (
            fusion_attention_figure(
                slices,
                fusion.attention[0, :, 0, :].numpy(),
                attention_organ,
                os.path.join(figures_dir, "fig7_fusion_attention.png"),
            )
        )
    return figures


def run_paper_evaluation(
    grid: ExperimentGrid,
    paper_results: Mapping[str, Any],
    metrics_file: str,
    report_file: str,
    figures_dir: str,
    example_queries: Sequence[str],
    attention_organ: str = "liver",
    clinician_queries: str | None = None,
) -> dict:
    """Train every row, score it, draw the figures and write ``metrics_file`` (JSON) and ``report_file`` (Markdown).

    Args:
        grid: the rows and seeds to train (see ``ExperimentGrid``).
        paper_results: the numbers printed in the paper, per table (``table2``, ``table3``, ``table4``): row name ->
            ``{"Rank-1", "Rank-2", "Rank-3", "mAP"}``; shown beside ours, never mixed into our summaries.
        metrics_file, report_file: outputs; figures go to ``figures_dir`` and are linked relative to the report.
        example_queries: symptom texts drawn on a validation CT for Fig. 7.
        attention_organ: organ whose slice attention is drawn.
        clinician_queries: JSONL of clinician-phrased queries (``text``, ``labels``; empty labels for non-abdominal
            ones) scored by every labelling; ``None`` leaves that table out.
    """
    start = time.monotonic()
    results = grid.run()
    first = grid.seeds[0]
    parser, full = _load_aligner(
        grid, Alignment(first, grid.default.structure, grid.default.encoder, grid.default.labeling)
    )
    organs = list(parser.get_parsed_content("organ_labels"))
    bm25 = {seed: _bm25_report(grid, seed) for seed in grid.seeds}
    tables = _tables(grid, results, bm25, paper_results, organs)
    if clinician_queries:
        tables["clinician_queries"] = _clinician_query_table(grid, parser, clinician_queries, organs)
    os.makedirs(figures_dir, exist_ok=True)
    figures = _text_figures(grid, first, parser, full, figures_dir)
    figures.update(_ct_figures(grid, first, parser, full, figures_dir, example_queries, attention_organ))
    report_dir = os.path.dirname(os.path.abspath(report_file))
    corpus = parser.get_parsed_content("corpus")
    metrics = {
        "seeds": grid.seeds,
        "schedule": grid.schedule,
        "test_queries": len(corpus.texts("test")),
        "ood_test_queries": len(corpus.texts("ood_test")),
        "tables": tables,
        "figures": {caption: os.path.relpath(path, report_dir) for caption, path in figures.items()},
        "seconds": round(time.monotonic() - start, 1),
    }
    write_json_atomic(metrics_file, metrics)
    report = markdown_report(metrics, metrics["figures"], organs)
    write_text_atomic(report_file, report + "\n")
    print(f"evaluation: {metrics_file}, {report_file} ({metrics['seconds']} s)")
    return metrics

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Mean ± std over seeds of every table row, and the Markdown report with the paper's numbers beside ours.

Metrics are kept as fractions in ``[0, 1]`` everywhere else; here they become percentages, as the paper prints them.
The standard deviation is the sample one (``ddof=1``), 0 for a single seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["RETRIEVAL_METRICS", "summarize", "summarize_reports", "markdown_report"]

RETRIEVAL_METRICS = ("Rank-1", "Rank-2", "Rank-3", "mAP (class-wise)", "mAP (query-wise)")
PAPER_METRICS = {"Rank-1": "Rank-1", "Rank-2": "Rank-2", "Rank-3": "Rank-3", "mAP (class-wise)": "mAP"}


def summarize(values: Sequence[float | None], scale: float = 1.0) -> dict[str, Any]:
    """``{"mean", "std", "values"}`` of per-seed values times ``scale``; ``None`` values (undefined) are skipped."""
    defined = [float(v) * scale for v in values if v is not None]
    if not defined:
        return {"mean": None, "std": None, "values": []}
    return {
        "mean": float(np.mean(defined)),
        "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0,
        "values": defined,
    }


def summarize_reports(
    reports: Sequence[Mapping[str, Any]], metrics: Sequence[str] = RETRIEVAL_METRICS, scale: float = 100.0
) -> dict[str, dict[str, Any]]:
    """Per metric, the summary over one report per seed (``retrieval_report`` dictionaries)."""
    return {metric: summarize([report[metric] for report in reports], scale) for metric in metrics}


def _cell(summary: Mapping[str, Any] | None, digits: int = 1) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def _paper_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _retrieval_table(table: Mapping[str, Any], seeds: int) -> list[str]:
    lines = [
        f"### {table['title']}",
        "",
        table["caption"],
        "",
        "| row | source | " + " | ".join(RETRIEVAL_METRICS) + " |",
        "| --- | --- |" + " ---: |" * len(RETRIEVAL_METRICS),
    ]
    paper = table.get("paper") or {}
    for name, row in table["rows"].items():
        lines.append(
            f"| {name} | ours, {seeds} seed(s) | " + " | ".join(_cell(row.get(m)) for m in RETRIEVAL_METRICS) + " |"
        )
        if name in paper:
            lines.append(
                f"| {name} | **paper** | "
                + " | ".join(
                    _paper_cell(paper[name].get(PAPER_METRICS[m])) if m in PAPER_METRICS else "–"
                    for m in RETRIEVAL_METRICS
                )
                + " |"
            )
    others = [name for name in paper if name not in table["rows"]]
    for name in others:
        lines.append(
            f"| {name} | **paper** | "
            + " | ".join(
                _paper_cell(paper[name].get(PAPER_METRICS[m])) if m in PAPER_METRICS else "–" for m in RETRIEVAL_METRICS
            )
            + " |"
        )
    return lines + [""]


def _image_table(image: Mapping[str, Any], organs: Sequence[str]) -> list[str]:
    names = [organ.replace("_", " ") for organ in organs]
    lines = [
        "### Image side: organ classification of the validation CTs (%)",
        "",
        "Accuracy of the trained image network on every organ sample of the validation CTs, and its recall per "
        "organ (fused head where the structure has one).",
        "",
        "| structure | accuracy | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * (len(organs) + 1),
    ]
    for structure, row in image.items():
        lines.append(
            f"| {structure} | {_cell(row['accuracy'])} | "
            + " | ".join(_cell(row["recall_per_organ"][organ]) for organ in organs)
            + " |"
        )
    return lines + [""]


def _ood_table(ood: Mapping[str, Any]) -> list[str]:
    lines = [
        "### Out-of-domain rejection (test: abdominal vs. non-abdominal texts)",
        "",
        "AUROC of the maximum organ score (the metric DESIGN.md fixes) and of the gate's P(abdominal); the stored "
        "threshold's operating point on the test files (kept and rejected in %).",
        "",
        "| model | AUROC (max score) | AUROC (P(abdominal)) | threshold | abdominal kept | non-abdominal rejected |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in ood.items():
        lines.append(
            f"| {name} | {_cell(row['AUROC'], 3)} | {_cell(row['AUROC of P(abdominal)'], 3)} | "
            f"{_cell(row['threshold'], 3)} | {_cell(row['in_domain_recall'])} | {_cell(row['ood_rejection'])} |"
        )
    return lines + [""]


def markdown_report(metrics: Mapping[str, Any], figures: Mapping[str, str], organs: Sequence[str]) -> str:
    """The Markdown of ``eval/report.md``: settings, every table with the paper's numbers, the figures."""
    seeds = metrics["seeds"]
    lines = [
        "# Med-SORA evaluation",
        "",
        f"Seeds: {', '.join(str(s) for s in seeds)} (mean ± sample standard deviation over them). "
        f"Test queries: {metrics['test_queries']} abdominal, {metrics['ood_test_queries']} non-abdominal. "
        f"Every row is trained from scratch per seed through the bundle's configs with these overrides: "
        f"`{metrics['schedule']}`.",
        "",
        "Rows marked **paper** are the numbers printed in Na & Cho (2025), on BTCV CTs and the authors' corpus "
        "with expert test labels; ours come from this run's data and corpus, so the two are comparable in "
        "kind, not in value.",
        "",
    ]
    for key in ("labeling", "structure", "text_models", "clinician_queries"):
        if key in metrics["tables"]:
            lines += _retrieval_table(metrics["tables"][key], len(seeds))
    lines += _ood_table(metrics["tables"]["out_of_domain"])
    lines += _image_table(metrics["tables"]["image"], organs)
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures.items():
            lines += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    return "\n".join(lines)

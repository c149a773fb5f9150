# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The ranking of one answer as a person reads it in a terminal: whether the text is abdominal and why, what a score
is, the corpus text behind each organ, and on a patient's CT which organs kept their reference score."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

__all__ = ["SCORES_MEANING", "format_ct_notes", "format_domain", "format_evidence", "format_ranking"]

#: what a score is, printed above every ranking
SCORES_MEANING = (
    "scores: each organ's relevance to these symptoms, in [0, 1]; not probabilities (they need not sum to one)"
)


def format_evidence(item: Mapping[str, Any], width: int | None = 70) -> str:
    """One evidence item in a line: the supporting text (shortened to ``width`` characters unless ``None``), its
    similarity (and lexical similarity, under hybrid retrieval) and where it comes from (the record's source and
    identifier, with the ontology term's title or the knowledge-table findings it was written from)."""
    provenance = item.get("provenance") or {}
    where = " ".join(str(provenance[key]) for key in ("source", "identifier") if provenance.get(key))
    detail = provenance.get("title") or "; ".join(str(finding) for finding in provenance.get("findings") or [])
    if detail:
        where = f"{where}: {textwrap.shorten(detail, width=60, placeholder=' ...')}"
    shown = item["text"] if width is None else textwrap.shorten(item["text"], width=width, placeholder=" ...")
    measures = f"similarity {item['similarity']:.2f}"
    if "lexical_similarity" in item:
        measures += f", lexical {item['lexical_similarity']:.2f}"
    return f'"{shown}" ({measures}; {where or "source unknown"})'


def format_domain(answer: Mapping[str, Any], threshold: float) -> str:
    """The line that says whether the text points to the abdomen, with the query's own ``P(abdominal)`` against the
    threshold; a text the model judged unreadable (mostly words it does not know) is out of domain whatever its
    ``P``."""
    p = answer["p_abdominal"]
    if answer["in_domain"]:
        return f"abdominal: yes (P(abdominal) {p:.3f} >= threshold {threshold:.3f})"
    if p >= threshold:
        reason = f"P(abdominal) {p:.3f} >= threshold {threshold:.3f}, but most of its words are unknown to the model"
    else:
        reason = f"P(abdominal) {p:.3f} < threshold {threshold:.3f}"
    return f"abdominal: no ({reason}): no abdominal organ is indicated"


def format_ct_notes(answer: Mapping[str, Any]) -> list[str]:
    """On a patient's CT: the organs its label map lacks, and the organs the image gate kept at their reference
    features (the network does not recognise them on this CT), each with how the network read it."""
    lines = []
    if answer.get("absent_organs"):
        lines.append(f"absent from the label map (reference score): {', '.join(answer['absent_organs'])}")
    kept = [
        f"{organ} (read as {report['predicted']}, {report['confidence']:.2f})"
        for organ, report in (answer.get("image_features") or {}).items()
        if report["source"] == "reference" and report["predicted"] is not None
    ]
    if kept:
        lines.append(f"reference features kept by the image gate (text-only score): {', '.join(kept)}")
    return lines


def format_ranking(text: str, answer: Mapping[str, Any], threshold: float) -> str:
    """A terminal-friendly ranking of one answer: whether the text is abdominal and why, what a score is, the organs
    with their best supporting text, and on a CT which organs could not use the patient's own features."""
    shown = textwrap.shorten(text, width=100, placeholder=" ...")
    lines = [f"symptoms: {shown}", format_domain(answer, threshold), SCORES_MEANING]
    best: dict[str, Mapping[str, Any]] = {}
    for item in answer.get("evidence") or []:
        best.setdefault(item["organ"], item)
    for rank, organ in enumerate(answer["ranking"], 1):
        score = answer["scores"][organ]
        lines.append(f"{rank:>3}. {organ:<14} {score:.3f} {'#' * round(score * 30)}")
        if organ in best:
            lines.append(f"       evidence: {format_evidence(best[organ])}")
    return "\n".join(lines + format_ct_notes(answer))

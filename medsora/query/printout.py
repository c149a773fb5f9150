# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The ranking of one answer as a person reads it in a terminal, with the corpus text behind each organ."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

__all__ = ["format_evidence", "format_ranking"]


def format_evidence(item: Mapping[str, Any], width: int | None = 70) -> str:
    """One evidence item in a line: the supporting text (shortened to ``width`` characters unless ``None``), its
    similarity and where it comes from (the record's source and identifier, with the ontology term's title or the
    knowledge-table findings it was written from)."""
    provenance = item.get("provenance") or {}
    where = " ".join(str(provenance[key]) for key in ("source", "identifier") if provenance.get(key))
    detail = provenance.get("title") or "; ".join(str(finding) for finding in provenance.get("findings") or [])
    if detail:
        where = f"{where}: {textwrap.shorten(detail, width=60, placeholder=' ...')}"
    shown = item["text"] if width is None else textwrap.shorten(item["text"], width=width, placeholder=" ...")
    return f'"{shown}" (similarity {item["similarity"]:.2f}; {where or "source unknown"})'


def format_ranking(text: str, answer: Mapping[str, Any], threshold: float) -> str:
    """A terminal-friendly ranking of one answer; under each organ that has evidence, its best supporting text."""
    shown = textwrap.shorten(text, width=100, placeholder=" ...")
    verdict = "yes" if answer["in_domain"] else "no: no abdominal organ is indicated"
    lines = [f"symptoms: {shown}", f"abdominal: {verdict} (P(abdominal) threshold {threshold:.3f})"]
    best: dict[str, Mapping[str, Any]] = {}
    for item in answer.get("evidence") or []:
        best.setdefault(item["organ"], item)
    for rank, organ in enumerate(answer["ranking"], 1):
        score = answer["scores"][organ]
        lines.append(f"{rank:>3}. {organ:<14} {score:.3f} {'#' * round(score * 30)}")
        if organ in best:
            lines.append(f"       evidence: {format_evidence(best[organ])}")
    return "\n".join(lines)

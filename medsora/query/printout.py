# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The ranking of one answer as a person reads it in a terminal."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

__all__ = ["format_ranking"]


def format_ranking(text: str, answer: Mapping[str, Any], threshold: float) -> str:
    """A terminal-friendly ranking of one answer."""
    shown = textwrap.shorten(text, width=100, placeholder=" ...")
    verdict = "yes" if answer["in_domain"] else "no: no abdominal organ is indicated"
    lines = [f"symptoms: {shown}", f"abdominal: {verdict} (P(abdominal) threshold {threshold:.3f})"]
    for rank, organ in enumerate(answer["ranking"], 1):
        score = answer["scores"][organ]
        lines.append(f"{rank:>3}. {organ:<14} {score:.3f} {'#' * round(score * 30)}")
    return "\n".join(lines)

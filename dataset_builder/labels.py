"""The multi-organ label rule for test texts, computed from the knowledge sources.

A text's labels are its primary organ, then (in the canonical organ order) every other organ such
that one of the text's findings lies in that organ's HPO abnormality branch, or at least
`label_disease_share` of the OMIM diseases annotated with the finding (and at least
`label_min_diseases` of them) also carry a phenotype in that organ's branch. LLM-mode texts take
the organs the filter named for their chunk.
"""

from __future__ import annotations

from typing import Any

from . import ORGANS


def organ_labels(
    primary: str,
    findings: list[dict[str, Any]],
    share: float = 1.0,
    min_diseases: int = 0,
    extra_organs: list[str] | None = None,
) -> list[str]:
    """Primary organ first, then the other organs the rule assigns, in canonical order."""
    found = set(extra_organs or [])
    for finding in findings:
        found.update(finding.get("organs", []))
        if finding.get("n_diseases", 0) >= min_diseases:
            found.update(o for o, s in finding.get("disease_share", {}).items() if s >= share)
    return [primary] + [o for o in ORGANS if o in found and o != primary]

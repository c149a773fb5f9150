"""The two LLM instructions of the paper (section 3.1) and the JSON schemas their answers must follow."""

from __future__ import annotations

from typing import Any

from . import ORGANS
from .provenance import sha256

SYSTEM = "You are a clinician annotating medical text for a symptom-to-organ reasoning dataset."

FILTER_PROMPT = (
    "Does this text describe a patient's symptom or clinical observation? "
    "Answer with about_symptoms, and list in organs which of these abdominal organs the described "
    "symptoms point to (possibly none): {organs}.\n\nText: {chunk}"
)

GENERATE_PROMPT = (
    "Based ONLY on given {chunk}, create {n} unique clinical observations described in complete, "
    "medical-style sentences. Each one describes what a patient presents with (symptoms, signs, "
    "findings); do not name the {organ} or any other organ, so the organ must be inferred."
)

FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "about_symptoms": {"type": "boolean"},
        "organs": {"type": "array", "items": {"type": "string", "enum": list(ORGANS)}},
    },
    "required": ["about_symptoms", "organs"],
    "additionalProperties": False,
}


def generate_schema(n: int) -> dict[str, Any]:
    """Schema for `n` texts at most, at least one."""
    return {
        "type": "object",
        "properties": {
            "texts": {"type": "array", "items": {"type": "string", "minLength": 10}, "minItems": 1, "maxItems": n}
        },
        "required": ["texts"],
        "additionalProperties": False,
    }


def prompt_hash(template: str) -> str:
    """Identifies the exact instruction used, recorded in each text's provenance."""
    return sha256(SYSTEM + "\n" + template)[:16]


def messages(template: str, **fields: Any) -> list[dict[str, str]]:
    """Chat messages for one request."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": template.format(**fields)}]

"""Provenance attached to every record: where a text came from and how it was made."""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any


def now_utc() -> str:
    """Current UTC time, second resolution, ISO 8601 with a Z."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256(text: str) -> str:
    """Hex SHA-256 of a string (prompt hashes, cache keys, stable ids)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_id(*parts: str) -> str:
    """Short id that depends only on the parts, so ids survive reruns and reordering."""
    return sha256("\x1f".join(parts))[:16]


def provenance(source: str, identifier: str, retrieved_at: str, **extra: Any) -> dict[str, Any]:
    """Provenance dict: source, identifier (PMID, page+revision, HPO id, ICD code), retrieval time."""
    return {"source": source, "identifier": identifier, "retrieved_at": retrieved_at, **extra}

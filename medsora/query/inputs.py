# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Query files as users bring them: one JSON object a line, every bad line an ``error`` of its own."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_TEXT_CHARS", "parse_query_lines"]

MAX_TEXT_CHARS = 10_000


def parse_query_lines(data: bytes) -> list[tuple[dict[str, Any], str | None]]:
    """Split a JSONL file's bytes into ``(record, error)`` per line; ``error`` is ``None`` for a usable query."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    parsed = []
    for raw in lines:
        raw = raw.rstrip(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            parsed.append(({}, f"line is not valid UTF-8 (byte {e.start})"))
            continue
        if len(line) > MAX_TEXT_CHARS:
            parsed.append(({}, f"line is {len(line)} characters long; at most {MAX_TEXT_CHARS} are accepted"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            parsed.append(({}, f"line is not JSON ({e.msg})"))
            continue
        if not isinstance(record, dict):
            parsed.append(({}, f"line is JSON {type(record).__name__}, expected an object with a 'text' field"))
        elif "text" not in record:
            parsed.append((record, "no 'text' field"))
        elif not isinstance(record["text"], str):
            parsed.append((record, f"'text' must be a string, got {type(record['text']).__name__}"))
        elif not record["text"].strip():
            parsed.append((record, "'text' is empty"))
        else:
            parsed.append((record, None))
    return parsed

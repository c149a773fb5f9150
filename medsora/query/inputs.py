# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Query files as users bring them: one JSON object a line, every bad line an ``error`` of its own."""

from __future__ import annotations

import codecs
import json
from typing import Any

__all__ = ["MAX_TEXT_CHARS", "parse_query_lines"]

MAX_TEXT_CHARS = 10_000


def parse_query_lines(data: bytes) -> list[tuple[dict[str, Any], str | None]]:
    """Split a JSONL file's bytes into ``(record, error)`` per line; ``error`` is ``None`` for a usable query.

    A UTF-8 byte order mark before the first line is skipped, as ``utf-8-sig`` reads it.
    """
    data = data.removeprefix(codecs.BOM_UTF8)
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
        unpaired = _lone_surrogate(record)
        if unpaired:
            parsed.append(({}, f"line holds {unpaired}, an unpaired UTF-16 surrogate: not a character"))
        elif not isinstance(record, dict):
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


def _lone_surrogate(record: Any) -> str | None:
    """The first unpaired UTF-16 surrogate (``\\ud800``-``\\udfff``) in ``record`` as its escape, or ``None``: JSON
    escapes allow one, but it is no character (UTF-8 cannot write it, the tokenizer cannot read it)."""
    found = next((char for char in json.dumps(record, ensure_ascii=False) if "\ud800" <= char <= "\udfff"), None)
    return None if found is None else f"\\u{ord(found):04x}"

"""Stage 2, chunk: prose split into 2-3 sentence chunks with a real sentence splitter, boilerplate removed.

Structured records (HPO terms and diseases, ICD codes) pass through as one chunk each, keeping the
findings the offline generator works from.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tqdm import tqdm

from .io import read_jsonl, write_jsonl
from .provenance import stable_id

CITATION = re.compile(r"\[\d+(?:[,–-]\d+)*\]|\[citation needed\]")
SPACES = re.compile(r"\s+")


def sentences(text: str, segmenter: Any) -> list[str]:
    """Sentences of a text with citation marks removed and whitespace collapsed."""
    text = SPACES.sub(" ", CITATION.sub("", text)).strip()
    return [s.strip() for s in segmenter.segment(text) if s.strip()]


def group_sentences(sents: list[str], min_n: int, max_n: int) -> list[list[str]]:
    """Consecutive groups of min_n..max_n sentences, sizes balanced so no chunk is left short."""
    if len(sents) <= max_n:
        return [sents] if sents else []
    k = math.ceil(len(sents) / max_n)
    while k > 1 and len(sents) / k < min_n:
        k -= 1
    base, extra = divmod(len(sents), k)
    out, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        out.append(sents[start : start + size])
        start += size
    return out


def chunk_record(
    record: dict[str, Any], ccfg: dict[str, Any], segmenter: Any, boilerplate: list[re.Pattern[str]]
) -> list[dict[str, Any]]:
    """Chunks of one retrieved record (one chunk for structured records)."""
    if record["findings"]:
        return [{**record, "doc_id": record["id"], "chunk": 0}]
    kept = [s for s in sentences(record["text"], segmenter) if not any(p.search(s) for p in boilerplate)]
    chunks = []
    for i, group in enumerate(group_sentences(kept, int(ccfg["min_sentences"]), int(ccfg["max_sentences"]))):
        text = " ".join(group)
        if len(text) < int(ccfg["min_chars"]):
            continue
        chunks.append(
            {**record, "id": stable_id(record["id"], str(i)), "doc_id": record["id"], "chunk": i, "text": text}
        )
    return chunks


def run(cfg: dict[str, Any], in_path: str, out_path: str) -> dict[str, Any]:
    """Chunk every retrieved record; returns counts."""
    import pysbd

    ccfg = cfg["chunk"]
    segmenter = pysbd.Segmenter(language="en", clean=False)
    boilerplate = [re.compile(p, re.IGNORECASE) for p in ccfg["boilerplate_patterns"]]
    records = read_jsonl(in_path)
    chunks = [c for r in tqdm(records, desc="chunk", unit="doc") for c in chunk_record(r, ccfg, segmenter, boilerplate)]
    write_jsonl(out_path, chunks)
    return {"documents": len(records), "chunks": len(chunks)}

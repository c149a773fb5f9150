"""Stage 3, filter: keep the chunks that describe symptoms or clinical observations.

LLM mode asks the paper's first question with a JSON-schema answer (is it about symptoms, which
organs). Offline mode keeps structured records that can be phrased as findings and drops ontology
grouping terms ("Abnormality of the liver") and prose (which needs the LLM).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from . import ORGANS, prompts
from .io import fingerprint, read_jsonl, run_resumable
from .offline import phrasings
from .sources.hpo import is_grouping


def offline_reason(chunk: dict[str, Any]) -> str | None:
    """Why the offline mode cannot use a chunk, or None when it can."""
    if not chunk["findings"]:
        return "prose (needs the LLM mode)"
    if chunk["kind"] == "term" and is_grouping(chunk["title"]):
        return "ontology grouping term"
    if not all(phrasings(f) for f in chunk["findings"]):
        return "no usable phrasing"
    return None


def run(cfg: dict[str, Any], in_path: str, out_path: str, work_dir: str) -> dict[str, Any]:
    """Filter every chunk; returns kept and dropped counts (by reason) and LLM cache statistics."""
    chunks = read_jsonl(in_path)
    if cfg["mode"] == "llm":
        from .llm import LLMClient

        client = LLMClient(cfg["llm"], cfg["llm"].get("cache_dir") or os.path.join(work_dir, "cache", "llm"), "filter")

        def work(chunk: dict[str, Any]) -> list[dict[str, Any]]:
            if not chunk["text"].strip():
                return [{"dropped": "no text to judge"}]
            answer = client.ask(
                prompts.messages(prompts.FILTER_PROMPT, chunk=chunk["text"], organs=", ".join(ORGANS)),
                "symptom_filter",
                prompts.FILTER_SCHEMA,
                chunk["id"],
            )
            if answer is None:
                return [{"dropped": "schema-invalid answer"}]
            if not answer["about_symptoms"]:
                return [{"dropped": "not about symptoms (LLM)"}]
            return [
                {
                    **chunk,
                    "filter": {
                        "organs": [o for o in ORGANS if o in answer["organs"]],
                        "model": cfg["llm"]["model"],
                        "prompt_hash": prompts.prompt_hash(prompts.FILTER_PROMPT),
                    },
                }
            ]
    else:

        def work(chunk: dict[str, Any]) -> list[dict[str, Any]]:
            reason = offline_reason(chunk)
            return [{"dropped": reason}] if reason else [chunk]

    results = run_resumable(chunks, work, out_path, "filter", fingerprint(cfg, in_path))
    kept = [r for r in results if "dropped" not in r]
    dropped = Counter(r["dropped"] for r in results if "dropped" in r)
    stats = client.stats if cfg["mode"] == "llm" else {}
    return {"chunks": len(chunks), "kept": len(kept), "dropped": dict(sorted(dropped.items())), "llm": stats}

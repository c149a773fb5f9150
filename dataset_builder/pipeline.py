"""Stage files, and the stages run in order with a summary: what `build` and each command run.

Layout of an output directory:
    stages/01_retrieved.jsonl .. 05_dedup.jsonl   each stage's output, the next one's input
    stages/<file>.complete.json                    written after each of them: records and SHA-256 of the whole file
    stages/<stage>.stats.json                      each stage's counts
    cache/llm/                                     LLM request/response cache (LLM mode)
    train.jsonl, test.jsonl, ood_test.jsonl, ood_train.jsonl, summary.json, DATASHEET.md
    clinical_train.jsonl, clinical_ood_train.jsonl  texts composed from the presentation table (stage clinical)
"""

from __future__ import annotations

import json
import os
from typing import Any

from medsora.atomic_io import write_text_atomic

from . import chunk, clinical, dedup, generate, retrieve, split
from . import filter as filter_stage
from .datasheet import render_datasheet
from .errors import StageError
from .io import check_complete, mark_complete, write_jsonl

# clinical reads no stage file: it composes texts from the presentation table, after the ontology corpus is split
STAGES = ("retrieve", "chunk", "filter", "generate", "dedup", "split", "clinical")
FILES = {
    "retrieve": "01_retrieved.jsonl",
    "chunk": "02_chunks.jsonl",
    "filter": "03_filtered.jsonl",
    "generate": "04_generated.jsonl",
    "dedup": "05_dedup.jsonl",
}


def stage_path(out: str, stage: str) -> str:
    """Where a stage writes its output."""
    return os.path.join(out, "stages", FILES[stage])


def write_stage_file(out: str, stage: str, records: list[dict[str, Any]]) -> str:
    """Write `records` as `stage`'s output under `out`, then its completeness mark: what the next stage accepts."""
    path = stage_path(out, stage)
    write_jsonl(path, records)
    mark_complete(path, stage)
    return path


def _input(out: str, stage: str) -> str:
    """The previous stage's file, refused unless it is whole (see `io.check_complete`)."""
    writer = STAGES[STAGES.index(stage) - 1]
    previous = stage_path(out, writer)
    if not os.path.exists(previous):
        raise StageError(stage, f"input {previous} does not exist; run the previous stage first")
    check_complete(previous, stage, writer, f"python -m dataset_builder {writer} --out {out}")
    return previous


def run_stage(stage: str, cfg: dict[str, Any], out: str) -> dict[str, Any]:
    """Run one stage from the previous stage's file; its counts are saved next to its output."""
    if stage == "retrieve":
        stats = retrieve.run(cfg, stage_path(out, stage))
    elif stage == "chunk":
        stats = chunk.run(cfg, _input(out, stage), stage_path(out, stage))
    elif stage == "filter":
        stats = filter_stage.run(cfg, _input(out, stage), stage_path(out, stage), out)
    elif stage == "generate":
        stats = generate.run(cfg, _input(out, stage), stage_path(out, stage), out)
    elif stage == "dedup":
        stats = dedup.run(cfg, _input(out, stage), stage_path(out, stage))
    elif stage == "split":
        stats = split.run(cfg, _input(out, stage), out)
    else:
        stats = clinical.run(cfg, out)
    if stage in FILES:
        mark_complete(stage_path(out, stage), stage)
    os.makedirs(os.path.join(out, "stages"), exist_ok=True)
    write_text_atomic(os.path.join(out, "stages", f"{stage}.stats.json"), json.dumps(stats, indent=1) + "\n")
    # the summary describes a whole build: clinical alone, into a directory without one, writes only its own files
    built = os.path.exists(os.path.join(out, "stages", "split.stats.json"))
    if stage == "split" or (stage == "clinical" and built):
        write_summary(cfg, out)
    return stats


def write_summary(cfg: dict[str, Any], out: str) -> dict[str, Any]:
    """summary.json and DATASHEET.md from the stages' counts (no times: the files must rebuild identically)."""
    stats = {}
    for stage in STAGES:
        path = os.path.join(out, "stages", f"{stage}.stats.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                stats[stage] = json.load(f)
    llm = [stats.get(s, {}).get("llm") or {} for s in ("filter", "generate")]
    summary = {
        "mode": cfg["mode"],
        "counts": stats.get("split", {}).get("counts", {}),
        "test_multi_label": stats.get("split", {}).get("test_multi_label"),
        "available_after_dedup": stats.get("split", {}).get("available_after_dedup", {}),
        "ood_train_available": stats.get("split", {}).get("ood_train_available", {}),
        "dropped": {
            "filter": stats.get("filter", {}).get("dropped", {}),
            "generate": stats.get("generate", {}).get("dropped", {}),
            "dedup": stats.get("dedup", {}).get("dropped", {}),
            "split": stats.get("split", {}).get("dropped", {}),
        },
        "retrieved": stats.get("retrieve", {}).get("by_source_organ", {}),
        "clinical": stats.get("clinical", {}),
        "llm_cache_hits": sum(s.get("cache_hits", 0) for s in llm),
        "llm_calls": sum(s.get("calls", 0) for s in llm),
    }
    write_text_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=1) + "\n")
    write_text_atomic(os.path.join(out, "DATASHEET.md"), render_datasheet(cfg, summary))
    return summary


def build(cfg: dict[str, Any], out: str) -> dict[str, Any]:
    """All stages in order, then the summary."""
    for stage in STAGES:
        run_stage(stage, cfg, out)
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        return json.load(f)

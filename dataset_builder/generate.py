"""Stage 4, generate: patient-style symptom texts from the kept chunks.

LLM mode uses the paper's second instruction ("Based ONLY on given CHUNK, create N unique clinical
observations ...") with a JSON-schema answer; offline mode uses the deterministic template
generator. Every text carries its organ, candidate labels, group and provenance.
"""

from __future__ import annotations

import os
from typing import Any

from . import prompts
from .io import fingerprint, read_jsonl, run_resumable
from .labels import organ_labels
from .offline import generate_offline
from .provenance import stable_id


def _finding_ids(findings: list[dict[str, Any]]) -> list[str]:
    return [f.get("hpo_id") or f.get("icd_code") for f in findings]


CODED = 1000.0  # ICD-10-CM complaints are coded to the organ: as specific as it gets


def specificity(organ: str | None, findings: list[dict[str, Any]]) -> float:
    """How strongly a text's findings point to its organ: the largest lift of one of its findings, i.e.
    how many times more often diseases annotated with the finding involve the organ than diseases do
    overall (a lift, not a share, so organs with few diseases are not penalised)."""
    if organ is None:
        return 0.0
    return max(f["lift"].get(organ, 0.0) if "hpo_id" in f else CODED for f in findings)


def text_record(
    chunk: dict[str, Any],
    text: str,
    content: str,
    findings: list[dict[str, Any]],
    labels: list[str],
    method: dict[str, Any],
) -> dict[str, Any]:
    """A generated text with everything later stages and users need to trace it back."""
    return {
        "id": stable_id(chunk["id"], text),
        "text": text,
        "content": content,
        "organ": chunk["organ"],
        "domain": chunk["domain"],
        "labels": labels,
        "source": chunk["source"],
        "group": chunk["group"],
        "branch": chunk.get("branch"),
        "provenance": {**chunk["provenance"], "title": chunk["title"], **method},
        **({"reserved_for": chunk["reserved_for"]} if chunk.get("reserved_for") else {}),
    }


def run(cfg: dict[str, Any], in_path: str, out_path: str, work_dir: str) -> dict[str, Any]:
    """Generate texts for every filtered chunk; returns counts and LLM cache statistics."""
    chunks = read_jsonl(in_path)
    scfg = cfg["split"]
    if cfg["mode"] == "llm":
        from .llm import LLMClient

        n = int(cfg["llm"]["texts_per_chunk"])
        client = LLMClient(
            cfg["llm"], cfg["llm"].get("cache_dir") or os.path.join(work_dir, "cache", "llm"), "generate"
        )
        method = {
            "method": "llm",
            "model": cfg["llm"]["model"],
            "prompt_hash": prompts.prompt_hash(prompts.GENERATE_PROMPT),
        }

        def work(chunk: dict[str, Any]) -> list[dict[str, Any]]:
            organ = (chunk["organ"] or "organ").replace("_", " ")
            answer = client.ask(
                prompts.messages(prompts.GENERATE_PROMPT, chunk=chunk["text"], n=n, organ=organ),
                "symptom_texts",
                prompts.generate_schema(n),
                chunk["id"],
            )
            if answer is None:
                return [{"dropped": "schema-invalid answer"}]
            labels = organ_labels(chunk["organ"], [], extra_organs=chunk.get("filter", {}).get("organs", []))
            return [text_record(chunk, t.strip(), t.strip(), [], labels, method) for t in answer["texts"]]
    else:

        def work(chunk: dict[str, Any]) -> list[dict[str, Any]]:
            out = []
            for item in generate_offline(chunk, cfg):
                labels = (
                    organ_labels(
                        chunk["organ"],
                        item["findings"],
                        float(scfg["label_disease_share"]),
                        int(scfg["label_min_diseases"]),
                    )
                    if chunk["organ"]
                    else []
                )
                method = {"method": "offline-templates", "findings": _finding_ids(item["findings"])}
                record = text_record(chunk, item["text"], item["content"], item["findings"], labels, method)
                record["specificity"] = specificity(chunk["organ"], item["findings"])
                out.append({**record, "extra": True} if item.get("extra") else record)
            return out

    results = run_resumable(chunks, work, out_path, "generate", fingerprint(cfg, in_path))
    texts = [r for r in results if "dropped" not in r]
    return {
        "chunks": len(chunks),
        "texts": len(texts),
        "dropped": {"schema-invalid answer": sum("dropped" in r for r in results)},
        "llm": client.stats if cfg["mode"] == "llm" else {},
    }

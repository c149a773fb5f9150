"""Stage 5, dedup: exact and near-duplicate texts removed across the whole corpus, before splitting.

Texts are compared on their content (the findings' phrasings for offline texts, the text itself
otherwise), so the same findings in two templates count as duplicates, and offline texts made of
the same findings (by ontology id) in other words are duplicates too. Near duplicates are found
with MinHash over character shingles and LSH; the first text in corpus order is kept.
"""

from __future__ import annotations

import re
from typing import Any

from datasketch import MinHash, MinHashLSH
from tqdm import tqdm

from .io import read_jsonl, write_jsonl

NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise(text: str) -> str:
    """Lower case, punctuation and spacing collapsed."""
    return NON_WORD.sub(" ", text.lower()).strip()


def minhash(text: str, num_perm: int, k: int) -> MinHash:
    """MinHash of the text's character k-shingles (the whole text when shorter than k)."""
    m = MinHash(num_perm=num_perm)
    shingles = {text[i : i + k] for i in range(max(len(text) - k + 1, 1))}
    m.update_batch([s.encode("utf-8") for s in sorted(shingles)])
    return m


def deduplicate(
    records: list[dict[str, Any]], num_perm: int, threshold: float, k: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records without exact or near duplicates of earlier ones, and how many of each were dropped."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen: set[str] = set()
    seen_findings: set[tuple[str, ...]] = set()
    kept, dropped = [], {"exact duplicate": 0, "same findings": 0, "near duplicate": 0}
    for record in tqdm(records, desc="dedup", unit="text"):
        key = normalise(record.get("content") or record["text"])
        if key in seen:
            dropped["exact duplicate"] += 1
            continue
        seen.add(key)
        findings = tuple(sorted(record["provenance"].get("findings", [])))
        if findings and findings in seen_findings:
            dropped["same findings"] += 1  # synonyms of one finding set, e.g. from sibling diseases
            continue
        seen_findings.add(findings)
        m = minhash(key, num_perm, k)
        if lsh.query(m):
            dropped["near duplicate"] += 1
            continue
        lsh.insert(record["id"], m)
        kept.append(record)
    return kept, dropped


def run(cfg: dict[str, Any], in_path: str, out_path: str) -> dict[str, Any]:
    """Deduplicate the generated texts; returns counts."""
    dcfg = cfg["dedup"]
    # Extra texts (generate.extra_texts_per_disease) go last: the first of two duplicates is kept, so they can
    # only ever be dropped themselves, never displace another text.
    records = sorted(read_jsonl(in_path), key=lambda r: bool(r.get("extra")))
    kept, dropped = deduplicate(records, int(dcfg["num_perm"]), float(dcfg["threshold"]), int(dcfg["shingle_chars"]))
    write_jsonl(out_path, kept)
    return {"texts": len(records), "kept": len(kept), "dropped": dropped}

"""Stage 1, retrieve: source documents per organ, each with its provenance.

Local sources (hpo, icd10cm) need no network, so the default corpus rebuilds anywhere; network
sources (pubmed, wikipedia) feed the LLM mode.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from tqdm import tqdm

from .errors import StageError
from .io import write_jsonl

log = logging.getLogger(__name__)


def _fetch(source: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    if source == "hpo":
        from .sources.hpo import retrieve_hpo

        with tqdm(total=len(cfg["organs"]), desc="retrieve hpo", unit="organ") as bar:
            return retrieve_hpo(cfg, bar)
    if source == "icd10cm":
        from .sources.icd10cm import retrieve_icd10cm

        return retrieve_icd10cm(cfg)
    if source == "pubmed":
        from .sources.pubmed import retrieve_pubmed

        return retrieve_pubmed(cfg)
    if source == "wikipedia":
        from .sources.wikipedia import retrieve_wikipedia

        return retrieve_wikipedia(cfg)
    raise StageError("retrieve", f"unknown source {source!r}; known: hpo, icd10cm, pubmed, wikipedia")


def run(cfg: dict[str, Any], out_path: str) -> dict[str, Any]:
    """Fetch every configured source and write the documents; returns counts per source and organ."""
    records: list[dict[str, Any]] = []
    for source in cfg["retrieve"]["sources"]:
        got = _fetch(source, cfg)
        if not got:
            log.warning("[retrieve] source %s gave no records", source)
        records += got
    # Records reserved for ood_train.jsonl go last: dedup keeps the first of two duplicates, so they can
    # only ever be dropped themselves, never displace a text of train, test or ood_test.
    records.sort(key=lambda r: bool(r.get("reserved_for")))
    write_jsonl(out_path, records)
    counts = Counter(f"{r['source']}/{r.get('reserved_for') or r['organ'] or r['domain']}" for r in records)
    return {"records": len(records), "by_source_organ": dict(counts)}

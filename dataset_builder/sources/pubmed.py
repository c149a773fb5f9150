"""PubMed abstracts through Biopython's Entrez (esearch, then efetch), within NCBI's usage rules.

Entrez itself spaces requests (3/s, or 10/s with an API key) and retries 429/5xx; we set `tool`,
`email` and the optional key as NCBI asks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError, URLError

from ..errors import StageError
from ..provenance import now_utc, provenance, stable_id

log = logging.getLogger(__name__)

NCBI_EUTILS = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"


class _MirrorHandler(urllib.request.BaseHandler):
    """Rewrites requests for NCBI's E-utilities to another E-utilities base URL (a mirror or proxy)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/") + "/"

    def https_request(self, request: urllib.request.Request) -> urllib.request.Request:
        if request.full_url.startswith(NCBI_EUTILS):
            request.full_url = self.base_url + request.full_url[len(NCBI_EUTILS) :]
        return request


@contextlib.contextmanager
def eutils_endpoint(base_url: str | None) -> Iterator[str]:
    """Entrez's URLs are fixed to NCBI; with `base_url`, its requests go there instead for the duration."""
    if not base_url:
        yield NCBI_EUTILS
        return
    previous = getattr(urllib.request, "_opener", None)
    urllib.request.install_opener(urllib.request.build_opener(_MirrorHandler(base_url)))
    try:
        yield base_url
    finally:
        urllib.request.install_opener(previous)


def configure_entrez(pcfg: dict[str, Any]) -> Any:
    """Set Entrez's module-level identity, endpoint and retry policy from config."""
    from Bio import Entrez

    if not pcfg.get("email"):
        raise StageError("retrieve", "pubmed needs `retrieve.pubmed.email` (NCBI requires a contact address)")
    Entrez.email = pcfg["email"]
    Entrez.tool = pcfg.get("tool") or "med-sora-dataset-builder"
    Entrez.api_key = os.environ.get(pcfg.get("api_key_env") or "", "") or None
    Entrez.max_tries = int(pcfg.get("max_tries", 3))
    Entrez.sleep_between_tries = float(pcfg.get("sleep_between_tries", 15))
    return Entrez


def _abstract_text(article: Any) -> str:
    parts = article.get("Abstract", {}).get("AbstractText", [])
    return " ".join(str(p) for p in parts).strip()


def retrieve_pubmed(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Abstract records per organ query; an empty result is a warning, not an error."""
    pcfg = cfg["retrieve"]["pubmed"]
    entrez = configure_entrez(pcfg)
    records: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    with eutils_endpoint(pcfg.get("base_url")) as endpoint:
        for organ in cfg["organs"]:
            for query in pcfg["queries"].get(organ, []):
                records += _query(entrez, endpoint, organ, query, int(pcfg["retmax"]), seen)
    return records


def _query(
    entrez: Any, endpoint: str, organ: str, query: str, retmax: int, seen: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Abstract records of one organ query (PMIDs already seen for the organ are skipped)."""
    where = f"{organ}/{query!r}"
    try:
        with entrez.esearch(db="pubmed", term=query, retmax=retmax) as handle:
            ids = list(entrez.read(handle)["IdList"])
        if not ids:
            log.warning("[retrieve] pubmed %s query %r: no results", organ, query)
            return []
        with entrez.efetch(db="pubmed", id=",".join(ids), rettype="abstract", retmode="xml") as handle:
            articles = entrez.read(handle)["PubmedArticle"]
    except (HTTPError, URLError, OSError) as err:
        raise StageError("retrieve", f"PubMed request to {endpoint} failed: {err}", where) from err
    except (RuntimeError, ValueError, KeyError) as err:
        raise StageError(
            "retrieve", f"PubMed answer from {endpoint} is not valid E-utilities XML: {err}", where
        ) from err
    fetched_at = now_utc()
    records: list[dict[str, Any]] = []
    for entry in articles:
        citation = entry["MedlineCitation"]
        pmid = str(citation["PMID"])
        text = _abstract_text(citation["Article"])
        if not text or (organ, pmid) in seen:
            continue
        seen.add((organ, pmid))
        records.append(
            {
                "id": stable_id("pubmed", pmid, organ),
                "organ": organ,
                "domain": "organ",
                "source": "pubmed",
                "kind": "abstract",
                "title": str(citation["Article"].get("ArticleTitle", "")),
                "text": text,
                "findings": [],
                "group": f"PMID:{pmid}",
                "provenance": provenance("pubmed", f"PMID:{pmid}", fetched_at, query=query),
            }
        )
    return records

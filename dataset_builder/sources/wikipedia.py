"""Wikipedia organ and disease pages, section by section, through `wikipedia-api`.

`api_url` points the client at a MediaWiki mirror (any api.php); the default is the public wiki.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..errors import StageError
from ..provenance import now_utc, provenance, stable_id

log = logging.getLogger(__name__)

SKIPPED_SECTIONS = {
    "references",
    "see also",
    "external links",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "citations",
    "gallery",
}


class _MirrorTransport(httpx.HTTPTransport):
    """Sends the client's api.php requests to a configured MediaWiki endpoint instead."""

    def __init__(self, api_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._target = urlsplit(api_url)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url.copy_with(
            scheme=self._target.scheme, host=self._target.hostname, port=self._target.port, path=self._target.path
        )
        request.url = url
        request.headers["Host"] = url.netloc.decode()
        return super().handle_request(request)


def client(wcfg: dict[str, Any]) -> Any:
    """A `wikipediaapi.Wikipedia` with our user agent, retry policy and optional mirror."""
    import wikipediaapi

    kwargs: dict[str, Any] = {"timeout": float(wcfg.get("timeout", 10.0))}
    if wcfg.get("api_url"):
        kwargs["transport"] = _MirrorTransport(wcfg["api_url"])
    return wikipediaapi.Wikipedia(
        user_agent=wcfg["user_agent"],
        language=wcfg.get("language", "en"),
        extract_format=wikipediaapi.ExtractFormat.WIKI,
        max_retries=int(wcfg.get("max_retries", 3)),
        retry_wait=float(wcfg.get("retry_wait", 1.0)),
        **kwargs,
    )


def _sections(section_list: list[Any], prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for section in section_list:
        if section.title.strip().lower() in SKIPPED_SECTIONS:
            continue
        title = f"{prefix}{section.title}"
        if section.text.strip():
            out.append((title, section.text.strip()))
        out += _sections(section.sections, title + " / ")
    return out


def retrieve_wikipedia(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary and section records per configured page; a missing page is a warning."""
    import wikipediaapi

    wcfg = cfg["retrieve"]["wikipedia"]
    wiki = client(wcfg)
    endpoint = wcfg.get("api_url") or f"https://{wcfg.get('language', 'en')}.wikipedia.org/w/api.php"
    records: list[dict[str, Any]] = []
    for organ in cfg["organs"]:
        for title in wcfg["pages"].get(organ, []):
            try:
                page = wiki.page(title)
                if not page.exists():
                    log.warning("[retrieve] wikipedia %s page %r: no such page", organ, title)
                    continue
                parts = [("Summary", page.summary.strip())] + _sections(page.sections)
                revision = page.lastrevid
            except (httpx.HTTPError, wikipediaapi.WikipediaException) as err:
                raise StageError(
                    "retrieve", f"Wikipedia request to {endpoint} failed: {err}", f"{organ}/{title!r}"
                ) from err
            fetched_at = now_utc()
            for section_title, text in parts:
                if not text:
                    continue
                ident = f"{page.title}#{section_title}@rev{revision}"
                records.append(
                    {
                        "id": stable_id("wikipedia", ident, organ),
                        "organ": organ,
                        "domain": "organ",
                        "source": "wikipedia",
                        "kind": "section",
                        "title": f"{page.title}: {section_title}",
                        "text": text,
                        "findings": [],
                        "group": f"WIKI:{page.title}#{section_title}",
                        "provenance": provenance(
                            "wikipedia", ident, fetched_at, page=page.title, revision=revision, section=section_title
                        ),
                    }
                )
    return records

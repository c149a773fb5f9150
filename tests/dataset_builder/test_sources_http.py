"""PubMed (E-utilities XML) and Wikipedia (MediaWiki API JSON) retrieval against loopback servers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from loopback_servers import Loopback

from dataset_builder.errors import StageError
from dataset_builder.sources.pubmed import retrieve_pubmed
from dataset_builder.sources.wikipedia import retrieve_wikipedia

ESEARCH = """<?xml version="1.0" encoding="UTF-8" ?>
<!DOCTYPE eSearchResult PUBLIC "-//NLM//DTD esearch 20060628//EN" "https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20060628/esearch.dtd">
<eSearchResult><Count>{count}</Count><RetMax>{count}</RetMax><RetStart>0</RetStart><IdList>
{ids}</IdList><TranslationSet/><QueryTranslation>{query}</QueryTranslation></eSearchResult>
"""

ARTICLE = """<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM" IndexingMethod="Automated">
<PMID Version="1">{pmid}</PMID><DateCompleted><Year>2024</Year><Month>01</Month><Day>15</Day></DateCompleted>
<Article PubModel="Print-Electronic"><Journal><ISSN IssnType="Electronic">1234-5678</ISSN>
<JournalIssue CitedMedium="Internet"><Volume>12</Volume><Issue>3</Issue><PubDate><Year>2024</Year></PubDate></JournalIssue>
<Title>Journal of Hepatology Cases</Title></Journal><ArticleTitle>{title}</ArticleTitle>
<Abstract><AbstractText Label="BACKGROUND" NlmCategory="BACKGROUND">{background}</AbstractText>
<AbstractText Label="RESULTS" NlmCategory="RESULTS">{results}</AbstractText></Abstract>
<Language>eng</Language><PublicationTypeList><PublicationType UI="D016428">Journal Article</PublicationType></PublicationTypeList>
</Article></MedlineCitation><PubmedData><PublicationStatus>ppublish</PublicationStatus>
<ArticleIdList><ArticleId IdType="pubmed">{pmid}</ArticleId></ArticleIdList></PubmedData></PubmedArticle>"""

EFETCH = """<?xml version="1.0" ?>
<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">
<PubmedArticleSet>
{articles}
</PubmedArticleSet>
"""

PMIDS = {"cholecystitis symptoms": ["38000001", "38000002"], "gallstone disease clinical presentation": []}


def eutils(flaky: list[int]) -> Any:
    def respond(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Any:
        if flaky:
            return flaky.pop(0), "text/plain", "Too Many Requests", 0
        if path.endswith("/esearch.fcgi"):
            term = query["term"][0]
            ids = "".join(f"<Id>{i}</Id>\n" for i in PMIDS[term])
            return 200, "text/xml", ESEARCH.format(count=len(PMIDS[term]), ids=ids, query=term), 0
        if path.endswith("/efetch.fcgi"):
            articles = "\n".join(
                ARTICLE.format(
                    pmid=p,
                    title=f"Acute cholecystitis series {p}",
                    background="Right upper quadrant pain after fatty meals is typical.",
                    results="Fever and a positive Murphy sign were seen in most patients.",
                )
                for p in query["id"][0].split(",")
            )
            return 200, "text/xml", EFETCH.format(articles=articles), 0
        return 404, "text/plain", "not found", 0

    return respond


def pubmed_cfg(cfg: dict[str, Any], url: str) -> dict[str, Any]:
    cfg["organs"] = ["gallbladder"]
    cfg["retrieve"]["pubmed"].update(
        {
            "email": "corpus@example.org",
            "base_url": url + "/entrez/eutils/",
            "sleep_between_tries": 0.01,
            "max_tries": 3,
            "queries": {"gallbladder": list(PMIDS)},
        }
    )
    return cfg


def test_pubmed_esearch_efetch_with_429_retry_and_empty_query(
    cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NCBI_API_KEY", "ncbi-SECRET-key")
    with Loopback(eutils([429])) as server:
        records = retrieve_pubmed(pubmed_cfg(cfg, server.url))
    assert [r["provenance"]["identifier"] for r in records] == ["PMID:38000001", "PMID:38000002"]
    first = records[0]
    assert first["organ"] == "gallbladder" and first["group"] == "PMID:38000001"
    assert first["text"].startswith("Right upper quadrant pain") and "Murphy sign" in first["text"]
    assert first["provenance"]["query"] == "cholecystitis symptoms" and first["provenance"]["retrieved_at"].endswith(
        "Z"
    )
    assert "ncbi-SECRET-key" not in json.dumps(records)
    sent = server.requests[1]["query"]
    assert sent["tool"] == ["med-sora-dataset-builder"] and sent["email"] == ["corpus@example.org"]
    assert sent["api_key"] == ["ncbi-SECRET-key"] and sent["db"] == ["pubmed"]
    assert "no results" in caplog.text and "gallstone disease clinical presentation" in caplog.text


def test_pubmed_server_error_is_a_stage_error(cfg: dict[str, Any]) -> None:
    with Loopback(eutils([500, 500, 500])) as server:
        with pytest.raises(StageError) as err:
            retrieve_pubmed(pubmed_cfg(cfg, server.url))
    assert str(err.value).startswith("[retrieve] gallbladder/'cholecystitis symptoms':") and server.url in str(
        err.value
    )


EXTRACT = (
    "Cholecystitis is inflammation of the gallbladder. Symptoms include right upper abdominal pain, "
    "nausea, vomiting, and occasionally fever.[1]\n\n"
    "== Signs and symptoms ==\nMost people with cholecystitis have pain in the right upper part of the "
    "abdomen. The pain often lasts more than a few hours and may follow a heavy meal.\n\n"
    "=== Complications ===\nJaundice may occur when a stone blocks the common bile duct.\n\n"
    "== References ==\nSmith J (2019). Gallbladder disease. Lancet.\n"
)


def mediawiki(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Any:
    title = query["titles"][0]
    if title == "No such page":
        return (
            200,
            "application/json",
            json.dumps({"batchcomplete": "", "query": {"pages": {"-1": {"ns": 0, "title": title, "missing": ""}}}}),
            0,
        )
    page: dict[str, Any] = {"pageid": 1139648, "ns": 0, "title": title}
    if query["prop"] == ["extracts"]:
        page["extract"] = EXTRACT
    else:
        page.update(
            {
                "contentmodel": "wikitext",
                "pagelanguage": "en",
                "touched": "2026-10-01T12:00:00Z",
                "lastrevid": 1250001234,
                "length": 24000,
                "fullurl": f"https://en.wikipedia.org/wiki/{title}",
            }
        )
    return 200, "application/json", json.dumps({"batchcomplete": "", "query": {"pages": {"1139648": page}}}), 0


def test_wikipedia_sections_with_revision_and_missing_page(
    cfg: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    cfg["organs"] = ["gallbladder"]
    cfg["retrieve"]["wikipedia"].update({"api_url": None, "pages": {"gallbladder": ["Cholecystitis", "No such page"]}})
    with Loopback(mediawiki) as server:
        cfg["retrieve"]["wikipedia"]["api_url"] = server.url + "/w/api.php"
        records = retrieve_wikipedia(cfg)
    titles = [r["title"] for r in records]
    assert titles == [
        "Cholecystitis: Summary",
        "Cholecystitis: Signs and symptoms",
        "Cholecystitis: Signs and symptoms / Complications",
    ]
    assert all("References" not in t for t in titles)
    prov = records[1]["provenance"]
    assert prov["revision"] == 1250001234 and prov["identifier"] == "Cholecystitis#Signs and symptoms@rev1250001234"
    assert server.requests[0]["path"] == "/w/api.php"
    assert server.requests[0]["headers"]["user-agent"].startswith("med-sora-dataset-builder/0.1")
    assert "No such page" in caplog.text


def test_wikipedia_http_errors_are_retried_then_reported(cfg: dict[str, Any]) -> None:
    calls = []

    def failing(method: str, path: str, query: Any, body: bytes) -> Any:
        calls.append(path)
        return 503, "text/html", "<html>Service Unavailable</html>", 0

    cfg["organs"] = ["gallbladder"]
    cfg["retrieve"]["wikipedia"].update(
        {"retry_wait": 0.01, "max_retries": 2, "pages": {"gallbladder": ["Cholecystitis"]}}
    )
    with Loopback(failing) as server:
        cfg["retrieve"]["wikipedia"]["api_url"] = server.url + "/w/api.php"
        with pytest.raises(StageError) as err:
            retrieve_wikipedia(cfg)
    assert len(calls) == 3 and "[retrieve] gallbladder/'Cholecystitis':" in str(err.value)
    assert server.url in str(err.value)


def test_pubmed_garbage_xml_is_a_stage_error(cfg: dict[str, Any]) -> None:
    with Loopback(lambda *a: (200, "text/xml", "<html><body>Service temporarily unavailable", 0)) as server:
        with pytest.raises(StageError) as err:
            retrieve_pubmed(pubmed_cfg(cfg, server.url))
    assert "not valid E-utilities XML" in str(err.value) and "cholecystitis symptoms" in str(err.value)

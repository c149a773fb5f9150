"""LLM mode against a loopback OpenAI-compatible server: schema answers, retries, cache, skipped records, secrets."""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import pytest
from loopback_servers import Loopback, chat_completion, openai_error

from dataset_builder.errors import StageError
from dataset_builder.io import read_jsonl
from dataset_builder.pipeline import run_stage, stage_path, write_stage_file

SECRET = "sk-test-SECRET-do-not-leak-1234"


def llm_cfg(cfg: dict[str, Any], url: str, **llm: Any) -> dict[str, Any]:
    cfg["mode"] = "llm"
    cfg["llm"].update(
        {
            "base_url": url + "/v1",
            "backoff_base": 0.01,
            "timeout": 2.0,
            "max_retries": 3,
            "invalid_retries": 1,
            "texts_per_chunk": 2,
            **llm,
        }
    )
    return cfg


def chunk(i: int, organ: str = "liver") -> dict[str, Any]:
    return {
        "id": f"c{i}",
        "doc_id": f"d{i}",
        "chunk": 0,
        "organ": organ,
        "domain": "organ",
        "source": "pubmed",
        "kind": "abstract",
        "title": f"Title {i}",
        "findings": [],
        "group": f"PMID:{1000 + i}",
        "text": f"Patients presented with jaundice and dark urine (case {i}). Pruritus was common.",
        "provenance": {"source": "pubmed", "identifier": f"PMID:{1000 + i}", "retrieved_at": "2026-01-01T00:00:00Z"},
    }


def schema_name(body: bytes) -> str:
    return json.loads(body)["response_format"]["json_schema"]["name"]


def good_answer(body: bytes) -> str:
    """A valid answer for either stage, derived from the request so different chunks get different texts."""
    request = json.loads(body)
    prompt = request["messages"][-1]["content"]
    if schema_name(body) == "symptom_filter":
        return chat_completion(json.dumps({"about_symptoms": "jaundice" in prompt, "organs": ["liver", "gallbladder"]}))
    case = prompt.split("(case ")[1].split(")")[0]
    return chat_completion(
        json.dumps(
            {
                "texts": [
                    f"Yellow eyes and dark urine for {case} days.",
                    f"Itching all over, pale stools since day {case}.",
                ]
            }
        )
    )


@pytest.fixture
def stage_dir(tmp_path: Any) -> str:
    out = str(tmp_path / "corpus")
    write_stage_file(out, "chunk", [chunk(i) for i in range(3)])
    return out


def test_filter_and_generate_write_records_with_provenance_and_cache(
    cfg: dict[str, Any], stage_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(cfg["llm"]["api_key_env"], SECRET)
    with Loopback(lambda m, p, q, b: (200, "application/json", good_answer(b), 0)) as server:
        llm_cfg(cfg, server.url)
        with caplog.at_level(logging.DEBUG):
            first = run_stage("filter", cfg, stage_dir)
            gen = run_stage("generate", cfg, stage_dir)
        assert first["kept"] == 3 and first["llm"]["calls"] == 3 and first["llm"]["cache_hits"] == 0
        assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
        request = json.loads(server.requests[0]["body"])
        assert request["response_format"]["type"] == "json_schema"
        assert (
            "Does this text describe a patient's symptom or clinical observation?" in request["messages"][-1]["content"]
        )
        assert "Based ONLY on given" in json.loads(server.requests[3]["body"])["messages"][-1]["content"]
        texts = read_jsonl(stage_path(stage_dir, "generate"))
        assert gen["texts"] == len(texts) == 6
        assert texts[0]["labels"] == ["liver", "gallbladder"]
        prov = texts[0]["provenance"]
        assert prov["model"] == "local-model" and len(prov["prompt_hash"]) == 16 and prov["identifier"] == "PMID:1000"
        before = open(stage_path(stage_dir, "generate"), "rb").read()
        calls = len(server.requests)
        rerun = run_stage("generate", cfg, stage_dir)
        assert len(server.requests) == calls, "a rerun must be answered from the cache"
        assert rerun["llm"]["cache_hits"] == 3
        assert open(stage_path(stage_dir, "generate"), "rb").read() == before
    # the key appears nowhere on disk and in no log line
    for root, _, files in os.walk(stage_dir):
        for name in files:
            assert SECRET not in open(os.path.join(root, name), encoding="utf-8", errors="replace").read(), name
    assert SECRET not in caplog.text


def test_retries_429_500_garbage_and_timeouts_then_succeeds(cfg: dict[str, Any], stage_dir: str) -> None:
    script = [
        (429, "application/json", openai_error(429, "Rate limit reached"), 0),
        (500, "application/json", openai_error(500, "internal error"), 0),
        (200, "application/json", "<html>502 Bad Gateway</html>", 0),  # a proxy's garbage body
        (200, "application/json", "", 3.0),
    ]  # slower than the client timeout

    def respond(method: str, path: str, query: Any, body: bytes) -> Any:
        return script.pop(0) if script else (200, "application/json", good_answer(body), 0)

    with Loopback(respond) as server:
        stats = run_stage("filter", llm_cfg(cfg, server.url, timeout=0.5, max_retries=4), stage_dir)
    assert stats["kept"] == 3 and stats["llm"]["retries"] == 4


def test_schema_invalid_answers_are_retried_then_skipped(
    cfg: dict[str, Any], stage_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    def respond(method: str, path: str, query: Any, body: bytes) -> Any:
        prompt = json.loads(body)["messages"][-1]["content"]
        if "case 1)" in prompt:
            return 200, "application/json", chat_completion("{not json at all"), 0
        if "case 2)" in prompt:
            return 200, "application/json", chat_completion(json.dumps({"about_symptoms": "yes"})), 0
        return 200, "application/json", good_answer(body), 0

    with Loopback(respond) as server:
        stats = run_stage("filter", llm_cfg(cfg, server.url), stage_dir)
    assert stats["kept"] == 1
    assert stats["dropped"] == {"schema-invalid answer": 2}
    assert stats["llm"]["invalid"] == 4 and stats["llm"]["skipped"] == 2
    assert "[filter] c1: skipped after 2 schema-invalid answers" in caplog.text
    assert [c["id"] for c in read_jsonl(stage_path(stage_dir, "filter"))] == ["c0"]


def test_server_error_that_persists_names_stage_record_and_url(
    cfg: dict[str, Any], stage_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cfg["llm"]["api_key_env"], SECRET)
    with Loopback(lambda *a: (503, "application/json", openai_error(503, "overloaded"), 0)) as server:
        with pytest.raises(StageError) as err:
            run_stage("filter", llm_cfg(cfg, server.url, max_retries=1), stage_dir)
    message = str(err.value)
    assert message.startswith("[filter] c0:") and server.url in message and "HTTP 503" in message
    assert SECRET not in message


def test_unreachable_endpoint_is_a_clear_error_without_the_key(
    cfg: dict[str, Any], stage_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cfg["llm"]["api_key_env"], SECRET)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(StageError) as err:
        run_stage("filter", llm_cfg(cfg, url, max_retries=1), stage_dir)
    assert f"LLM endpoint {url}/v1 is unreachable" in str(err.value) and SECRET not in str(err.value)

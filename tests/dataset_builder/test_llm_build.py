"""The LLM mode end to end: PubMed and Wikipedia retrieval, LLM filter and generation, dedup, split,
all against loopback servers; a rerun is answered from the cache and writes the same files."""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import pytest
from loopback_servers import Loopback, chat_completion
from test_sources_http import eutils, mediawiki, pubmed_cfg

from dataset_builder.io import read_jsonl
from dataset_builder.pipeline import STAGES, run_stage

POOL = [
    "Colicky pain under the right ribs after fatty meals.",
    "Fever with chills and a tender right upper abdomen.",
    "Nausea and vomiting after dinner, pain radiating to the right shoulder blade.",
    "Yellow eyes, dark urine and pale stools for a week.",
    "Itching all over the body with clay-coloured stool.",
    "Sharp pain on deep inspiration when the examiner presses below the right costal margin.",
    "Bloating and belching after heavy meals for months.",
    "Low-grade temperature, loss of appetite and malaise.",
    "Constant aching in the upper right abdomen for six hours.",
    "Episodes of severe pain that wake the patient at night.",
    "Intolerance of greasy food with recurrent indigestion.",
    "Tachycardia and guarding in the right upper quadrant.",
]


def llm(method: str, path: str, query: Any, body: bytes) -> Any:
    request = json.loads(body)
    prompt = request["messages"][-1]["content"]
    if request["response_format"]["json_schema"]["name"] == "symptom_filter":
        return (
            200,
            "application/json",
            chat_completion(
                json.dumps(
                    {"about_symptoms": "pain" in prompt or "Jaundice" in prompt, "organs": ["gallbladder", "liver"]}
                )
            ),
            0,
        )
    seed = zlib.crc32(prompt.encode())  # distinct chunks get distinct texts
    texts = [POOL[(seed + 5 * k) % len(POOL)] for k in range(2)] + ["The gallbladder is tender and distended."]
    return 200, "application/json", chat_completion(json.dumps({"texts": texts})), 0


def test_llm_mode_build_and_cached_rerun(cfg: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSORA_LLM_API_KEY", "sk-loopback-SECRET")
    out = str(tmp_path / "corpus")
    with Loopback(eutils([])) as pubmed, Loopback(mediawiki) as wiki, Loopback(llm) as server:
        cfg = pubmed_cfg(cfg, pubmed.url)
        cfg["mode"] = "llm"
        cfg["retrieve"]["sources"] = ["pubmed", "wikipedia"]
        cfg["retrieve"]["wikipedia"].update(
            {"api_url": wiki.url + "/w/api.php", "pages": {"gallbladder": ["Cholecystitis"]}}
        )
        cfg["llm"].update({"base_url": server.url + "/v1", "backoff_base": 0.01, "texts_per_chunk": 3})
        cfg["split"]["texts_per_organ"] = 10
        for stage in STAGES:
            run_stage(stage, cfg, out)
        first = {
            name: open(os.path.join(out, name), "rb").read() for name in ("train.jsonl", "test.jsonl", "summary.json")
        }
        calls = len(server.requests)
        before = json.loads(first["summary.json"])
        assert before["llm_calls"] == calls
        for stage in STAGES[2:]:
            run_stage(stage, cfg, out)
        assert len(server.requests) == calls, "the rerun must not call the endpoint again"
    summary = json.load(open(os.path.join(out, "summary.json"), encoding="utf-8"))
    assert summary["llm_calls"] == 0
    assert summary["llm_cache_hits"] == before["llm_cache_hits"] + calls
    for name, data in first.items():
        if name != "summary.json":
            assert open(os.path.join(out, name), "rb").read() == data, name
    train, test = read_jsonl(os.path.join(out, "train.jsonl")), read_jsonl(os.path.join(out, "test.jsonl"))
    assert train and test
    assert not {r["group"] for r in train} & {r["group"] for r in test}
    assert all("gallbladder" not in r["text"].lower() for r in test)
    assert {r["source"] for r in train + test} <= {"pubmed", "wikipedia"}
    prov = (train + test)[0]["provenance"]
    assert prov["method"] == "llm" and prov["model"] == "local-model" and prov["prompt_hash"]
    assert test[0]["labels"] == ["gallbladder", "liver"]
    for root, _, files in os.walk(out):
        for name in files:
            assert "sk-loopback-SECRET" not in open(os.path.join(root, name), encoding="utf-8").read()

"""kill -9 in the middle of a stage, then rerun: no duplicated or lost records, same bytes as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import yaml
from loopback_servers import Loopback, chat_completion

from dataset_builder.io import Checkpoint, read_jsonl
from dataset_builder.pipeline import stage_path, write_stage_file

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
N = 30


def respond(method: str, path: str, query: Any, body: bytes) -> Any:
    prompt = json.loads(body)["messages"][-1]["content"]
    case = prompt.split("(case ")[1].split(")")[0]
    texts = {"texts": [f"Dark urine and yellow eyes, case {case}.", f"Itching and pale stools, case {case}."]}
    return 200, "application/json", chat_completion(json.dumps(texts)), 0.05


def prepare(tmp: str, cfg: dict[str, Any], url: str) -> tuple[str, str]:
    cfg["mode"] = "llm"
    cfg["llm"].update({"base_url": url + "/v1", "backoff_base": 0.01, "texts_per_chunk": 2})
    os.makedirs(tmp, exist_ok=True)
    config = os.path.join(tmp, "config.yaml")
    with open(config, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    out = os.path.join(tmp, "corpus")
    chunks = [
        {
            "id": f"c{i:03d}",
            "organ": "liver",
            "domain": "organ",
            "source": "pubmed",
            "kind": "abstract",
            "title": "t",
            "findings": [],
            "group": f"PMID:{i}",
            "filter": {"organs": ["liver"]},
            "text": f"Jaundice and dark urine were reported (case {i}).",
            "provenance": {"source": "pubmed", "identifier": f"PMID:{i}", "retrieved_at": "2026-01-01T00:00:00Z"},
        }
        for i in range(N)
    ]
    write_stage_file(out, "filter", chunks)
    return config, out


def generate(config: str, out: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dataset_builder", "generate", "--config", config, "--out", out],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_kill_mid_stage_then_resume(tmp_path: Any, cfg: dict[str, Any]) -> None:
    with Loopback(respond) as server:
        config, out = prepare(str(tmp_path / "a"), cfg, server.url)
        partial = stage_path(out, "generate") + ".partial"
        proc = generate(config, out)
        deadline = time.time() + 60
        while time.time() < deadline and (not os.path.exists(partial) or open(partial).read().count("\n") < 8):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not os.path.exists(stage_path(out, "generate")), "no output before the stage finishes"
        done_before = open(partial).read().count("\n")
        assert 8 <= done_before < N
        assert generate(config, out).wait(timeout=120) == 0
        calls_interrupted = len(server.requests)

        ref_config, ref_out = prepare(str(tmp_path / "b"), cfg, server.url)
        assert generate(ref_config, ref_out).wait(timeout=120) == 0

    records = read_jsonl(stage_path(out, "generate"))
    assert len(records) == 2 * N and len({r["id"] for r in records}) == 2 * N
    assert open(stage_path(out, "generate"), "rb").read() == open(stage_path(ref_out, "generate"), "rb").read()
    assert not os.path.exists(partial)
    # only the chunk in flight at the kill can have been asked twice
    assert calls_interrupted <= N + 1


def test_checkpoint_ignores_a_torn_last_line(tmp_path: Any) -> None:
    out = str(tmp_path / "x.jsonl")
    cp = Checkpoint(out)
    cp.add("a", [{"v": 1}])
    cp.finish([])
    with open(cp.path, "a", encoding="utf-8") as f:
        f.write('{"key": "b", "records": [{"v"')  # what a kill in the middle of a write leaves
    resumed = Checkpoint(out)
    assert set(resumed.done) == {"a"}
    resumed.add("b", [{"v": 2}])
    assert resumed.finish(["a", "b"]) == [{"v": 1}, {"v": 2}]
    assert set(Checkpoint(out).done) == {"a", "b"}


def test_checkpoint_of_other_input_is_not_reused(tmp_path: Any) -> None:
    out = str(tmp_path / "x.jsonl")
    cp = Checkpoint(out, "input-1")
    cp.add("a", [{"v": 1}])
    cp.finish([])
    assert set(Checkpoint(out, "input-1").done) == {"a"}
    assert Checkpoint(out, "input-2").done == {}

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Latency and throughput of the ``query`` workflow's model on text-only queries.

Run from the repository root (uses the weights in ``bundle/models`` unless ``--ckpt_dir`` says otherwise)::

    python bench/query_benchmark.py
    python bench/query_benchmark.py --single 500 --batch 1000 --output_json query_bench.json

The model is loaded once (with the text index of the fused scorer); then single queries are answered one at a time,
evidence included (p50 / p95 latency, the way an interactive user sends them) and a batch of queries is answered as a
``--queries_file`` is (total time). ``--query_scorer paper`` times the paper's scorer. Texts are drawn from the
shipped test split so that their lengths are realistic.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = REPO_ROOT / "bundle"


def load_query_model(ckpt_dir: str, scorer: str = "fused"):
    """The ``query_model`` of ``inference.yaml`` with its weights, built as the workflow builds it."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_DIR / "configs" / "inference.yaml"))
    parser["ckpt_dir"] = ckpt_dir
    parser["query_scorer"] = scorer
    return parser.get_parsed_content("query_model")


def sample_texts(count: int) -> list[str]:
    from medsora.text.corpus import default_corpus_dir

    with open(Path(default_corpus_dir()) / "test.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return [texts[i % len(texts)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_dir", default=str(BUNDLE_DIR / "models"))
    parser.add_argument("--single", type=int, default=300, help="single queries timed one by one")
    parser.add_argument("--batch", type=int, default=1000, help="queries answered together")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--query_scorer", default="fused", choices=["fused", "paper"])
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    query = load_query_model(args.ckpt_dir, args.query_scorer)
    query.score_with_evidence(["warm-up"])
    load_s = time.perf_counter() - start
    texts = sample_texts(max(args.single, args.batch) + args.warmup)
    for text in texts[: args.warmup]:
        query.answer(*(column[0] for column in query.score_with_evidence([text])))
    latencies = []
    for text in texts[args.warmup : args.warmup + args.single]:
        t0 = time.perf_counter()
        query.answer(*(column[0] for column in query.score_with_evidence([text])))
        latencies.append((time.perf_counter() - t0) * 1000.0)
    t0 = time.perf_counter()
    answers = [query.answer(*answer) for answer in zip(*query.score_with_evidence(texts[: args.batch]))]
    batch_s = time.perf_counter() - t0
    cuts = statistics.quantiles(latencies, n=20)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "scorer": query.scorer,
        "model_load_s": round(load_s, 2),
        "single_query_ms": {
            "p50": round(statistics.median(latencies), 2),
            "p95": round(cuts[18], 2),
            "n": len(latencies),
        },
        "batch": {
            "queries": len(answers),
            "seconds": round(batch_s, 2),
            "queries_per_s": round(len(answers) / batch_s, 1),
        },
    }
    print(json.dumps(result, indent=1))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

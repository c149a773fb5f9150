"""Command line: `python -m dataset_builder <stage|build|clinical|verify> --config CONFIG --out DIR [--key.path=v]`."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import fire

from .config import DEFAULT_CONFIG, load_config
from .errors import StageError
from .pipeline import build, run_stage
from .reproduce import verify


def _setup_logging(out: str) -> None:
    """Warnings to stderr and to <out>/stages/build.log."""
    os.makedirs(os.path.join(out, "stages"), exist_ok=True)
    handlers = [
        logging.StreamHandler(),
        logging.FileHandler(os.path.join(out, "stages", "build.log"), encoding="utf-8"),
    ]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", handlers=handlers, force=True)
    for noisy in ("httpx", "openai", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_summary(stats: dict[str, Any], organs: list[str]) -> None:
    counts = stats.get("counts", {})
    print("organ            train  test")
    for organ in organs:
        print(f"{organ:<16} {counts['train'][organ]:>5} {counts['test'].get(organ, 0):>5}")
    for name in ("ood_test", "ood_train"):
        by_branch = counts.get(name, {})
        print(f"{name}: {sum(by_branch.values())} ({', '.join(f'{b} {n}' for b, n in by_branch.items())})")
    clinical = stats.get("clinical") or {}
    for name in ("clinical_train", "clinical_ood_train"):
        if name in clinical:
            print(
                f"{name}: {sum(clinical[name].values())} ({', '.join(f'{k} {n}' for k, n in clinical[name].items())})"
            )
    for stage, reasons in stats.get("dropped", {}).items():
        for reason, n in reasons.items():
            print(f"dropped [{stage}] {reason}: {n}")
    print(f"LLM calls: {stats.get('llm_calls', 0)}, cache hits: {stats.get('llm_cache_hits', 0)}")


class Commands:
    """Build the Med-SORA symptom corpus; every stage is also a command of its own.

    Fire hands every flag to this constructor, so the options of single commands are taken here (``corpus`` is
    ``verify``'s) and every other ``--key.path=value`` must name a config key.
    """

    def __init__(
        self,
        config: str = DEFAULT_CONFIG,
        out: str = "data/corpus",
        corpus: str = os.path.join(os.path.dirname(__file__), "corpus"),
        **overrides: Any,
    ) -> None:
        self._config, self._out, self._corpus, self._overrides = config, out, corpus, overrides
        load_config(config, **overrides)  # a misspelt key fails before any command runs

    def _run(self, stage: str) -> None:
        cfg = load_config(self._config, **self._overrides)
        _setup_logging(self._out)
        stats = run_stage(stage, cfg, self._out)
        logging.info("[%s] %s", stage, stats)

    def retrieve(self) -> None:
        """Stage 1: fetch source documents (HPO, ICD-10-CM, PubMed, Wikipedia) with provenance."""
        self._run("retrieve")

    def chunk(self) -> None:
        """Stage 2: 2-3 sentence chunks, boilerplate removed."""
        self._run("chunk")

    def filter(self) -> None:
        """Stage 3: keep chunks about symptoms (LLM) or usable findings (offline)."""
        self._run("filter")

    def generate(self) -> None:
        """Stage 4: patient-style symptom texts (LLM or offline templates)."""
        self._run("generate")

    def dedup(self) -> None:
        """Stage 5: exact and near-duplicate removal over the whole corpus."""
        self._run("dedup")

    def split(self) -> None:
        """Stage 6: grouped 8:2 split, leakage filter, test labels, out-of-domain files, datasheet."""
        self._run("split")

    def build(self) -> None:
        """All stages in order, then the summary."""
        cfg = load_config(self._config, **self._overrides)
        _setup_logging(self._out)
        _print_summary(build(cfg, self._out), cfg["organs"])

    def clinical(self) -> None:
        """Stage 7: texts in clinician and patient phrasing from the presentation table -> clinical_train.jsonl,
        clinical_ood_train.jsonl."""
        cfg = load_config(self._config, **self._overrides)
        _setup_logging(self._out)
        stats = run_stage("clinical", cfg, self._out)
        for name in ("clinical_train", "clinical_ood_train"):
            counts = stats[name]
            print(f"{name}.jsonl: {sum(counts.values())} texts ({', '.join(f'{k} {n}' for k, n in counts.items())})")

    def verify(self) -> None:
        """Rebuild offline into --out and check the published files of --corpus (the shipped corpus) byte for byte."""
        cfg = load_config(self._config, **self._overrides)
        _setup_logging(self._out)
        differing = verify(cfg, self._corpus, self._out)
        if differing:
            sys.exit(f"[verify] differs from {self._corpus}: {', '.join(differing)}")
        print(f"[verify] {self._corpus} reproduced byte for byte")


def fire_arguments(args: list[str]) -> list[str]:
    """``--help`` / ``-h`` anywhere asks fire for help (``-- --help``): fire would hand a bare ``--help`` to the
    constructor as one more flag and run the command."""
    if "--" in args or not {"--help", "-h"} & set(args):
        return args
    return [arg for arg in args if arg not in ("--help", "-h")] + ["--", "--help"]


def main() -> None:
    """Entry point; a StageError ends the run with its message and exit status 1, no traceback."""
    try:
        fire.Fire(Commands, command=fire_arguments(sys.argv[1:]), name="python -m dataset_builder")
    except StageError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

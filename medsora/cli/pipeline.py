# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Bundle runs chained into a resumable pipeline: each stage runs once, and again only when what it depends on
changed, so an interrupted ``medsora demo`` or ``medsora train`` picks up at the stage it was in.

A finished stage leaves ``<run_dir>/.stages/<name>.json`` holding its fingerprint (the library version, the config
files' contents, the overrides and the fingerprints of the stages before it); a stage whose fingerprint and outputs
are on disk is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import medsora
from medsora.atomic_io import write_json_atomic
from medsora.cli.runner import config_path, run_workflow
from medsora.progress import format_duration

__all__ = ["Stage", "run_pipeline"]


@dataclass(frozen=True)
class Stage:
    """One bundle run of a pipeline.

    Args:
        name: a short identifier, used for the marker file.
        title: what the stage does, as printed.
        config_files: the bundle config files merged for the run (names under ``configs/``).
        run_id: the run list to execute.
        outputs: files the stage writes, relative to the run directory; a stage with one missing runs again.
        estimate_s: its usual duration on two CPU cores, printed before it starts.
        summary: ``run_dir -> str``, a one-line summary of the stage's result printed when it ends.
    """

    name: str
    title: str
    config_files: tuple[str, ...]
    run_id: str
    outputs: tuple[str, ...]
    estimate_s: float
    summary: Callable[[str], str] = field(default=lambda _: "", compare=False)


def _fingerprint(stage: Stage, bundle_root: str, overrides: Mapping[str, Any], previous: str) -> str:
    digest = hashlib.sha256(f"{medsora.__version__}\0{stage.run_id}\0{previous}\0".encode())
    for name in stage.config_files:
        with open(config_path(bundle_root, name), "rb") as f:
            digest.update(f.read())
    digest.update(json.dumps(dict(overrides), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _is_current(run_dir: str, stage: Stage, fingerprint: str) -> bool:
    marker = os.path.join(run_dir, ".stages", f"{stage.name}.json")
    try:
        with open(marker, encoding="utf-8") as f:
            recorded = json.load(f).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded == fingerprint and all(os.path.isfile(os.path.join(run_dir, out)) for out in stage.outputs)


def run_pipeline(
    stages: Sequence[Stage],
    bundle_root: str,
    run_dir: str,
    overrides: Mapping[str, Any],
    echo: Callable[[str], None] = print,
) -> float:
    """Run the stages in order into ``run_dir``, skipping the current ones; returns the elapsed seconds.

    Before each stage its number, title and usual duration are printed with the time elapsed so far; after it, the
    time it took, its summary and where its outputs are.
    """
    start = time.monotonic()
    previous = ""
    for number, stage in enumerate(stages, 1):
        prefix = f"[{number}/{len(stages)}]"
        fingerprint = _fingerprint(stage, bundle_root, overrides, previous)
        previous = fingerprint
        if _is_current(run_dir, stage, fingerprint):
            echo(f"{prefix} {stage.title}: up to date, skipped")
            continue
        elapsed = format_duration(time.monotonic() - start)
        echo(f"{prefix} {stage.title} (usually about {format_duration(stage.estimate_s)}; {elapsed} elapsed)")
        began = time.monotonic()
        run_workflow(bundle_root, stage.config_files, stage.run_id, overrides)
        missing = [out for out in stage.outputs if not os.path.isfile(os.path.join(run_dir, out))]
        if missing:
            raise RuntimeError(
                f"stage {stage.name!r} ({stage.run_id}) finished without writing {missing} in {run_dir}."
            )
        write_json_atomic(os.path.join(run_dir, ".stages", f"{stage.name}.json"), {"fingerprint": fingerprint})
        outputs = ", ".join(os.path.join(run_dir, out) for out in stage.outputs)
        summary = stage.summary(run_dir)
        took = format_duration(time.monotonic() - began)
        echo(f"{prefix} done in {took}{': ' + summary if summary else ''} -> {outputs}")
    return time.monotonic() - start

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Organ accuracy per phantom domain: how the image features transfer to phases, slice thicknesses, bodies and
coverages the network was not trained on, beside the domains it was (``run evaluate_domains``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medsora.atomic_io import write_json_atomic, write_text_atomic
from medsora.image.datalist import load_datalist
from medsora.image.features import OrganReadings, read_organs
from medsora.image.gate import ImageGate, load_image_gate
from medsora.image.phantom import generate_phantom_dataset
from medsora.image.reports import organ_report
from medsora.stages import load_weights

__all__ = ["domain_metrics", "evaluate_domains"]


def domain_metrics(readings: OrganReadings, gate: ImageGate) -> dict[str, Any]:
    """Accuracy, per-organ recall and confusion of the readings, and the share of organs the gate lets through."""
    organs = list(gate.organs)
    case, organ = torch.nonzero(readings.present, as_tuple=True)
    probabilities = readings.probabilities[case, organ]
    predicted = probabilities.argmax(dim=-1)
    confusion = torch.zeros(len(organs), len(organs), dtype=torch.long)
    confusion.index_put_((organ, predicted), torch.ones_like(organ), accumulate=True)
    passed = [
        gate.organ_report(organs[k], p.tolist())["source"] == "patient" for k, p in zip(organ.tolist(), probabilities)
    ]
    return {**organ_report(confusion, organs), "gate_passed": sum(passed) / max(1, len(passed))}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "domain"


def _markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "| domain | organ samples | accuracy | patient features used (gate) | lowest organ recall |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, r in results.items():
        recalls = {o: v for o, v in r["recall_per_organ"].items() if v is not None}
        worst = min(recalls, key=recalls.__getitem__)
        lines.append(
            f"| {name} | {r['samples']} | {100 * r['accuracy']:.1f} % | {100 * r['gate_passed']:.1f} % | "
            f"{worst} {recalls[worst]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_domains(
    network: nn.Module,
    weights: str,
    image_gate: str,
    preprocessing: Any,
    training_domains: Mapping[str, Any],
    rows: Mapping[str, Mapping[str, Any]],
    data_dir: str,
    output_file: str,
    report_file: str,
    num_cases: int = 10,
    seed: int = 100,
    shape: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Generate ``num_cases`` phantom CTs per row and score the trained network and its gate on them.

    Args:
        network: the image network; ``weights`` its trained weights; ``image_gate`` its gate file.
        preprocessing: the deterministic preprocessing (one sample per organ).
        training_domains: the ``phantom#domains`` the network was trained on.
        rows: row name -> overrides of ``training_domains`` (``{}``: the training domains themselves; e.g.
            ``{"phases": ["arterial"]}`` for the arterial phase alone).
        data_dir: where each row's cases are generated (one directory per row, reused when unchanged).
        output_file: every row's metrics, JSON; ``report_file``: the table, Markdown.
        num_cases: CTs per row; ``seed``: their seed (another than the training data's).
        shape: phantom matrix and minimum slice count (default: the generator's).
        device: where the network runs.
    """
    load_weights(network, weights)
    gate = load_image_gate(image_gate)
    results = {}
    for name, overrides in rows.items():
        kwargs = {} if shape is None else {"shape": shape}
        datalist = generate_phantom_dataset(
            os.path.join(data_dir, _slug(name)),
            num_cases=num_cases,
            num_validation=0,
            seed=seed,
            domains={**training_domains, **dict(overrides or {})},
            **kwargs,
        )
        items = load_datalist(datalist, "training")
        readings = read_organs(network, (preprocessing(dict(item)) for item in items), len(gate.organs), device)
        results[name] = domain_metrics(readings, gate)
        print(f"{name}: accuracy {results[name]['accuracy']:.3f}, gate {results[name]['gate_passed']:.3f}")
    write_json_atomic(output_file, results)
    write_text_atomic(report_file, _markdown(results))
    return results

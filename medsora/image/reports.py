# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Per-organ report of the image classifier: accuracy, per-organ recall and the confusion matrix."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from medsora.atomic_io import write_json_atomic
from medsora.image.gate import ImageGate, gate_warning, load_image_gate

__all__ = ["OrganReportWriter", "OrganPredictionWriter", "format_organ_report", "organ_report"]

logger = logging.getLogger(__name__)


def organ_report(confusion: torch.Tensor, organs: Sequence[str]) -> dict:
    """Accuracy, per-organ recall (``None`` for organs without samples) and the confusion matrix (rows: truth)."""
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    if confusion.shape != (len(organs), len(organs)):
        raise ValueError(f"confusion matrix of shape {tuple(confusion.shape)} does not match {len(organs)} organs.")
    per_organ = confusion.sum(dim=1)
    recall = {
        organ: (float(confusion[i, i] / per_organ[i]) if per_organ[i] > 0 else None) for i, organ in enumerate(organs)
    }
    total = float(per_organ.sum())
    return {
        "accuracy": float(confusion.trace() / total) if total else None,
        "samples": int(total),
        "samples_per_organ": {organ: int(per_organ[i]) for i, organ in enumerate(organs)},
        "recall_per_organ": recall,
        "confusion_matrix": {"organs": list(organs), "rows_are": "truth", "counts": confusion.long().tolist()},
    }


def format_organ_report(report: dict) -> str:
    """:func:`organ_report` for the terminal: the accuracy, then the confusion matrix with the organ names on its rows
    (the label map's organ) and columns (the network's prediction)."""
    organs = report["confusion_matrix"]["organs"]
    counts = report["confusion_matrix"]["counts"]
    accuracy = "n/a" if report["accuracy"] is None else f"{report['accuracy']:.3f}"
    width = max(len(organ) for organ in organs)
    lines = [
        f"organ accuracy {accuracy} on {report['samples']} organ samples",
        "confusion matrix (rows: the label map's organ, columns: the network's prediction):",
        " " * (width + 2) + " ".join(f"{organ:>{len(organ)}}" for organ in organs),
    ]
    for organ, row in zip(organs, counts):
        lines.append(f"  {organ:<{width}}" + "".join(f" {n:>{len(name)}}" for n, name in zip(row, organs)))
    return "\n".join(lines)


class OrganReportWriter:
    """Write :func:`organ_report` of the engine's confusion-matrix metric to a JSON file when the engine completes,
    and print it (:func:`format_organ_report`) with the file's path.

    Args:
        output_file: JSON file to write.
        organs: organ names in class-index order.
        metric_name: name of an ``ignite.metrics.ConfusionMatrix`` attached to the engine.
    """

    def __init__(self, output_file: str, organs: Sequence[str], metric_name: str = "val_confusion") -> None:
        self.output_file = output_file
        self.organs = list(organs)
        self.metric_name = metric_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        report = organ_report(engine.state.metrics[self.metric_name], self.organs)
        write_json_atomic(self.output_file, report)
        print(f"{format_organ_report(report)}\n-> {self.output_file}", flush=True)


class OrganPredictionWriter:
    """Collect the organ probabilities of every organ sample of a run and write them as one JSON file at the end.

    The file maps each CT to its organ samples: the organ the label map says it is, the classifier's probability for
    every organ, whether the organ reaches the scan's edge (``cut_at_edge``) and, with an image gate, what a query
    on this CT would do with it: ``source`` (``patient`` features or ``reference`` ones) and the ``confidence``
    the gate judged. Organs absent from a label map do not appear (they are never guessed). A CT with organs the
    network misreads gets one logged warning.

    Args:
        output_file: JSON file to write.
        organs: organ names in class-index order.
        image_gate: the gate file stored with the weights (``models/image_gate.json``); ``None``: no gate report.
    """

    def __init__(self, output_file: str, organs: Sequence[str], image_gate: str | None = None) -> None:
        self.output_file = output_file
        self.organs = list(organs)
        self.image_gate = image_gate
        self.cases: dict[str, dict] = {}

    def attach(self, engine: Engine) -> None:
        gate = None if self.image_gate is None else load_image_gate(self.image_gate)  # a missing file stops the run
        engine.add_event_handler(Events.STARTED, lambda _: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.write(gate))

    def collect(self, engine: Engine) -> None:
        for sample, output in zip(engine.state.batch, engine.state.output):
            image = str(sample["image"].meta.get("filename_or_obj", "image"))
            probabilities = [float(p) for p in output["pred"]]
            self.cases.setdefault(image, {})[sample["organ"]] = {
                "predicted": self.organs[max(range(len(probabilities)), key=probabilities.__getitem__)],
                "probabilities": dict(zip(self.organs, probabilities)),
                "cut_at_edge": bool(torch.as_tensor(sample.get("cut_at_edge", False)).any()),
            }

    def write(self, gate: ImageGate | None) -> None:
        if gate is not None:
            for image, organs in self.cases.items():
                report = {}
                for organ, entry in organs.items():
                    report[organ] = gate.organ_report(organ, list(entry["probabilities"].values()))
                    entry.update(source=report[organ]["source"], confidence=report[organ]["confidence"])
                warning = gate_warning(image, report)
                if warning:
                    logger.warning(warning)
        write_json_atomic(self.output_file, self.cases)
        samples = sum(len(organs) for organs in self.cases.values())
        print(f"organ predictions of {samples} organs on {len(self.cases)} CT(s) -> {self.output_file}", flush=True)

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Per-organ report of the image classifier: accuracy, per-organ recall and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from medsora.atomic_io import write_json_atomic

__all__ = ["OrganReportWriter", "OrganPredictionWriter", "organ_report"]


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


class OrganReportWriter:
    """Write :func:`organ_report` of the engine's confusion-matrix metric to a JSON file when the engine completes.

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
        write_json_atomic(self.output_file, organ_report(engine.state.metrics[self.metric_name], self.organs))


class OrganPredictionWriter:
    """Collect the organ probabilities of every organ sample of a run and write them as one JSON file at the end.

    The file maps each CT to its organ samples: the organ the label map says it is, and the classifier's
    probability for every organ. Organs absent from a label map do not appear (they are never guessed).

    Args:
        output_file: JSON file to write.
        organs: organ names in class-index order.
    """

    def __init__(self, output_file: str, organs: Sequence[str]) -> None:
        self.output_file = output_file
        self.organs = list(organs)
        self.cases: dict[str, dict] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, lambda _: write_json_atomic(self.output_file, self.cases))

    def collect(self, engine: Engine) -> None:
        for sample, output in zip(engine.state.batch, engine.state.output):
            image = str(sample["image"].meta.get("filename_or_obj", "image"))
            probabilities = [float(p) for p in output["pred"]]
            self.cases.setdefault(image, {})[sample["organ"]] = {
                "predicted": self.organs[max(range(len(probabilities)), key=probabilities.__getitem__)],
                "probabilities": dict(zip(self.organs, probabilities)),
            }

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The image gate: a patient's organ features are used only where the image network reads that organ.

An image network trained on the phantom may not recognise an organ of a real CT (another scanner, phase or
coverage). Its features of that organ then say nothing about the organ, and scoring a symptom text against them can
make the answer worse than the text alone. The gate keeps an organ's own features only when the network's prediction
agrees with the label map at a confidence at least as high as on the validation CTs it reads correctly; elsewhere the
organ takes the reference features, so its score is the text-only one. The threshold is calibrated when training
ends and stored next to the weights (``models/image_gate.json``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medsora.atomic_io import write_json_atomic
from medsora.image.features import OrganReadings, read_organs
from medsora.stages import load_weights, require_stage_file

__all__ = ["GATE_FILE", "ImageGate", "calibrate_image_gate", "gate_warning", "load_image_gate"]

GATE_FILE = "image_gate.json"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageGate:
    """When a patient's organ features are used.

    Args:
        threshold: the lowest confidence (the network's probability of the organ it predicts) at which they are, when
            the prediction is the organ the label map names; at least ``keep`` of the correctly classified validation
            organs reach it.
        organs: organ names in class-index order.
        keep: the share of correctly classified validation organs the threshold was calibrated to keep.
        validation: how it was calibrated: organ samples, accuracy, share kept.
    """

    threshold: float
    organs: tuple[str, ...]
    keep: float = 0.95
    validation: Mapping[str, Any] | None = None

    def organ_report(self, organ: str, probabilities: Sequence[float] | None) -> dict[str, Any]:
        """What an answer says of one organ: ``source`` (``patient`` or ``reference``) and the network's reading.

        Args:
            organ: the organ the label map names.
            probabilities: the network's probability of each organ for it, ``None`` when the label map lacks it.
        """
        if probabilities is None:
            return {"source": "reference", "predicted": None, "confidence": None}
        probabilities = [float(p) for p in probabilities]
        best = int(np.argmax(probabilities))
        predicted, confidence = self.organs[best], probabilities[best]
        source = "patient" if predicted == organ and confidence >= self.threshold else "reference"
        return {"source": source, "predicted": predicted, "confidence": round(confidence, 4)}

    def apply(self, readings: OrganReadings, reference: torch.Tensor, case: int = 0) -> tuple[torch.Tensor, dict]:
        """One CT's organ features to score against, and the ``image_features`` report of every organ.

        Args:
            readings: the network's readings of the CT (:func:`medsora.image.features.read_organs`).
            reference: ``(K, D, d)`` reference organ features, taken wherever the gate closes.
            case: the CT's row in ``readings``.
        """
        report = {
            organ: self.organ_report(
                organ, readings.probabilities[case, k].tolist() if readings.present[case, k] else None
            )
            for k, organ in enumerate(self.organs)
        }
        use = torch.tensor([report[organ]["source"] == "patient" for organ in self.organs])
        return torch.where(use[:, None, None], readings.features[case], reference.cpu()), report

    def save(self, path: str) -> str:
        record = {**asdict(self), "organs": list(self.organs)}
        write_json_atomic(path, record)
        return path


def load_image_gate(path: str) -> ImageGate:
    """The gate stored with the image network; a missing or malformed file names the command that writes it."""
    require_stage_file(path, "image gate")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        gate = ImageGate(
            threshold=float(record["threshold"]),
            organs=tuple(record["organs"]),
            keep=float(record.get("keep", 0.95)),
            validation=record.get("validation"),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"image gate {path} is not a gate file (expected JSON with 'threshold' and 'organs'): {e}"
        ) from e
    if not 0.0 <= gate.threshold <= 1.0:
        raise ValueError(f"image gate {path}: threshold must be in [0, 1], got {gate.threshold}.")
    return gate


def gate_warning(ct: str, report: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The one warning a CT gets when some of its organs fall back to the reference features (``None``: none)."""
    misread = [
        f"{organ} (read as {r['predicted']}, {r['confidence']:.2f})"
        for organ, r in report.items()
        if r["source"] == "reference" and r["predicted"] is not None
    ]
    if not misread:
        return None
    return (
        f"{ct}: the image network does not recognise {', '.join(misread)}; the reference features are used for "
        f"{'it' if len(misread) == 1 else 'them'}, so their scores are the text-only ones."
    )


def calibrate_image_gate(
    network: nn.Module,
    weights: str,
    cases: Iterable[Sequence[Mapping[str, Any]]],
    organs: Sequence[str],
    output_file: str,
    keep: float = 0.95,
    device: torch.device | str = "cpu",
) -> ImageGate:
    """Calibrate the gate's threshold on validation CTs and store it next to the weights.

    The threshold is the largest confidence that at least ``keep`` of the correctly classified validation organ
    samples reach: on CTs like those it was validated on, the gate passes what the network reads right.

    Args:
        network: the image network (built from the training config).
        weights: its trained weights (``models/model.pt``).
        cases: organ samples of each validation CT (e.g. the validation ``CacheDataset``).
        organs: organ names in class-index order.
        output_file: where the gate is written (``models/image_gate.json``).
        keep: share of the correctly classified validation organs that must pass, in ``(0, 1]``.
        device: where the network runs.
    """
    if not 0.0 < float(keep) <= 1.0:
        raise ValueError(f"image_gate#keep must be in (0, 1], got {keep}.")
    load_weights(network, weights)
    readings = read_organs(network, cases, len(organs), device)
    case, organ = torch.nonzero(readings.present, as_tuple=True)
    probabilities = readings.probabilities[case, organ]
    confidence, predicted = probabilities[torch.arange(len(organ)), organ], probabilities.argmax(dim=-1)
    correct = confidence[predicted == organ].sort().values
    if correct.numel() == 0:
        raise ValueError(
            f"the image network {weights} classifies none of the {len(organ)} validation organs correctly: there is "
            "nothing to calibrate the image gate on; train it longer."
        )
    threshold = float(correct[correct.numel() - math.ceil(float(keep) * correct.numel())])
    gate = ImageGate(
        threshold=threshold,
        organs=tuple(organs),
        keep=float(keep),
        validation={
            "organ_samples": int(len(organ)),
            "accuracy": round(float((predicted == organ).float().mean()), 4),
            "correct_kept": round(float((correct >= threshold).float().mean()), 4),
            "passed": round(float(((predicted == organ) & (confidence >= threshold)).float().mean()), 4),
        },
    )
    gate.save(output_file)
    logger.info(f"image gate: confidence threshold {threshold:.3f} -> {output_file} ({gate.validation})")
    return gate

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""A patient's own CT in a query: its organ features, and the probability map and picture of every answer."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsora.image.datalist import case_datalist
from medsora.image.features import read_organs
from medsora.image.gate import ImageGate, gate_warning
from medsora.query.scorer import OrganQuery

__all__ = ["PatientOrgans", "draw_answers", "patient_organ_features"]

logger = logging.getLogger(__name__)


@dataclass
class PatientOrgans:
    """A patient's organs as a query scores them.

    Attributes:
        features: ``(K, D, d)``: the patient's own features where the image gate passes, the reference elsewhere.
        image_features: per organ, ``source`` (``patient`` or ``reference``) with the network's ``predicted`` organ
            and ``confidence`` (both ``None`` for an organ the label map lacks).
        absent: organs the label map lacks.
        cut: organs that reach the edge of the scan (the scan covers them only partly).
    """

    features: torch.Tensor
    image_features: dict[str, dict[str, Any]]
    absent: list[str]
    cut: list[str]

    def note(self, answer: dict[str, Any]) -> None:
        """Add what the answer's scores rest on: ``image_features``, ``absent_organs``, ``cut_organs``."""
        answer["image_features"] = self.image_features
        answer["absent_organs"] = self.absent
        answer["cut_organs"] = self.cut


def patient_organ_features(
    query: OrganQuery,
    image_network: torch.nn.Module,
    preprocessing: Any,
    image: str,
    label: str,
    gate: ImageGate,
    device: Any = "cpu",
) -> PatientOrgans:
    """The organ features to score against on one patient's CT, through the image gate.

    An organ the network recognises (its prediction agrees with the label map at the gate's confidence) gets the
    patient's own features; any other organ, and one the label map lacks, keeps the reference features, so its score
    is the text-only one. One warning is logged for the CT when the network misreads some of its organs.
    """
    readings = read_organs(
        image_network, (preprocessing(dict(item)) for item in case_datalist(image, label)), len(query.organs), device
    )
    features, report = gate.apply(readings, query.aligner.reference)
    warning = gate_warning(image, report)
    if warning:
        logger.warning(warning)
    present, cut = readings.present[0].tolist(), readings.cut_at_edge[0].tolist()
    return PatientOrgans(
        features=features,
        image_features=report,
        absent=[organ for organ, here in zip(query.organs, present) if not here],
        cut=[organ for organ, edge in zip(query.organs, cut) if edge],
    )


def draw_answers(
    answers: list[dict[str, Any]],
    image: str,
    label: str,
    organ_labels: Mapping[str, Sequence[int]],
    maps_dir: str,
    patient: PatientOrgans,
) -> None:
    """Write the probability map and the pictures of every answered query; note them in the answers.

    Each answer gets ``probability_map`` (NIfTI), ``figure`` (axial and coronal PNG), ``figure_3d`` (the organ
    surfaces coloured by score, PNG) and ``view_3d`` (the same, an interactive HTML page that opens offline).
    """
    from monai.transforms import LoadImage

    from medsora.display import organ_probability_map, render_query_figure, save_probability_map
    from medsora.display3d import organ_surfaces, render_surface_figure, write_surface_html

    loader = LoadImage(image_only=True)
    ct, labels = loader(image), loader(label)
    affine = np.asarray(ct.affine, dtype=np.float64)
    ct_array, label_array = np.asarray(ct), np.asarray(labels)
    stem = os.path.basename(image).split(".")[0] or "ct"
    surfaces = organ_surfaces(label_array, affine, organ_labels)  # the label map's, in the CT's RAS mm
    for index, answer in enumerate(answers):
        if "error" in answer:
            continue
        patient.note(answer)
        base = os.path.join(maps_dir, f"{stem}_query{index:04d}")
        save_probability_map(
            organ_probability_map(label_array, organ_labels, answer["scores"]), affine, base + "_probability.nii.gz"
        )
        render_query_figure(
            ct_array, label_array, affine, organ_labels, answer["scores"], answer["text"], base + ".png"
        )
        render_surface_figure(surfaces, organ_labels, answer["scores"], answer["text"], base + "_3d.png")
        write_surface_html(surfaces, organ_labels, answer["scores"], answer["text"], base + "_3d.html")
        answer["probability_map"], answer["figure"] = base + "_probability.nii.gz", base + ".png"
        answer["figure_3d"], answer["view_3d"] = base + "_3d.png", base + "_3d.html"

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""A patient's own CT in a query: its organ features, and the probability map and picture of every answer."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medsora.image.datalist import case_datalist
from medsora.image.features import organ_feature_bank
from medsora.query.scorer import OrganQuery

__all__ = ["draw_answers", "patient_organ_features"]


def patient_organ_features(
    query: OrganQuery, image_network: torch.nn.Module, preprocessing: Any, image: str, label: str, device: Any = "cpu"
) -> tuple[torch.Tensor, list[str]]:
    """The organ features ``(K, D, d)`` to score against on one patient's CT, and the organs its label map lacks.

    An organ the label map holds gets the patient's own features; an absent one keeps the reference features, so
    every organ still has a score (and the answer lists it under ``absent_organs``).
    """
    features, present = organ_feature_bank(
        image_network, case_datalist(image, label), preprocessing, len(query.organs), device
    )
    features, present = features[0], present[0]
    organ_features = torch.where(present[:, None, None], features, query.aligner.reference.cpu())
    return organ_features, [organ for organ, here in zip(query.organs, present.tolist()) if not here]


def draw_answers(
    answers: list[dict[str, Any]],
    image: str,
    label: str,
    organ_labels: Mapping[str, Sequence[int]],
    maps_dir: str,
    absent: list[str],
) -> None:
    """Write the probability map and the picture of every answered query; note them in the answers."""
    from monai.transforms import LoadImage

    from medsora.display import organ_probability_map, render_query_figure, save_probability_map

    loader = LoadImage(image_only=True)
    ct, labels = loader(image), loader(label)
    affine = np.asarray(ct.affine, dtype=np.float64)
    ct_array, label_array = np.asarray(ct), np.asarray(labels)
    stem = os.path.basename(image).split(".")[0] or "ct"
    for index, answer in enumerate(answers):
        if "error" in answer:
            continue
        answer["absent_organs"] = absent
        base = os.path.join(maps_dir, f"{stem}_query{index:04d}")
        save_probability_map(
            organ_probability_map(label_array, organ_labels, answer["scores"]), affine, base + "_probability.nii.gz"
        )
        render_query_figure(
            ct_array, label_array, affine, organ_labels, answer["scores"], answer["text"], base + ".png"
        )
        answer["probability_map"], answer["figure"] = base + "_probability.nii.gz", base + ".png"

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Organ features of CTs from the trained image network: what the text side is aligned with and queries score
against, with the network's own reading of each organ (its prediction), which tells whether those features can be
trusted. The network is only read here; its weights come from ``run training``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medsora.image.networks import organ_probabilities

__all__ = ["OrganReadings", "organ_feature_bank", "read_organs"]


@dataclass
class OrganReadings:
    """What the image network reads of every organ of ``C`` CTs (``K`` organs; rows of absent organs are zero).

    Attributes:
        features: ``(C, K, D, d)`` fused organ features ``F_bar``.
        probabilities: ``(C, K, K)``: for the organ the label map calls ``k``, the network's probability of each organ.
        present: ``(C, K)`` which organs each label map holds.
        cut_at_edge: ``(C, K)`` which organs reach the edge of their scan (cut by the scan's coverage).
    """

    features: torch.Tensor
    probabilities: torch.Tensor
    present: torch.Tensor
    cut_at_edge: torch.Tensor


@torch.no_grad()
def read_organs(
    network: nn.Module,
    cases: Iterable[Sequence[Mapping[str, Any]]],
    num_organs: int,
    device: torch.device | str = "cpu",
) -> OrganReadings:
    """Features and predictions of every organ sample of every case, from one pass of the network.

    Args:
        network: trained ``MedSoraImageNet``.
        cases: per CT, its organ samples after the deterministic preprocessing (``label`` = class index, as
            ``OrganMaskd`` and ``SampleSlicesd`` give them; ``cut_at_edge`` is read when present).
        num_organs: number of organs.
        device: where the network runs.
    """
    network = network.to(device).eval()
    per_case: list[dict[int, tuple[torch.Tensor, torch.Tensor, bool]]] = []
    for samples in cases:
        case = {}
        for s in samples:
            features, logits = network.features_and_logits(s["image"].as_tensor()[None].to(device))
            cut = bool(torch.as_tensor(s.get("cut_at_edge", False)).any())
            case[int(s["label"].reshape(-1)[0])] = (features[0].cpu(), organ_probabilities(logits[0]).cpu(), cut)
        per_case.append(case)
    shape = next(f.shape for case in per_case for f, _, _ in case.values())
    readings = OrganReadings(
        features=torch.zeros(len(per_case), num_organs, *shape),
        probabilities=torch.zeros(len(per_case), num_organs, num_organs),
        present=torch.zeros(len(per_case), num_organs, dtype=torch.bool),
        cut_at_edge=torch.zeros(len(per_case), num_organs, dtype=torch.bool),
    )
    for c, case in enumerate(per_case):
        for organ, (features, probabilities, cut) in case.items():
            readings.features[c, organ], readings.probabilities[c, organ] = features, probabilities
            readings.present[c, organ], readings.cut_at_edge[c, organ] = True, cut
    return readings


def organ_feature_bank(
    network: nn.Module, datalist: Sequence[dict], transform: Any, num_organs: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused organ features ``F_bar`` of every organ of every CT, with which organs each label map holds.

    Args:
        network: trained ``MedSoraImageNet``.
        datalist: ``[{"image": ..., "label": ...}]`` CTs and their label maps.
        transform: deterministic preprocessing giving one sample per organ (``label`` = class index).
        num_organs: number of organs.
        device: where the network runs.

    Returns:
        ``features`` ``(C, num_organs, D, d)`` (zeros where an organ is absent) and ``present`` ``(C, num_organs)``.
    """
    readings = read_organs(network, (transform(dict(item)) for item in datalist), num_organs, device)
    return readings.features, readings.present

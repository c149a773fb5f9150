# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Organ features of CTs from the trained image network: what the text side is aligned with and queries score
against. The network is only read here; its weights come from ``run training``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["organ_feature_bank"]


@torch.no_grad()
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
    network = network.to(device).eval()
    per_case: list[dict[int, torch.Tensor]] = []
    for item in datalist:
        samples = transform(dict(item))
        per_case.append(
            {
                int(s["label"].reshape(-1)[0]): network.features(s["image"].as_tensor()[None].to(device))[0].cpu()
                for s in samples
            }
        )
    shape = next(f for case in per_case for f in case.values()).shape
    features = torch.zeros(len(per_case), num_organs, *shape)
    present = torch.zeros(len(per_case), num_organs, dtype=torch.bool)
    for c, case in enumerate(per_case):
        for organ, feature in case.items():
            features[c, organ], present[c, organ] = feature, True
    return features, present

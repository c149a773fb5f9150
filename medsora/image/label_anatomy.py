# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Does a label map, read in a label convention, show the abdomen's anatomy? A check of the convention, not of the map.

Label ids overlap between conventions (BTCV and TotalSegmentator both use 1 to 13), so a map in the wrong convention
passes every id check and silently swaps organs (BTCV's esophagus read as TotalSegmentator's liver). Four facts that
hold in nearly every abdomen tell the conventions apart: the liver lies on the patient's right of the spleen and of
the stomach, it is the largest of the seven organs, and of a paired organ's two ids (listed right first, as in BTCV
and TotalSegmentator) the first lies on the right. Only organ sizes and centroids are computed: one pass per organ id.
A liver that reaches the edge of the scan is partly outside it, so its size says nothing and is not compared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medsora.organs import label_convention

__all__ = ["anatomy_problems", "check_label_convention", "touches_edge"]

logger = logging.getLogger(__name__)


def touches_edge(mask: torch.Tensor) -> bool:
    """Whether a channel-first mask has a voxel on any face of its volume: the scan cut the structure."""
    spatial = mask.shape[1:]
    return any(
        bool(mask.narrow(axis + 1, 0, 1).any() or mask.narrow(axis + 1, size - 1, 1).any())
        for axis, size in enumerate(spatial)
    )


def _mask(label: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    return torch.isin(label, torch.tensor(list(ids), device=label.device))


def _measure(label: torch.Tensor, affine: np.ndarray | None, ids: Sequence[int]) -> tuple[int, float | None]:
    """Voxel count of ``ids`` in ``label`` ``(X, Y, Z)`` and the world x (RAS: larger is the patient's right) of their
    centroid; ``None`` without voxels or an affine."""
    mask = _mask(label, ids)
    count = int(mask.sum())
    if not count or affine is None:
        return count, None
    centroid = [
        float((mask.sum(dim=tuple(d for d in range(3) if d != axis)) * torch.arange(label.shape[axis])).sum()) / count
        for axis in range(3)
    ]
    return count, float(affine[0, :3] @ np.asarray(centroid) + affine[0, 3])


def anatomy_problems(
    label: torch.Tensor, affine: np.ndarray | None, organ_labels: Mapping[str, Sequence[int]]
) -> list[str]:
    """What in ``label`` (spatial ``(X, Y, Z)`` ids) read with ``organ_labels`` contradicts the abdomen's anatomy.

    Args:
        label: integer label map, three spatial axes.
        affine: its voxel-to-world (RAS) affine; ``None`` skips the left/right facts.
        organ_labels: organ -> label ids of the convention (paired organs: right id first).

    Returns:
        one sentence per contradicted fact; facts about an organ absent from the map are not checked, nor the liver's
        size when the scan cuts it.
    """
    measured = {organ: _measure(label, affine, ids) for organ, ids in organ_labels.items()}
    size = {organ: count for organ, (count, _) in measured.items() if count}
    x = {organ: at for organ, (_, at) in measured.items() if at is not None}
    problems = []
    for other in ("spleen", "stomach"):
        if "liver" in x and other in x and x["liver"] <= x[other]:
            problems.append(f"the liver (ids {list(organ_labels['liver'])}) lies left of the {other}")
    liver_cut = "liver" in size and touches_edge(_mask(label, organ_labels["liver"])[None])
    if "liver" in size and not liver_cut and max(size, key=size.get) != "liver":
        largest = max(size, key=size.get)
        problems.append(
            f"the liver is not the largest organ: the {largest} has {size[largest]} voxels to its {size['liver']}"
        )
    for organ, ids in organ_labels.items():
        if len(ids) == 2:
            right, left = (_measure(label, affine, [i])[1] for i in ids)
            if right is not None and left is not None and right <= left:
                problems.append(f"of the {organ}'s ids {list(ids)} (right, left) the first lies left of the second")
    return problems


def check_label_convention(
    label: torch.Tensor,
    affine: np.ndarray | None,
    organ_labels: Mapping[str, Sequence[int]],
    source: str,
    conventions: Mapping[str, Mapping[str, Any]] | None = None,
    chosen: str | None = None,
) -> None:
    """Refuse a label map that reads as anatomy in another of ``conventions`` but not in the chosen one; warn when it
    reads as anatomy in none (an unusual abdomen, a partial field of view).

    Args:
        label: integer label map ``(X, Y, Z)``; affine: its voxel-to-RAS affine (``None`` skips left/right facts).
        organ_labels: the chosen convention's organ -> ids.
        source: the label map's file, for messages.
        conventions: every configured convention (``label_conventions``), to name the likely one.
        chosen: the chosen convention's name.

    Raises:
        ValueError: naming the file, what contradicts the anatomy, and the convention it fits.
    """
    problems = anatomy_problems(label, affine, organ_labels)
    if not problems:
        return
    present = set(torch.unique(label).tolist()) - {0}
    fitting = []
    for name in conventions or {}:
        if name == chosen:
            continue
        other = label_convention(conventions, name)
        known = other["known_labels"]
        if (known is None or present <= set(known)) and not anatomy_problems(label, affine, other["organ_labels"]):
            fitting.append(name)
    read_as = f" read in label convention {chosen!r}" if chosen else ""
    if fitting:
        raise ValueError(
            f"label map {source}{read_as} contradicts the abdomen's anatomy ({'; '.join(problems)}), while read in "
            f"{' or '.join(map(repr, fitting))} it does not: pass --label_convention {fitting[0]}."
        )
    logger.warning(f"label map {source}{read_as}: {'; '.join(problems)}; check the label convention.")

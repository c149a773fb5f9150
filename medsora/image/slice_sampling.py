# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Slice sampling (paper section 3.3): ``D`` axial slices spread over an organ, resized to the encoder's input size.

CT scans have different numbers of slices per organ; sampling a fixed ``D`` makes every organ sample a
``(1, H, W, D)`` volume that both the 2D encoder (slice by slice) and the 3D encoder (as a whole) read.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple_rep
from torch.nn import functional as F

from medsora.image.organ_masking import source_name

__all__ = ["SampleSlicesd", "RandSampleSlicesd", "organ_extent", "even_slice_indices", "stratified_slice_indices"]


def organ_extent(mask: torch.Tensor) -> tuple[int, int]:
    """First and last axial index (inclusive) where the channel-first ``mask`` is non-zero."""
    occupied = torch.nonzero(mask.reshape(-1, mask.shape[-1]).any(dim=0)).flatten()
    if occupied.numel() == 0:
        raise ValueError("the organ mask is empty: no slice to sample.")
    return int(occupied[0]), int(occupied[-1])


def even_slice_indices(first: int, last: int, num_slices: int) -> np.ndarray:
    """``num_slices`` indices evenly spread from ``first`` to ``last``; short organs repeat slices."""
    return np.rint(np.linspace(first, last, num_slices)).astype(np.int64)


def stratified_slice_indices(first: int, last: int, num_slices: int, rng: np.random.RandomState) -> np.ndarray:
    """One random index inside each of ``num_slices`` equal bins covering ``first..last``: training-time jitter."""
    edges = np.linspace(first, last + 1, num_slices + 1)
    picks = edges[:-1] + rng.uniform(0.0, 1.0, num_slices) * (edges[1:] - edges[:-1])
    return np.clip(np.floor(picks), first, last).astype(np.int64)


def resize_slices(volume: torch.Tensor, spatial_size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize each axial slice of ``(C, h, w, D)`` to fit ``spatial_size`` keeping its aspect ratio, zero-padded."""
    channels, height, width, depth = volume.shape
    scale = min(spatial_size[0] / height, spatial_size[1] / width)
    new_size = (max(1, min(spatial_size[0], round(height * scale))), max(1, min(spatial_size[1], round(width * scale))))
    slices = volume.permute(3, 0, 1, 2).to(torch.float32)
    if mode == "nearest":
        slices = F.interpolate(slices, size=new_size, mode="nearest-exact")
    else:
        slices = F.interpolate(slices, size=new_size, mode=mode, align_corners=False, antialias=scale < 1)
    pad_h, pad_w = spatial_size[0] - new_size[0], spatial_size[1] - new_size[1]
    slices = F.pad(slices, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return slices.permute(1, 2, 3, 0).contiguous()


class SampleSlicesd(MapTransform):
    """Take ``num_slices`` axial slices evenly spread over the organ's extent and resize them to ``spatial_size``.

    Args:
        keys: keys to sample (the masked image and, usually, the organ mask).
        num_slices: ``D``, slices per organ.
        spatial_size: in-plane ``(H, W)`` of the 2D encoder.
        mask_key: key of the organ mask that defines the organ's axial extent.
        mode: interpolation per key, ``"bilinear"`` for images, ``"nearest"`` for masks.
        index_key: output key holding the sampled slice indices (relative to the organ crop).
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_slices: int,
        spatial_size: Sequence[int] | int,
        mask_key: str = "mask",
        mode: Sequence[str] | str = "bilinear",
        index_key: str = "slice_indices",
    ) -> None:
        super().__init__(keys)
        if num_slices < 1:
            raise ValueError(f"num_slices must be at least 1, got {num_slices}.")
        self.num_slices = num_slices
        self.spatial_size = ensure_tuple_rep(spatial_size, 2)
        self.mask_key = mask_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.index_key = index_key

    def choose_indices(self, first: int, last: int) -> np.ndarray:
        return even_slice_indices(first, last, self.num_slices)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        try:
            first, last = organ_extent(torch.as_tensor(d[self.mask_key]))
        except ValueError as e:
            raise ValueError(f"{source_name(d, self.mask_key)} ({d.get('organ', 'organ')}): {e}") from e
        indices = self.choose_indices(first, last)
        for key, mode in self.key_iterator(d, self.mode):
            volume = torch.as_tensor(d[key])[..., torch.from_numpy(indices)]
            d[key] = resize_slices(volume, self.spatial_size, mode)
        d[self.index_key] = torch.from_numpy(indices)
        return d


class RandSampleSlicesd(RandomizableTransform, SampleSlicesd):
    """Training variant of :class:`SampleSlicesd`: one random slice inside each of ``D`` equal bins of the organ."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        SampleSlicesd.__init__(self, *args, **kwargs)

    def choose_indices(self, first: int, last: int) -> np.ndarray:
        return stratified_slice_indices(first, last, self.num_slices, self.R)

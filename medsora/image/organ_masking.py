# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Organ masking (paper section 4.1): one masked organ crop per organ present in a CT's label map."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, SpatialCrop
from monai.transforms.utils import generate_spatial_bounding_box

from medsora.image.label_anatomy import check_label_convention, touches_edge
from medsora.organs import label_convention

__all__ = ["OrganMaskd", "label_convention", "source_name", "touches_edge"]  # label_convention: re-exported for configs

logger = logging.getLogger(__name__)

#: how far from a whole number a label map value may be (float storage) and still be an id
ID_TOLERANCE = 1e-3


def source_name(data: Mapping[Hashable, Any], key: Hashable) -> str:
    """The file an item was loaded from, for error messages; the key name when it was not loaded from a file."""
    meta = getattr(data.get(key), "meta", None) or {}
    return str(meta.get("filename_or_obj", key))


class OrganMaskd(MapTransform):
    """Split a CT and its label map into one sample per organ: crop to the organ's box, zero everything outside it.

    The label map's ids are mapped to organs by ``organ_labels`` (a config-level mapping, so BTCV, TotalSegmentator or
    a user's own ids need no code). The organ's position in ``organ_labels`` is its class index. An organ absent from
    the label map yields no sample and a warning: it is never guessed. A label map whose values are not whole ids,
    an image with NaN or infinite voxels, and a label map that shows the abdomen's anatomy only in another of
    ``label_conventions`` (``label_anatomy``) are refused, naming the file.

    Each output sample is a copy of the input dictionary where ``keys`` hold the masked crop, ``mask_key`` the organ's
    binary mask on the same crop, ``label_key`` the organ's class index (shape ``(1,)``), ``organ_key`` its name and
    ``edge_key`` whether the organ touches the edge of the scan (a scan that covers it only partly: its shape is cut).

    Args:
        keys: image keys to crop and mask.
        organ_labels: ordered mapping organ name -> label ids that make up the organ.
        label_key: key of the label map; replaced by the class index in the outputs.
        known_labels: every label id the convention may contain (organs, other structures, 0); other ids are an error.
            ``None`` skips this check.
        margin: voxels added around the organ's bounding box, per spatial axis.
        min_voxels: organs with fewer voxels are treated as absent.
        mask_key: output key of the cropped organ mask.
        organ_key: output key of the organ name.
        label_conventions: every configured convention (name -> ``organ_labels``, ``known_labels``), to name the
            one a label map fits when it contradicts the anatomy in the chosen one; ``None`` only warns.
        label_convention: the name of the chosen convention (the one ``organ_labels`` comes from).
        edge_key: output key of the flag telling that the organ reaches the scan's edge.
    """

    def __init__(
        self,
        keys: KeysCollection,
        organ_labels: Mapping[str, Sequence[int]],
        label_key: str = "label",
        known_labels: Sequence[int] | None = None,
        margin: Sequence[int] | int = 2,
        min_voxels: int = 1,
        mask_key: str = "mask",
        organ_key: str = "organ",
        label_conventions: Mapping[str, Mapping[str, Any]] | None = None,
        label_convention: str | None = None,
        edge_key: str = "cut_at_edge",
    ) -> None:
        super().__init__(keys)
        if not organ_labels:
            raise ValueError("organ_labels must map at least one organ name to its label ids.")
        self.organ_labels = {name: [int(i) for i in ids] for name, ids in organ_labels.items()}
        self.label_key = label_key
        self.known_labels = None if known_labels is None else {0, *map(int, known_labels)}
        self.margin = margin
        self.min_voxels = min_voxels
        self.mask_key = mask_key
        self.organ_key = organ_key
        self.label_conventions = label_conventions
        self.label_convention = label_convention
        self.edge_key = edge_key

    def _check(self, data: Mapping[Hashable, Any]) -> torch.Tensor:
        raw = torch.as_tensor(data[self.label_key])
        label = raw.round().long()
        label_file = source_name(data, self.label_key)
        off = (raw - label).abs() > ID_TOLERANCE
        if off.any():
            values = torch.unique(raw[off].float())
            raise ValueError(
                f"label map {label_file} holds {int(off.sum())} voxels whose values are not whole label ids "
                f"(e.g. {[round(v, 4) for v in values[:5].tolist()]}); a label map holds integer ids, not scaled or "
                "interpolated ones."
            )
        for key in self.key_iterator(data):
            if tuple(data[key].shape[1:]) != tuple(label.shape[1:]):
                raise ValueError(
                    f"image {source_name(data, key)} has spatial shape {tuple(data[key].shape[1:])} but label map "
                    f"{label_file} has {tuple(label.shape[1:])}; they must be on the same grid."
                )
            bad = ~torch.isfinite(torch.as_tensor(data[key]))
            if bad.any():
                raise ValueError(
                    f"image {source_name(data, key)} has {int(bad.sum())} voxels that are NaN or infinite (after "
                    "resampling); a CT holds finite Hounsfield units."
                )
        if self.known_labels is not None:
            unknown = sorted(set(torch.unique(label).tolist()) - self.known_labels)
            if unknown:
                raise ValueError(
                    f"label map {label_file} contains unknown label ids {unknown}; this label convention expects "
                    f"ids in {sorted(self.known_labels)}; is it in another label convention (--label_convention)?"
                )
        affine = getattr(data[self.label_key], "affine", None)
        check_label_convention(
            label[0],
            None if affine is None else np.asarray(affine, dtype=np.float64),
            self.organ_labels,
            label_file,
            self.label_conventions,
            self.label_convention,
        )
        return label

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        label = self._check(data)
        samples = []
        for index, (organ, ids) in enumerate(self.organ_labels.items()):
            mask = torch.isin(label, torch.tensor(ids, device=label.device))
            if int(mask.sum()) < self.min_voxels:
                logger.warning(
                    f"{organ} (label ids {ids}) is absent from {source_name(data, self.label_key)}: no sample."
                )
                continue
            start, end = generate_spatial_bounding_box(mask, margin=self.margin, allow_smaller=True)
            crop = SpatialCrop(roi_start=start, roi_end=end)
            organ_mask = crop(mask.to(torch.float32))
            sample = {k: v for k, v in data.items() if k != self.label_key}
            for key in self.key_iterator(data):
                sample[key] = crop(data[key]) * organ_mask
            sample[self.mask_key] = organ_mask
            sample[self.label_key] = torch.tensor([index], dtype=torch.long)
            sample[self.organ_key] = organ
            sample[self.edge_key] = touches_edge(mask)
            samples.append(sample)
        if not samples:
            raise ValueError(
                f"label map {source_name(data, self.label_key)} contains none of the organs "
                f"{list(self.organ_labels)} (ids {list(self.organ_labels.values())}); check the label convention."
            )
        return samples

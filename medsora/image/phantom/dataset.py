# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Synthetic abdominal CT in the BTCV layout: the bundle's default data when no real CT is at hand.

Each case is an abdomen (``anatomy`` places the structures, ``scanner`` paints and scans them) in a domain drawn
from ``domains`` (contrast phase, slice thickness, coverage, habitus, pathology; the reference is portal venous),
seeded from ``(seed, case index)`` so held-out cases test generalisation rather than memory. The anatomy of a case
does not depend on its domain, so one seed shows the same patient in every phase.

The written files mimic a downsampled BTCV CT: ``imagesTr/imgNNNN.nii.gz`` (int16 HU) and
``labelsTr/labelNNNN.nii.gz`` (uint8, BTCV label ids) stored LPS-like (diagonal affine with negative x and y
spacing, qform and sform codes set to scanner), plus a decathlon ``dataset_0.json`` with a ``"phantom"`` block
recording the generator parameters so that later calls can tell whether the data on disk is what they want.

Command line::

    python -m monai.bundle run prepare_data --config_file bundle/configs/train.yaml --phantom_dir DIR \
        --phantom#num_cases 30 --phantom#num_validation 6 --phantom#seed 0
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medsora.atomic_io import atomic_write, write_json_atomic
from medsora.image.phantom.anatomy import Z_MARGIN_MM, place_structures, sample_body
from medsora.image.phantom.domains import (
    REFERENCE_CASE,
    CaseDomain,
    Domains,
    apply_pathology_shapes,
    apply_phase,
    crop_coverage,
    paint_lesions,
)
from medsora.image.phantom.scanner import REFERENCE_SHAPE, Canvas, draw_body, finish, make_grid, paint, small_bowel

__all__ = [
    "BTCV_LABELS",
    "PHANTOM_VERSION",
    "case_domain",
    "generate_case",
    "generate_phantom_dataset",
    "ensure_phantom",
]

#: Bump whenever the generator's output changes, so that data written by an older version is not reused.
PHANTOM_VERSION = 2
DATALIST_NAME = "dataset_0.json"
_PROGRESS_NAME = ".phantom_in_progress.json"

logger = logging.getLogger(__name__)

#: BTCV (Synapse multi-organ) label ids.
BTCV_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal vein and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}


def _as_generator(rng_or_seed: np.random.Generator | int | Sequence[int]) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def generate_case(
    rng_or_seed: np.random.Generator | int | Sequence[int],
    shape: Sequence[int] = REFERENCE_SHAPE,
    p_missing_gallbladder: float = 0.0,
    domain: CaseDomain = REFERENCE_CASE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic abdominal CT and its BTCV label map.

    Args:
        rng_or_seed: a numpy Generator, or a seed (int or sequence such as ``(seed, case_index)``) for one, so that
            a case can be regenerated exactly.
        shape: in-plane matrix and minimum slice count. In-plane spacing is drawn from 2.6-3.2 mm scaled by
            128 / matrix size (so the field of view stays that of a 128-matrix BTCV downsample); slice spacing from
            {2.5, 3, 4, 5} mm scaled by 64 / ``shape[2]``; more slices are added whenever needed so that the whole
            abdomen, from above the diaphragm dome to below the lowest kidney pole, is in the volume.
        p_missing_gallbladder: probability that the case has no gallbladder (cholecystectomy), to exercise code on
            label maps that lack an organ.
        domain: contrast phase, scanner, coverage, habitus and pathologies (``Domains.draw``); the default is the
            reference portal-venous phantom. The domain's own draws come from ``domain.seed``.

    Returns:
        ``(image, label, affine)``: int16 HU array and uint8 label array of the same shape ``(X, Y, Z)`` in the
        stored voxel order, and the 4x4 voxel-to-RAS affine both share (negative x and y spacing, like BTCV).
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {shape}.")
    rng = _as_generator(rng_or_seed)
    domain_rng = np.random.default_rng(domain.seed)
    body = sample_body(rng, domain.habitus)
    structures = place_structures(rng, body, p_missing_gallbladder, domain.variation)
    apply_phase(structures, body, domain, domain_rng)
    structures = apply_pathology_shapes(structures, domain, domain_rng)
    kidneys = [s for s in structures if s.spec.label in (2, 3)]
    z_low = min(float(s.bounds()[0][2]) for s in kidneys) - Z_MARGIN_MM[1]
    z_high = max(float(apex[2]) for apex, _ in body.domes) + Z_MARGIN_MM[0]
    spacing = None if domain.slice_thickness_mm is None else max(domain.slice_thickness_mm, 2.0)
    grid = make_grid(rng, shape, (z_low, z_high), spacing)
    canvas = Canvas(grid, body, np.full(grid.shape, -1000.0, np.float32), np.zeros(grid.shape, np.uint8), {})
    draw_body(canvas, rng)
    for struct in small_bowel(rng, body) + structures:
        paint(canvas, struct)
    paint_lesions(canvas, structures, domain, domain_rng)
    image = finish(canvas, rng, domain.blur_vox, domain.slice_thickness_mm, domain.noise_hu, domain.noise_grain_vox)
    return crop_coverage(image, canvas.label, grid.affine.copy(), domain, domain_rng)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=1)  # scanner anatomical
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    atomic_write(path, lambda tmp: nib.save(img, tmp), ".nii.gz")


def _case_paths(index: int) -> dict[str, str]:
    return {"image": f"imagesTr/img{index:04d}.nii.gz", "label": f"labelsTr/label{index:04d}.nii.gz"}


def _phantom_params(seed, num_cases, num_validation, shape, p_missing_gallbladder, domains: Domains) -> dict[str, Any]:
    return {
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "num_cases": int(num_cases),
        "num_validation": int(num_validation),
        "shape": [int(s) for s in shape],
        "p_missing_gallbladder": float(p_missing_gallbladder),
        "domains": domains.as_dict(),
    }


def case_domain(domains: Domains, seed: int, index: int) -> CaseDomain:
    """The domain of case ``index`` of a dataset: its own stream, so domains never change a case's anatomy."""
    return domains.draw(np.random.default_rng([int(seed), int(index), 1]))


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _differences(found: dict, wanted: dict) -> str:
    keys = sorted(set(found) | set(wanted))
    return ", ".join(
        f"{k}: {found.get(k)!r} on disk vs {wanted.get(k)!r} requested" for k in keys if found.get(k) != wanted.get(k)
    )


def generate_phantom_dataset(
    output_dir: str,
    num_cases: int = 30,
    num_validation: int = 6,
    seed: int = 0,
    shape: Sequence[int] = REFERENCE_SHAPE,
    p_missing_gallbladder: float = 0.0,
    domains: Domains | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Write a synthetic BTCV-layout dataset, or reuse the one already there if it was made with these parameters.

    Safe to call at every start: matching data is returned untouched; anything else in ``output_dir`` (a real
    dataset, a phantom with other parameters, unrelated images) is never replaced unless ``overwrite`` is set.

    Args:
        output_dir: dataset directory; receives ``imagesTr/``, ``labelsTr/`` and ``dataset_0.json``.
        num_cases: cases to write (``img0001`` ...).
        num_validation: how many of the last cases form the ``"validation"`` list; the others are ``"training"``.
        seed: case ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so any case can be regenerated
            alone and adding cases does not change the existing ones.
        shape: see ``generate_case``.
        p_missing_gallbladder: see ``generate_case``.
        domains: what the cases' domains are drawn from (a :class:`Domains` or its config mapping, e.g.
            ``{"phases": ["arterial"]}``); ``None``: the reference portal-venous phantom. Each case's draw is recorded
            under ``"case_domains"`` in the datalist.
        overwrite: replace whatever dataset is in ``output_dir`` (files of the same names are overwritten;
            nothing else is deleted).

    Returns:
        The path of ``dataset_0.json``.

    Raises:
        ValueError: ``output_dir`` holds a different dataset and ``overwrite`` is False, or bad parameters.
    """
    num_cases, num_validation = int(num_cases), int(num_validation)
    if num_cases < 1 or not 0 <= num_validation < num_cases:
        raise ValueError(f"need num_cases >= 1 and 0 <= num_validation < num_cases, got {num_cases}, {num_validation}.")
    if not 0.0 <= float(p_missing_gallbladder) <= 1.0:
        raise ValueError(f"p_missing_gallbladder must be in [0, 1], got {p_missing_gallbladder}.")
    if not isinstance(domains, Domains):
        domains = Domains.from_config(domains)
    wanted = _phantom_params(seed, num_cases, num_validation, shape, p_missing_gallbladder, domains)
    output_dir = os.path.abspath(str(output_dir))
    datalist_path = os.path.join(output_dir, DATALIST_NAME)
    progress_path = os.path.join(output_dir, _PROGRESS_NAME)
    cases = [_case_paths(i) for i in range(1, num_cases + 1)]

    def all_present() -> bool:
        return all(os.path.isfile(os.path.join(output_dir, p)) for c in cases for p in c.values())

    if os.path.exists(datalist_path) and not overwrite:
        existing = _read_json(datalist_path)
        found = existing.get("phantom") if isinstance(existing, dict) else None
        if not isinstance(found, dict):
            raise ValueError(
                f"{output_dir} already holds a dataset that is not this phantom ({DATALIST_NAME} has no 'phantom' "
                "block); refusing to overwrite it. Use another directory or overwrite=True."
            )
        if found != wanted:
            raise ValueError(
                f"{output_dir} holds a phantom made with other parameters ({_differences(found, wanted)}); refusing "
                "to overwrite it. Use another directory or overwrite=True."
            )
        if all_present():
            return datalist_path
    elif not overwrite:
        in_progress = _read_json(progress_path)
        clashing = [c["image"] for c in cases if os.path.exists(os.path.join(output_dir, c["image"]))]
        if clashing and in_progress != wanted:
            raise ValueError(
                f"{output_dir} has no {DATALIST_NAME} but already holds images (e.g. {clashing[0]}) not written by an "
                "unfinished phantom run with these parameters; refusing to overwrite them. Use overwrite=True."
            )

    write_json_atomic(progress_path, wanted)  # lets an interrupted run resume instead of refusing its own files
    drawn = {case["image"]: case_domain(domains, seed, index) for index, case in enumerate(cases, start=1)}
    todo = [
        (index, case)
        for index, case in enumerate(cases, start=1)
        # with the same parameters, a case on disk is already what it would be regenerated as
        if overwrite or not all(os.path.isfile(os.path.join(output_dir, case[k])) for k in ("image", "label"))
    ]
    if todo:
        logger.info(f"generating {len(todo)} phantom CTs in {output_dir}")
    # a case takes seconds: a bar (on a terminal) instead of a long silence
    for index, case in tqdm(todo, desc="phantom CTs", unit="CT", disable=None, leave=False, dynamic_ncols=True):
        image_path, label_path = (os.path.join(output_dir, case[k]) for k in ("image", "label"))
        rng = np.random.default_rng([int(seed), index])
        image, label, affine = generate_case(rng, shape, p_missing_gallbladder, drawn[case["image"]])
        _save_nifti(label, affine, label_path)
        _save_nifti(image, affine, image_path)

    datalist = {
        "name": "Med-SORA abdominal CT phantom",
        "description": "Synthetic abdominal CT with BTCV labels (generated by medsora.image.phantom)",
        "reference": "generated",
        "licence": "Apache-2.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": num_cases,
        "numTest": 0,
        "training": cases[: num_cases - num_validation],
        "validation": cases[num_cases - num_validation :],
        "test": [],
        "phantom": wanted,
        "case_domains": {image: domain.as_dict() for image, domain in drawn.items()},
    }
    write_json_atomic(datalist_path, datalist)
    os.remove(progress_path)
    return datalist_path


def ensure_phantom(dataset_dir: str, **kwargs: Any) -> str:
    """Datalist of ``dataset_dir``, generating the phantom there first if needed; meant for a bundle's ``initialize``.

    A real dataset (a ``dataset_0.json`` without a ``"phantom"`` block) is returned untouched, so pointing the
    bundle at BTCV needs no other change.

    Args:
        dataset_dir: dataset directory.
        kwargs: passed to ``generate_phantom_dataset``.

    Returns:
        The path of ``dataset_0.json``.
    """
    datalist_path = os.path.join(os.path.abspath(str(dataset_dir)), DATALIST_NAME)
    existing = _read_json(datalist_path) if os.path.exists(datalist_path) else None
    if isinstance(existing, dict) and "phantom" not in existing:
        return datalist_path
    return generate_phantom_dataset(dataset_dir, **kwargs)

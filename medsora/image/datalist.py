# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Datasets in the BTCV layout (``dataset_0.json`` + ``imagesTr`` + ``labelsTr``), checked before any training starts.

Checking file headers up front turns a bad case found hours into a run into an error naming the file at start-up.
Images and label maps may be NIfTI files or DICOM series directories (one series per directory, read by ITK).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from monai.data import ITKReader, load_decathlon_datalist

from medsora.image import phantom
from medsora.image.file_checks import check_dicom_series, check_geometry, load_nifti_header

__all__ = ["prepare_dataset", "load_datalist", "case_datalist", "check_pair", "image_grid"]

DATALIST_NAME = "dataset_0.json"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def prepare_dataset(dataset_dir: str, phantom_dir: str, phantom_kwargs: Mapping[str, Any] | None = None) -> str:
    """Return the datalist file of ``dataset_dir``, generating the phantom first when ``dataset_dir`` is its home.

    Args:
        dataset_dir: a BTCV-layout directory (real data) or the bundle's phantom directory.
        phantom_dir: where the bundle keeps its generated phantom; only that directory is ever written to.
        phantom_kwargs: generator parameters (``scripts.phantom.generate_phantom_dataset``).

    Raises:
        FileNotFoundError: ``dataset_dir`` has no ``dataset_0.json``.
    """
    if os.path.realpath(dataset_dir) == os.path.realpath(phantom_dir):
        return phantom.ensure_phantom(dataset_dir, **dict(phantom_kwargs or {}))
    datalist_file = os.path.join(dataset_dir, DATALIST_NAME)
    if not os.path.isfile(datalist_file):
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir!r} has no {DATALIST_NAME}: expected the BTCV layout "
            f"(imagesTr/img0001.nii.gz, labelsTr/label0001.nii.gz, {DATALIST_NAME} with 'training' and 'validation')."
        )
    return datalist_file


def _dicom_grid(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial shape and voxel-to-RAS affine of the DICOM series in directory ``path``, read as ``LoadImaged`` does.

    MONAI's ``ITKReader`` is the reader ``LoadImage`` picks for a directory; it reads the first series in the
    directory, sorts the slices by position and converts the LPS geometry to RAS.
    """
    reader = ITKReader()
    try:
        files = _series_files(path)
    except Exception as e:  # ITK raises several types for directories without a readable series
        raise ValueError(f"{path} is a directory but holds no DICOM series that ITK can read: {e}") from e
    check_dicom_series(path, files)
    try:
        _, meta = reader.get_data(reader.read(path))
    except Exception as e:  # ITK and MONAI raise several types for series they cannot read
        raise ValueError(f"{path} is a directory but holds no DICOM series that ITK can read: {e}") from e
    return tuple(int(n) for n in meta["spatial_shape"]), np.asarray(meta["affine"], dtype=np.float64)


def _series_files(path: str) -> list[str]:
    """The slice files of the series ``ITKReader`` reads from directory ``path`` (its first one), in its order."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")  # Series Date, as ITKReader
    names.SetDirectory(path)
    series = names.GetSeriesUIDs()
    if not series:
        raise RuntimeError("no DICOM series found")
    return [str(f) for f in names.GetFileNames(series[0])]


def image_grid(path: str) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Spatial shape and voxel-to-RAS affine of a NIfTI file (header only) or a DICOM series directory, checked: a
    whole file, 3D, a plausible spacing (``file_checks``).

    Returns ``None`` for other single files (``.dcm``, ``.nrrd``, ...), which are left to the reader.
    """
    if path.endswith(NIFTI_SUFFIXES):
        header = load_nifti_header(path)
        shape, affine = header.shape, np.asarray(header.affine, dtype=np.float64)
    elif os.path.isdir(path):
        shape, affine = _dicom_grid(path)
    else:
        return None
    return check_geometry(path, shape, affine), affine


def check_pair(image_path: str, label_path: str, atol: float = 1e-3) -> None:
    """Raise a ``ValueError`` naming both files when an image and its label map are not on the same voxel grid.

    Either may be a NIfTI file or a DICOM series directory: grids are compared as shape and RAS affine, so a NIfTI
    label map next to a DICOM CT must be stored on the CT's own grid (same voxel order, spacing and position).
    """
    image, label = image_grid(image_path), image_grid(label_path)
    if image is None or label is None:
        return
    (image_shape, image_affine), (label_shape, label_affine) = image, label
    if image_shape != label_shape:
        raise ValueError(f"image {image_path} has shape {image_shape} but label map {label_path} has {label_shape}.")
    if not np.allclose(image_affine, label_affine, atol=atol):
        raise ValueError(
            f"image {image_path} and label map {label_path} have different affines (voxel to RAS mm); the label map "
            f"must be stored on the image's grid:\n{image_affine}\nvs\n{label_affine}"
        )


def load_datalist(datalist_file: str, key: str = "training", check_files: bool = True) -> list[dict]:
    """Load one split of a decathlon-style datalist with absolute paths, checking every image/label pair.

    Args:
        datalist_file: the dataset's ``dataset_0.json``.
        key: the split, e.g. ``"training"`` or ``"validation"``.
        check_files: check that files exist, are readable and that each image and label share a grid.
    """
    try:
        items = load_decathlon_datalist(datalist_file, is_segmentation=True, data_list_key=key)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{datalist_file}: cannot read the {key!r} list: {e}") from e
    if not items:
        raise ValueError(f"{datalist_file}: the {key!r} list is empty.")
    if check_files:
        for item in items:
            if "label" not in item:
                raise ValueError(f"{datalist_file}: item {item} of {key!r} has no 'label'.")
            check_pair(item["image"], item["label"])
    return items


def case_datalist(image: str | None, label: str | None) -> list[dict]:
    """The one-case datalist of ``--image`` and ``--label``, checked like a dataset's.

    Each may be a NIfTI file or a DICOM series directory (read with MONAI's ``ITKReader``).
    """
    missing = [name for name, value in (("--image", image), ("--label", label)) if not value]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} must name a CT and its organ label map (NIfTI file or DICOM series directory), "
            "got none."
        )
    for name, path in (("--image", image), ("--label", label)):
        if not os.path.exists(str(path)):
            raise FileNotFoundError(f"{name} {path} does not exist.")
    check_pair(str(image), str(label))
    return [{"image": str(image), "label": str(label)}]

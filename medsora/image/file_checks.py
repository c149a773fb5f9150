# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Checks of one CT or label-map file (NIfTI) or series (DICOM) before anything reads its voxels.

A cut ``.nii.gz``, a 2D image, a spacing that would resample to terabytes or a DICOM series with a missing slice
otherwise fail deep inside a reader or a transform with a message that names no file, or pass with wrong geometry.
Each check here reads headers only (and the last bytes of a gzip stream) and names the file and what was expected.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "MAX_FIELD_OF_VIEW_MM",
    "check_dicom_series",
    "check_geometry",
    "load_nifti_header",
    "uncompressed_pixel_bytes",
]

#: no CT is larger than this along an axis; a header that says so has a wrong spacing
MAX_FIELD_OF_VIEW_MM = 3000.0
# transfer syntaxes that store pixels as they are: implicit and explicit VR little endian, explicit VR big endian
UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
# a gzip member records its uncompressed size modulo 2**32 in its last 4 bytes; writers may pad a little after
_GZIP_SLACK = 1 << 20


def load_nifti_header(path: str) -> nib.spatialimages.SpatialImage:
    """The NIfTI image ``path`` (header only), refused when the file holds fewer bytes than its header promises.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a readable NIfTI file, or cut short (the voxels stop before the end of the image).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        image = nib.load(path)
    except Exception as e:  # nibabel raises several types for unreadable files
        raise ValueError(f"{path} is not a readable NIfTI image: {e}") from e
    expected = int(image.dataobj.offset) + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
    stored = _stored_size(path, expected)
    if stored < expected:
        raise ValueError(
            f"{path} is cut short: its header describes {expected} bytes of image but the file holds only {stored}; "
            "copy or export it again."
        )
    return image


def _stored_size(path: str, expected: int) -> int:
    """How many bytes of image ``path`` holds (uncompressed), or ``expected`` when a gzip trailer says it is whole.

    A gzip member ends with its uncompressed size modulo 2**32; when that disagrees (a cut file ends in compressed
    data, or the file has several members) the stream is decompressed and counted.
    """
    if not path.endswith(".gz"):
        return os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        trailer = int.from_bytes(f.read(4), "little")
    if (trailer - expected) % (1 << 32) < _GZIP_SLACK:
        return expected
    size = 0
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(1 << 20):
                size += len(block)
    except (EOFError, OSError):  # the stream ends early or is damaged: what was read is what the file holds
        pass
    return size


def check_geometry(path: str, shape: Sequence[int], affine: np.ndarray) -> tuple[int, int, int]:
    """The spatial shape of a volume, refused unless it is 3D with a plausible voxel spacing.

    Args:
        path: the file or series the header came from, for messages.
        shape: the image's shape (a fourth axis must have length 1).
        affine: its 4x4 voxel-to-world affine (mm).

    Raises:
        ValueError: not a 3D volume, or a spacing that is zero, not finite, or that makes the volume larger than
            :data:`MAX_FIELD_OF_VIEW_MM` along an axis (resampling it would allocate that much).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]) or min(shape[:3]) < 2:
        raise ValueError(f"{path} has shape {shape}: a CT volume (and its label map) has 3 spatial axes of 2 or more.")
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    extent = spacing * np.asarray(shape[:3])
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0) or np.any(extent > MAX_FIELD_OF_VIEW_MM):
        raise ValueError(
            f"{path} has voxel spacing {np.round(spacing, 4).tolist()} mm, a field of view of "
            f"{np.round(extent, 1).tolist()} mm, but a CT's spacing is positive and its field of view at most "
            f"{MAX_FIELD_OF_VIEW_MM:g} mm along every axis (resampling this one would allocate memory in proportion): "
            "fix the spacing in its header."
        )
    return shape[:3]


def uncompressed_pixel_bytes(io: object, path: str) -> int:
    """Bytes of uncompressed pixel data a DICOM slice declares (0 for compressed transfer syntaxes, which can be
    smaller), from the header ``itk.GDCMImageIO`` read. The transfer syntax is in the file meta group, which GDCM keeps
    out of ITK's dictionary, so pydicom reads it."""
    import pydicom

    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
    if str(meta.get("TransferSyntaxUID", UNCOMPRESSED[0])) not in UNCOMPRESSED:
        return 0
    tags = io.GetMetaDataDictionary()

    def tag(key: str, default: str = "0") -> str:
        return str(tags[key]).strip(" \0") if tags.HasKey(key) else default

    return int(tag("0028|0010")) * int(tag("0028|0011")) * int(tag("0028|0002", "1")) * int(tag("0028|0100")) // 8


def check_dicom_series(directory: str, files: Sequence[str], tolerance: float = 0.1) -> None:
    """Refuse a DICOM series (the ``files`` of ``directory``, sorted as read) with a missing, cut or unreadable slice.

    ITK leaves out a slice it cannot parse and spaces the others evenly, so such a series fails later on a shape
    mismatch or passes with wrong geometry. Here every file of the directory must be readable, every slice must hold
    its pixel data, and neighbouring slices must be evenly spaced.

    Args:
        directory: the series directory.
        files: the series' slice files in the order ITK reads them (``GDCMSeriesFileNames``).
        tolerance: allowed deviation of a slice distance from the median one, as a fraction of it (at least 0.01 mm).

    Raises:
        ValueError: naming the unreadable or cut file, or the two files around a gap with its size.
    """
    import itk

    in_series = {os.path.abspath(f) for f in files}
    for name in sorted(os.listdir(directory)):
        path = os.path.abspath(os.path.join(directory, name))
        if os.path.isfile(path) and not name.startswith(".") and path not in in_series:
            io = itk.GDCMImageIO.New()
            if not io.CanReadFile(path):
                raise ValueError(
                    f"{path} in DICOM series {directory} is not a readable DICOM file: the series would "
                    "be read without it."
                )
    origins = []
    for path in files:
        io = itk.GDCMImageIO.New()
        io.SetFileName(path)
        try:
            io.ReadImageInformation()
        except RuntimeError as e:
            raise ValueError(f"{path} in DICOM series {directory} is not a readable DICOM slice: {e}") from e
        pixels = uncompressed_pixel_bytes(io, path)
        if os.path.getsize(path) < pixels:
            raise ValueError(
                f"{path} in DICOM series {directory} is cut short: it cannot hold its {pixels} bytes of pixel data."
            )
        origins.append([io.GetOrigin(i) for i in range(3)])
    if len(origins) < 3:
        return
    distances = np.linalg.norm(np.diff(np.asarray(origins), axis=0), axis=1)
    typical = float(np.median(distances))
    uneven = np.flatnonzero(np.abs(distances - typical) > max(tolerance * typical, 0.01))
    if uneven.size:
        i = int(uneven[0])
        raise ValueError(
            f"DICOM series {directory} is unevenly spaced: {files[i]} and {files[i + 1]} are {distances[i]:.3g} mm "
            f"apart where slices are {typical:.3g} mm apart; a slice is missing or misplaced ({uneven.size} such "
            "gap(s))."
        )

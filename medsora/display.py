# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Show a symptom query's organ ranking on the patient's own CT (paper Fig. 7).

A ranking of organ names is hard to check against the anatomy; painting each organ of the patient's label map with its
score makes the answer visible where a clinician looks for it. Two outputs are made: a probability map on the CT's grid
(NIfTI, for any viewer) and a PNG with an axial and a coronal slice in radiological convention.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from medsora.atomic_io import atomic_write
from medsora.organs import rank_organs

__all__ = [
    "DisplaySlices",
    "display_slices",
    "organ_probability_map",
    "render_query_figure",
    "save_probability_map",
    "wrap_text",
]

SCORE_CMAP = "inferno"  # high scores bright, so the likely organ stands out from the grey CT
OVERLAY_ALPHA = 0.6
FIGURE_WIDTH_IN = 10.0
DPI = 150


class DisplaySlices(NamedTuple):
    """Axial and coronal slices of a CT and its label map, ready for ``imshow`` in radiological convention.

    Axial arrays: rows run anterior to posterior, columns from the patient's right to the patient's left.
    Coronal arrays: rows run superior to inferior, columns from the patient's right to the patient's left.
    An aspect is a row's height over a column's width in mm (``imshow(..., aspect=aspect)``).
    ``center`` is the voxel the slices pass through, as an index into the CT reoriented to RAS.
    """

    axial: np.ndarray
    coronal: np.ndarray
    axial_label: np.ndarray
    coronal_label: np.ndarray
    axial_aspect: float
    coronal_aspect: float
    center: tuple[int, int, int]


def _organ_ids(organ_labels: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Validate ``organ_labels``: at least one organ, non-empty id lists, no id shared by two organs, no 0."""
    if not organ_labels:
        raise ValueError("organ_labels must map at least one organ name to its label ids.")
    owner: dict[int, str] = {}
    organs: dict[str, list[int]] = {}
    for organ, ids in organ_labels.items():
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError(f"organ {organ!r} has no label ids in organ_labels.")
        for i in ids:
            if i == 0:
                raise ValueError(f"organ {organ!r} lists label id 0, which is background.")
            if i in owner:
                raise ValueError(f"label id {i} is listed for both {owner[i]!r} and {organ!r} in organ_labels.")
            owner[i] = organ
        organs[organ] = ids
    return organs


def _check_scores(organs: Sequence[str], scores: Mapping[str, float]) -> dict[str, float]:
    """Return ``scores`` as floats after checking they cover exactly ``organs`` and lie in [0, 1]."""
    missing = [o for o in organs if o not in scores]
    if missing:
        raise ValueError(f"scores are missing for organs {missing}; every organ in organ_labels needs one.")
    unknown = [o for o in scores if o not in organs]
    if unknown:
        raise ValueError(f"scores name organs {unknown} that are not in organ_labels {list(organs)}.")
    values = {o: float(scores[o]) for o in organs}
    bad = {o: s for o, s in values.items() if not (math.isfinite(s) and 0.0 <= s <= 1.0)}
    if bad:
        raise ValueError(f"organ scores must be finite and in [0, 1]; got {bad}.")
    return values


def _label_ids(label: np.ndarray) -> np.ndarray:
    """Integer ids of a label map that may be stored as floats."""
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)):
            raise ValueError("label map contains NaN or infinite values.")
        label = np.rint(label)
    return label.astype(np.int64)


def _check_affine(affine: np.ndarray) -> np.ndarray:
    """Return ``affine`` as a float (4, 4) array after checking it is finite and invertible."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix; got shape {affine.shape}.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular: its 3x3 part has no inverse.")
    return affine


def organ_probability_map(
    label: np.ndarray, organ_labels: Mapping[str, Sequence[int]], scores: Mapping[str, float]
) -> np.ndarray:
    """Paint every organ's voxels with the organ's score.

    Args:
        label: label map (any shape); float maps holding integer ids are rounded.
        organ_labels: organ name -> label ids that make up the organ; other ids are background.
        scores: organ name -> score in [0, 1], for exactly the organs of ``organ_labels``.

    Returns:
        float32 array of ``label``'s shape: an organ's score on its voxels, 0 elsewhere.
    """
    organs = _organ_ids(organ_labels)
    values = _check_scores(list(organs), scores)
    ids = _label_ids(label)
    prob = np.zeros(ids.shape, dtype=np.float32)
    for organ, organ_ids in organs.items():
        prob[np.isin(ids, organ_ids)] = values[organ]
    return prob


def save_probability_map(prob: np.ndarray, affine: np.ndarray, path: str) -> None:
    """Write a probability map as float32 NIfTI with the CT's affine as qform and sform (scanner space), atomically.

    Args:
        prob: 3D map, e.g. from :func:`organ_probability_map`.
        affine: the CT's voxel-to-world (RAS mm) matrix.
        path: destination ending in ``.nii`` or ``.nii.gz``.
    """
    if path.endswith(".nii.gz"):
        suffix = ".nii.gz"
    elif path.endswith(".nii"):
        suffix = ".nii"
    else:
        raise ValueError(f"probability map path {path!r} must end with .nii or .nii.gz.")
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 3:
        raise ValueError(f"probability map must be 3D; got shape {prob.shape}.")
    affine = _check_affine(affine)
    img = nib.Nifti1Image(prob, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    atomic_write(path, lambda tmp: nib.save(img, tmp), suffix)


def _to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a volume to the closest RAS+ axes (+x towards the patient's right); return it and its spacing."""
    ornt = io_orientation(affine)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return apply_orientation(volume, ornt), spacing


def display_slices(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, center_ids: Sequence[int] = ()
) -> DisplaySlices:
    """Axial and coronal slices through the centroid of the voxels with ``center_ids``, in radiological convention.

    Args:
        image: 3D CT.
        label: 3D label map on the CT's grid.
        affine: voxel-to-world (RAS mm) matrix of both.
        center_ids: label ids whose centroid the slices pass through; the volume's centre when none is present.

    Returns:
        The slices, their display aspects and the centre voxel (see :class:`DisplaySlices`).
    """
    image = np.asarray(image)
    ids = _label_ids(label)
    if image.ndim != 3 or image.shape != ids.shape:
        raise ValueError(f"image {image.shape} and label map {ids.shape} must be 3D arrays of the same shape.")
    affine = _check_affine(affine)
    ras_image, spacing = _to_ras(image, affine)
    ras_label, _ = _to_ras(ids, affine)
    mask = np.isin(ras_label, [int(i) for i in center_ids])
    if mask.any():
        center = tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    else:
        center = tuple(s // 2 for s in ras_label.shape)
    x, y, z = center

    def radiological(plane: np.ndarray) -> np.ndarray:
        # plane is indexed [x, up-axis]; rows run from the up end down, columns from the patient's right (+x) leftwards
        return np.ascontiguousarray(plane[::-1, ::-1].T)

    return DisplaySlices(
        axial=radiological(ras_image[:, :, z]),
        coronal=radiological(ras_image[:, y, :]),
        axial_label=radiological(ras_label[:, :, z]),
        coronal_label=radiological(ras_label[:, y, :]),
        axial_aspect=float(spacing[1] / spacing[0]),
        coronal_aspect=float(spacing[2] / spacing[0]),
        center=(x, y, z),
    )


def wrap_text(text: str, width: int = 95, max_lines: int = 3) -> str:
    """Wrap text to at most ``max_lines`` lines, ending with an ellipsis when it had to be cut.

    Args:
        text: any text; runs of whitespace count as one space.
        width: characters per line.
        max_lines: lines kept.

    Returns:
        The wrapped text, lines joined with newlines.
    """
    lines = textwrap.wrap(" ".join(text.split()), width)
    if len(lines) <= max_lines:
        return "\n".join(lines)
    kept = lines[:max_lines]
    last = textwrap.shorten(kept[-1], width - 2, placeholder="") or kept[-1][: width - 2]
    kept[-1] = last + " …"
    return "\n".join(kept)


def render_query_figure(
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    organ_labels: Mapping[str, Sequence[int]],
    scores: Mapping[str, float],
    text: str,
    path: str,
    hu_window: Sequence[float] = (-175, 250),
) -> None:
    """Draw a query's organ scores on the patient's CT as a PNG, atomically.

    The figure has an axial and a coronal slice through the centroid of the best-ranked organ present in the label map
    (radiological convention: the patient's right on the viewer's left), every organ painted by its score, a colorbar,
    the full ranking (organs missing from the label map marked absent) and the symptom text as title.

    Args:
        image: 3D CT in HU.
        label: 3D label map on the CT's grid.
        affine: voxel-to-world (RAS mm) matrix of both.
        organ_labels: organ name -> label ids that make up the organ.
        scores: organ name -> score in [0, 1], for exactly the organs of ``organ_labels``.
        text: the symptom text of the query.
        path: destination ending in ``.png``.
        hu_window: (lower, upper) HU shown from black to white.

    Raises:
        ImportError: matplotlib is not installed (only this function needs it).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not path.endswith(".png"):
        raise ValueError(f"figure path {path!r} must end with .png.")
    lower, upper = (float(v) for v in hu_window)
    if not lower < upper:
        raise ValueError(f"hu_window must be (lower, upper) with lower < upper; got {tuple(hu_window)}.")
    organs = _organ_ids(organ_labels)
    values = _check_scores(list(organs), scores)
    ids = _label_ids(label)
    present = {organ: bool(np.isin(ids, organ_ids).any()) for organ, organ_ids in organs.items()}
    ranking = rank_organs(values)
    center_organ = next((organ for organ in ranking if present[organ]), None)
    slices = display_slices(image, ids, affine, organs[center_organ] if center_organ else ())

    cmap = colormaps[SCORE_CMAP]
    norm = Normalize(0.0, 1.0)
    panels = [
        ("Axial", slices.axial, slices.axial_label, slices.axial_aspect, ("A", "P")),
        ("Coronal", slices.coronal, slices.coronal_label, slices.coronal_aspect, ("S", "I")),
    ]
    # panel height over width in mm, so the figure height fits the taller panel
    panel_ratio = max(a.shape[0] * aspect / a.shape[1] for _, a, _, aspect, _ in panels)
    panel_height = min(max(3.6 * panel_ratio, 2.5), 6.0)
    fig = Figure(figsize=(FIGURE_WIDTH_IN, panel_height + 1.9), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.0, 1.0, 0.8]})

    for ax, (name, plane, plane_ids, aspect, (top, bottom)) in zip(axes[:2], panels):
        ax.imshow(plane, cmap="gray", vmin=lower, vmax=upper, aspect=aspect, interpolation="nearest")
        prob = organ_probability_map(plane_ids, organs, values)
        in_organ = np.isin(plane_ids, [i for organ_ids in organs.values() for i in organ_ids])
        ax.imshow(
            np.ma.masked_where(~in_organ, prob),
            cmap=cmap,
            norm=norm,
            alpha=OVERLAY_ALPHA,
            aspect=aspect,
            interpolation="nearest",
        )
        limits = ax.get_xlim(), ax.get_ylim()
        for organ_ids in organs.values():
            organ_mask = np.isin(plane_ids, organ_ids)
            if organ_mask.any() and not organ_mask.all():
                ax.contour(organ_mask.astype(float), levels=[0.5], colors="white", linewidths=0.7)
        ax.set_xlim(limits[0])
        ax.set_ylim(limits[1])
        ax.set_title(name, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        for x, y, letter in ((0.02, 0.5, "R"), (0.98, 0.5, "L"), (0.5, 0.98, top), (0.5, 0.02, bottom)):
            ax.text(
                x,
                y,
                letter,
                transform=ax.transAxes,
                color="white",
                fontsize=10,
                fontweight="bold",
                ha="left" if x < 0.5 else "right" if x > 0.5 else "center",
                va="top" if y > 0.5 else "bottom" if y < 0.5 else "center",
            )

    colorbar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:2]), location="bottom", shrink=0.6, aspect=30
    )
    colorbar.set_label("organ score", fontsize=10)
    colorbar.ax.tick_params(labelsize=9)

    table = axes[2]
    table.set_axis_off()
    table.set_xlim(0.0, 1.0)
    table.set_ylim(0.0, 1.0)
    table.text(0.0, 0.97, "Organ ranking", fontsize=11, fontweight="bold", va="top")
    step = 0.8 / len(ranking)
    for rank, organ in enumerate(ranking, start=1):
        y = 0.88 - (rank - 1) * step
        swatch = Rectangle(
            (0.0, y - 0.025),
            0.07,
            0.05,
            facecolor=cmap(norm(values[organ])) if present[organ] else "white",
            edgecolor="0.3",
            hatch=None if present[organ] else "///",
        )
        table.add_patch(swatch)
        name = organ.replace("_", " ")
        table.text(
            0.1,
            y,
            f"{rank}. {name}",
            fontsize=10,
            va="center",
            color="black" if present[organ] else "0.45",
            fontweight="bold" if organ == center_organ else "normal",
        )
        table.text(
            1.0,
            y,
            f"{values[organ]:.2f}" if present[organ] else f"{values[organ]:.2f} (absent)",
            fontsize=10,
            va="center",
            ha="right",
            color="black" if present[organ] else "0.45",
        )
    note = f"slices through {center_organ.replace('_', ' ')}" if center_organ else "no organ in the label map"
    table.text(0.0, 0.02, note, fontsize=9, style="italic", va="bottom", color="0.3")

    title = wrap_text(text) or "(no symptom text)"
    fig.suptitle(title, fontsize=11, ha="center")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"), ".png")

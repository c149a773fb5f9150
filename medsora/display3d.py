# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The patient's organs in 3D, coloured by a query's scores (the paper's Fig. 7).

Two slices show where an organ is; its surface shows which organ it is at a glance. The organ surfaces come from the
label map (marching cubes, scikit-image) in the scanner's RAS millimetres, drawn once as a PNG (matplotlib) and once
as an interactive HTML page (plotly.js embedded in the page, so it opens with no network access: rotate, zoom, and
hover an organ for its name and score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from medsora.atomic_io import atomic_write
from medsora.display import SCORE_CMAP, _check_affine, _check_scores, _label_ids, _organ_ids, wrap_text
from medsora.organs import rank_organs

__all__ = ["Surface", "organ_surfaces", "render_surface_figure", "write_surface_html"]

MAX_VOXELS_PER_STEP = 4_000  # an organ with more voxels is meshed on a coarser grid: a light page, a quick PNG
VIEWS = (("Anterior", 10.0, 90.0), ("Left posterior oblique", 25.0, -125.0))  # (title, elevation, azimuth)


class Surface(NamedTuple):
    """An organ's triangulated surface: ``vertices`` ``(V, 3)`` in RAS mm, ``faces`` ``(F, 3)`` vertex indices."""

    vertices: np.ndarray
    faces: np.ndarray


def organ_surfaces(
    label: np.ndarray, affine: np.ndarray, organ_labels: Mapping[str, Sequence[int]], smoothing: float = 0.6
) -> dict[str, Surface]:
    """The surface of every organ the label map holds (absent organs are left out).

    A scan that cuts an organ leaves it open at the edge; the mask is padded so its surface is closed there.

    Args:
        label: 3D label map.
        affine: its voxel-to-RAS matrix; the surfaces are in RAS mm (oblique and flipped grids included).
        organ_labels: organ name -> label ids.
        smoothing: sigma (voxels) of the Gaussian applied to each mask before meshing, against staircase surfaces.
    """
    from skimage.measure import marching_cubes

    organs = _organ_ids(organ_labels)
    ids = _label_ids(label)
    affine = _check_affine(affine)
    if ids.ndim != 3:
        raise ValueError(f"label map must be 3D; got shape {ids.shape}.")
    # marching_cubes winds triangles clockwise seen from outside in voxel index space; counter-clockwise (outward
    # normals) in RAS needs the opposite order unless the grid itself is mirrored (e.g. LPS storage)
    reverse = np.linalg.det(affine[:3, :3]) > 0
    surfaces = {}
    for organ, organ_ids in organs.items():
        mask = np.isin(ids, organ_ids)
        if not mask.any():
            continue
        nonzero = np.nonzero(mask)
        start = np.array([max(int(n.min()) - 2, 0) for n in nonzero])
        stop = np.array([int(n.max()) + 3 for n in nonzero])
        box = np.pad(mask[tuple(slice(a, b) for a, b in zip(start, stop))], 2).astype(np.float32)
        step = max(1, math.ceil((int(mask.sum()) / MAX_VOXELS_PER_STEP) ** (1 / 3)))
        field = ndimage.gaussian_filter(box, smoothing) if smoothing > 0 else box
        level = min(0.5, 0.5 * float(field.max()))  # a one-voxel organ still gets a surface
        vertices, faces, _, _ = marching_cubes(field, level=level, step_size=step, allow_degenerate=False)
        vertices = vertices + (start - 2)  # back to the label map's voxel indices
        world = vertices @ affine[:3, :3].T + affine[:3, 3]
        surfaces[organ] = Surface(world.astype(np.float32), (faces[:, ::-1] if reverse else faces).astype(np.int32))
    return surfaces


def _ranking_lines(scores: Mapping[str, float], present: Sequence[str]) -> list[str]:
    return [
        f"{rank}. {organ.replace('_', ' ')} {scores[organ]:.2f}" + ("" if organ in present else " (absent)")
        for rank, organ in enumerate(rank_organs(scores), start=1)
    ]


def render_surface_figure(
    surfaces: Mapping[str, Surface],
    organ_labels: Mapping[str, Sequence[int]],
    scores: Mapping[str, float],
    text: str,
    path: str,
) -> None:
    """Draw the organ surfaces coloured by score from the front and from behind on the left, as a PNG, atomically.

    Args:
        surfaces: from :func:`organ_surfaces`.
        organ_labels: organ name -> label ids (the organs scored).
        scores: organ name -> score in [0, 1], for exactly the organs of ``organ_labels``.
        text: the symptom text of the query (the title).
        path: destination ending in ``.png``.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LightSource, Normalize
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if not path.endswith(".png"):
        raise ValueError(f"3D figure path {path!r} must end with .png.")
    values = _check_scores(list(_organ_ids(organ_labels)), scores)
    cmap, norm = colormaps[SCORE_CMAP], Normalize(0.0, 1.0)
    fig = Figure(figsize=(12.0, 5.6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 3, width_ratios=[1.0, 1.0, 0.55])
    points = np.concatenate([s.vertices for s in surfaces.values()]) if surfaces else np.zeros((1, 3))
    low, high = points.min(axis=0), points.max(axis=0)
    best = next((organ for organ in rank_organs(values) if organ in surfaces), None)
    for column, (title, elevation, azimuth) in enumerate(VIEWS):
        ax = fig.add_subplot(grid[0, column], projection="3d")
        for organ, surface in surfaces.items():
            ax.add_collection3d(
                Poly3DCollection(
                    surface.vertices[surface.faces],
                    facecolors=cmap(norm(values[organ])),
                    edgecolors=cmap(norm(values[organ])),
                    linewidths=0.0,
                    alpha=1.0 if organ == best else 0.45,  # the best-ranked organ shows through the others
                    shade=True,
                    lightsource=LightSource(azdeg=azimuth + 30, altdeg=45),
                )
            )
        ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), zlim=(low[2], high[2]))
        ax.set_box_aspect(np.maximum(high - low, 1.0))
        ax.view_init(elev=elevation, azim=azimuth)
        ax.set_axis_off()
        ax.set_title(title, fontsize=11, pad=0)
        middle = (low + high) / 2
        for letter, point in (("R", (high[0], middle[1], middle[2])), ("L", (low[0], middle[1], middle[2]))):
            ax.text(*point, letter, fontsize=11, fontweight="bold", color="0.2")
    side = fig.add_subplot(grid[0, 2])
    side.set_axis_off()
    side.text(0.0, 0.97, "Organ ranking", fontsize=11, fontweight="bold", va="top", transform=side.transAxes)
    for row, line in enumerate(_ranking_lines(values, list(surfaces))):
        side.text(0.0, 0.88 - 0.08 * row, line, fontsize=10, va="center", transform=side.transAxes)
    side.text(
        0.0, 0.2, "R / L: the patient's right / left", fontsize=9, style="italic", color="0.3", transform=side.transAxes
    )
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=side, location="bottom", shrink=0.9, label="organ score")
    fig.suptitle(wrap_text(text, width=110) or "(no symptom text)", fontsize=11)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), ".png")


def write_surface_html(
    surfaces: Mapping[str, Surface],
    organ_labels: Mapping[str, Sequence[int]],
    scores: Mapping[str, float],
    text: str,
    path: str,
) -> None:
    """Write the organ surfaces coloured by score as a self-contained interactive HTML page, atomically.

    The page embeds plotly.js (about 4.5 MB), so it opens offline; drag to rotate, scroll to zoom, hover an organ
    for its name and score.

    Args:
        surfaces: from :func:`organ_surfaces`.
        organ_labels: organ name -> label ids (the organs scored).
        scores: organ name -> score in [0, 1], for exactly the organs of ``organ_labels``.
        text: the symptom text of the query (the title).
        path: destination ending in ``.html``.
    """
    import plotly.graph_objects as go
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if not path.endswith(".html"):
        raise ValueError(f"3D page path {path!r} must end with .html.")
    values = _check_scores(list(_organ_ids(organ_labels)), scores)
    cmap = colormaps[SCORE_CMAP]
    traces = []
    for organ in rank_organs(values):
        if organ not in surfaces:
            continue
        vertices, faces = surfaces[organ]
        traces.append(
            go.Mesh3d(
                x=vertices[:, 0],
                y=vertices[:, 1],
                z=vertices[:, 2],
                i=faces[:, 0],
                j=faces[:, 1],
                k=faces[:, 2],
                color=to_hex(cmap(values[organ])),
                opacity=1.0 if not traces else 0.5,  # the best-ranked organ shows through the others
                name=f"{organ.replace('_', ' ')} {values[organ]:.2f}",
                showlegend=True,
                hovertemplate=f"{organ.replace('_', ' ')}<br>score {values[organ]:.3f}<extra></extra>",
                flatshading=False,
            )
        )
    colorscale = [[t, to_hex(cmap(t))] for t in np.linspace(0.0, 1.0, 11)]
    traces.append(  # the colour bar: an invisible point carrying the score scale
        go.Scatter3d(
            x=[None],
            y=[None],
            z=[None],
            mode="markers",
            showlegend=False,
            hoverinfo="skip",
            marker={
                "color": [0.0],
                "cmin": 0.0,
                "cmax": 1.0,
                "colorscale": colorscale,
                "showscale": True,
                "colorbar": {"title": {"text": "organ score"}, "x": 1.0},
            },
        )
    )
    absent = [organ for organ in values if organ not in surfaces]
    title = wrap_text(text, width=110).replace("\n", "<br>") or "(no symptom text)"
    if absent:
        title += f"<br><sub>absent from the label map: {', '.join(absent)}</sub>"
    fig = go.Figure(traces)
    fig.update_layout(
        title={"text": title, "font": {"size": 14}},
        scene={
            "aspectmode": "data",
            "xaxis": {"title": "R (mm)"},
            "yaxis": {"title": "A (mm)"},
            "zaxis": {"title": "S (mm)"},
            "camera": {"eye": {"x": 0.0, "y": 1.9, "z": 0.35}, "up": {"x": 0.0, "y": 0.0, "z": 1.0}},
        },
        legend={"title": {"text": "organs by score"}, "x": 0.0, "y": 0.95},
        margin={"l": 0, "r": 0, "t": 80, "b": 0},
    )
    atomic_write(
        path,
        lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True, config={"displaylogo": False}),
        ".html",
    )

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The evaluation's figures in the manner of the paper's Figs. 5-7, each written as a PNG, atomically.

- ``text_feature_map``: t-SNE of the text MLP's features, soft vs. hard labels, with the organ anchors (Fig. 5).
- ``organ_correlation_heatmaps``: organ-organ correlation of the text head's scores, hard vs. soft (Fig. 6).
- ``query_organ_heatmaps``: top-1 confusion and mean organ score of the test queries per labelled organ.
- ``fusion_attention_figure``: the 3D query's attention over an organ's slices in the fusion block (Fig. 7).
The probability maps on a CT (Fig. 7) come from the ``query`` workflow itself (``organ_display``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsora.atomic_io import atomic_write

__all__ = ["text_feature_map", "organ_correlation_heatmaps", "query_organ_heatmaps", "fusion_attention_figure"]

DPI = 150
ORGAN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _names(organs: Sequence[str]) -> list[str]:
    return [organ.replace("_", " ") for organ in organs]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    if not path.endswith(".png"):
        raise ValueError(f"figure path {path!r} must end with .png.")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"), ".png")
    return path


def _tsne(points: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def text_feature_map(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]],
    organ_index: np.ndarray,
    organs: Sequence[str],
    path: str,
    seed: int = 0,
) -> str:
    """t-SNE of text features coloured by each text's (first) labelled organ, one panel per model.

    Args:
        panels: ``(title, features (N, F), anchor_features (K, F) or None)`` per panel; anchors are drawn as stars
            and embedded together with the texts so they land in the same map.
        organ_index: ``(N,)`` class index of each text's first labelled organ.
        organs: organ names in class-index order.
        path: PNG to write.
        seed: t-SNE seed.
    """
    from matplotlib.lines import Line2D

    fig = _figure(5.2 * len(panels) + 1.8, 5.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, features, anchors) in zip(axes, panels):
        points = features if anchors is None else np.concatenate([features, anchors])
        xy = _tsne(np.asarray(points, dtype=np.float64), seed)
        for k, color in enumerate(ORGAN_COLORS[: len(organs)]):
            chosen = organ_index == k
            ax.scatter(xy[: len(features)][chosen, 0], xy[: len(features)][chosen, 1], s=9, color=color, alpha=0.7)
        if anchors is not None:
            stars = xy[len(features) :]
            ax.scatter(
                stars[:, 0],
                stars[:, 1],
                marker="*",
                s=320,
                c=ORGAN_COLORS[: len(organs)],
                edgecolors="black",
                linewidths=1.0,
            )
        ax.set_title(title, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=n) for c, n in zip(ORGAN_COLORS, _names(organs))]
    handles.append(
        Line2D(
            [],
            [],
            marker="*",
            linestyle="",
            color="white",
            markeredgecolor="black",
            markersize=14,
            label="positive anchor v+",
        )
    )
    fig.legend(handles=handles, loc="outside right center", fontsize=9, title="labelled organ", title_fontsize=9)
    return _save(fig, path)


def _heatmap(
    ax,
    matrix: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    vmin: float,
    vmax: float,
    cmap: str,
    fmt: str,
):
    from matplotlib import colormaps

    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            red, green, blue, _ = colormaps[cmap](image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # light text on dark cells
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_title(title, fontsize=11)
    return image


def organ_correlation_heatmaps(panels: Sequence[tuple[str, np.ndarray]], organs: Sequence[str], path: str) -> str:
    """Pearson correlation between organs of the scores ``(N, K)`` a model gives a set of texts, one panel per model.

    High correlation between two organs means the model scores them together: the organ relations it learnt.
    """
    names = _names(organs)
    fig = _figure(4.6 * len(panels) + 1.2, 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    image = None
    for ax, (title, scores) in zip(axes, panels):
        with np.errstate(invalid="ignore", divide="ignore"):
            correlation = np.corrcoef(np.asarray(scores, dtype=np.float64), rowvar=False)
        image = _heatmap(ax, correlation, names, names, title, -1.0, 1.0, "RdBu_r", ".2f")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="Pearson correlation of organ scores")
    return _save(fig, path)


def query_organ_heatmaps(scores: np.ndarray, labels: np.ndarray, organs: Sequence[str], path: str, title: str) -> str:
    """(a) top-1 organ vs. first labelled organ (row-normalised), (b) mean score of each organ per labelled organ.

    Args:
        scores: ``(Q, K)`` organ scores of the test queries.
        labels: ``(Q, K)`` multi-hot labels; the first labelled organ is the row of (a), every labelled organ a row
            of (b).
        organs: organ names in class-index order.
        path: PNG to write.
        title: the model's name, for the figure title.
    """
    from medsora.organs import rank_organs

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    k = len(organs)
    top1 = np.array([organs.index(rank_organs(row, organs)[0]) for row in scores])
    first = labels.argmax(axis=1)
    confusion = np.zeros((k, k))
    np.add.at(confusion, (first, top1), 1.0)
    counts = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        confusion = np.where(counts > 0, confusion / counts, np.nan)
        mean_scores = np.stack(
            [scores[labels[:, i]].mean(axis=0) if labels[:, i].any() else np.full(k, np.nan) for i in range(k)]
        )
    names = _names(organs)
    rows = [f"{n} (n={int(c)})" for n, c in zip(names, labels.sum(axis=0))]
    fig = _figure(11.0, 4.8)
    left, right = fig.subplots(1, 2)
    first_rows = [f"{n} (n={int(c)})" for n, c in zip(names, counts[:, 0])]
    a = _heatmap(left, confusion, first_rows, names, "(a) top-1 organ (rows sum to 1)", 0.0, 1.0, "Blues", ".2f")
    fig.colorbar(a, ax=left, shrink=0.8, label="share of queries")
    left.set_xlabel("organ ranked first")
    left.set_ylabel("first labelled organ")
    low, high = np.nanmin(mean_scores), np.nanmax(mean_scores)  # scores cluster; use their own range for contrast
    b = _heatmap(right, mean_scores, rows, names, "(b) mean organ score", low, max(high, low + 1e-6), "viridis", ".2f")
    fig.colorbar(b, ax=right, shrink=0.8, label="mean score")
    right.set_xlabel("scored organ")
    right.set_ylabel("queries labelled with")
    fig.suptitle(f"{title}: test queries vs. organs", fontsize=12)
    return _save(fig, path)


def fusion_attention_figure(
    slices: np.ndarray, attention: np.ndarray, organ: str, path: str, max_columns: int = 8
) -> str:
    """An organ's masked slices, each titled with the attention the 3D query gives it in the fusion block.

    Args:
        slices: ``(D, H, W)`` the organ sample's slices as the network sees them.
        attention: ``(heads, D)`` attention of the volume query over the slices.
        organ: organ name, for the title.
        path: PNG to write.
        max_columns: slices per row.
    """
    slices, attention = np.asarray(slices, dtype=np.float64), np.asarray(attention, dtype=np.float64)
    if attention.ndim != 2 or attention.shape[1] != len(slices):
        raise ValueError(f"attention must be (heads, {len(slices)}) for {len(slices)} slices, got {attention.shape}.")
    mean = attention.mean(axis=0)
    columns = min(max_columns, len(slices))
    rows = int(np.ceil(len(slices) / columns))
    fig = _figure(1.45 * columns, 1.65 * rows + 1.9)
    grid = fig.add_gridspec(rows + 1, columns, height_ratios=[1.0] * rows + [0.9])
    for d, plane in enumerate(slices):
        ax = fig.add_subplot(grid[d // columns, d % columns])
        ax.imshow(plane.T, cmap="gray", origin="lower")
        ax.set_title(f"slice {d}: {mean[d]:.3f}", fontsize=8, fontweight="bold" if d == mean.argmax() else "normal")
        ax.set_xticks([])
        ax.set_yticks([])
    bars = fig.add_subplot(grid[rows, :])
    for h, row in enumerate(attention):
        bars.plot(range(len(slices)), row, color="0.6", linewidth=0.8, label="one head" if h == 0 else None)
    bars.bar(range(len(slices)), mean, color="#d62728", alpha=0.7, label="mean over heads")
    bars.set_xlabel("slice")
    bars.set_ylabel("attention")
    bars.set_xticks(range(len(slices)))
    bars.set_ylim(0.0, 1.3 * float(attention.max()))  # room for the legend above the bars
    bars.legend(fontsize=8, loc="upper right", ncols=2)
    fig.suptitle(f"Cross-attention of the 3D {organ.replace('_', ' ')} feature over its 2D slices", fontsize=11)
    return _save(fig, path)

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The seven organs, their order, the ranking tie rule and the label conventions that map label-map ids to them.

Tensors, reports and JSON answers all use this order, so an organ's position here is its class index everywhere:
in the image network's outputs, the text head, the query answers, the metrics and the corpus builder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ORGANS", "check_organs", "descending_order", "rank_organs", "label_convention"]

ORGANS: tuple[str, ...] = ("liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland")


def check_organs(organs: Sequence[str]) -> list[str]:
    """``organs`` as a list, refused when empty or repeated."""
    organs = list(organs)
    if not organs:
        raise ValueError("organs is empty; at least one organ is needed.")
    if len(set(organs)) != len(organs):
        raise ValueError(f"organs must be distinct; got {organs}.")
    return organs


def descending_order(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Indices sorting ``scores`` by descending value along ``axis``; ties keep index order (stable sort), so equal
    scores keep the canonical organ order and no metric can profit from a lucky tie."""
    return np.argsort(-scores, axis=axis, kind="stable")


def rank_organs(
    scores: Mapping[str, float] | Sequence[float] | np.ndarray, organs: Sequence[str] | None = None
) -> list[str]:
    """Organs by descending score; ties keep the canonical order (earlier organ first).

    Args:
        scores: one query's scores: organ name -> score (its key order is the canonical order), or ``(K,)`` values
            in the order of ``organs``.
        organs: organ names in score order (default ``ORGANS``); not given with a mapping.

    Returns:
        Organ names, best first.
    """
    if isinstance(scores, Mapping):
        if organs is not None:
            raise ValueError("rank_organs takes organs only with a sequence of scores, not with a mapping.")
        organs, scores = list(scores), [float(value) for value in scores.values()]
    organs = check_organs(ORGANS if organs is None else organs)
    row = np.asarray(scores, dtype=np.float64)
    if row.shape != (len(organs),):
        raise ValueError(f"scores must have shape ({len(organs)},); got {row.shape}.")
    if np.isnan(row).any():
        raise ValueError("scores contain NaN.")
    return [organs[j] for j in descending_order(row)]


def label_convention(
    conventions: Mapping[str, Mapping[str, Any]], name: str, organs: Sequence[str] = ORGANS
) -> dict[str, Any]:
    """The ``organ_labels`` and ``known_labels`` of the label convention ``name``, checked and in class-index order.

    Label ids differ between datasets (BTCV, TotalSegmentator, a site's own), while the network's class indices must
    not: this turns a named entry of the config's ``label_conventions`` into the two mappings the transforms use, so a
    convention is chosen with ``--label_convention NAME`` and a new one is added in config, not code.

    Args:
        conventions: convention name -> ``{"organ_labels": {organ: [ids]}, "known_labels": [ids] or None}``;
            ``known_labels`` lists every id its label maps may hold (``None`` or absent: any id is accepted).
        name: the convention to use.
        organs: the organs, in class-index order; every convention must map exactly these.

    Returns:
        ``{"organ_labels": {organ: [ids]} in the order of organs, "known_labels": sorted ids or None}``.

    Raises:
        ValueError: ``name`` is not a convention, or the convention does not map exactly ``organs`` to distinct,
            non-zero ids that ``known_labels`` contains.
    """
    where = f"label_conventions#{name}"
    if name not in conventions:
        raise ValueError(
            f"unknown label convention {name!r}; available: {', '.join(sorted(map(str, conventions)))} (add your own "
            f"under label_conventions, e.g. --{where} \"{{'organ_labels': {{...}}, 'known_labels': [...]}}\")."
        )
    convention = conventions[name]
    organ_labels = convention.get("organ_labels") if isinstance(convention, Mapping) else None
    if not isinstance(organ_labels, Mapping):
        raise ValueError(f"{where} must hold 'organ_labels' (organ -> label ids), got {convention!r}.")
    missing = [organ for organ in organs if organ not in organ_labels]
    extra = [organ for organ in organ_labels if organ not in organs]
    if missing or extra:
        raise ValueError(
            f"{where}#organ_labels must map exactly the organs {list(organs)}; missing {missing}, unexpected {extra}."
        )
    owner: dict[int, str] = {}
    ordered: dict[str, list[int]] = {}
    for organ in organs:
        ids = organ_labels[organ]
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if not ids or any(isinstance(i, bool) or not isinstance(i, (int, float)) or int(i) != i or i <= 0 for i in ids):
            raise ValueError(f"{where}#organ_labels#{organ} must be a list of positive label ids, got {ids!r}.")
        for i in map(int, ids):
            if i in owner:
                raise ValueError(f"{where}#organ_labels: label id {i} is listed for both {owner[i]!r} and {organ!r}.")
            owner[i] = organ
        ordered[organ] = [int(i) for i in ids]
    known = convention.get("known_labels")
    if known is not None:
        known = sorted({int(i) for i in known})
        unlisted = sorted(set(owner) - set(known))
        if unlisted:
            raise ValueError(f"{where}#known_labels lacks the organ label ids {unlisted}; it must list every id.")
    return {"organ_labels": ordered, "known_labels": known}

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Synthetic abdominal CT in the BTCV layout: the bundle's default data when no real CT is at hand.

Each case is a portal-venous-phase abdomen drawn from a table of anatomical structures (``_STRUCTURES``) in
patient coordinates (RAS+: +x = patient's Right, +y = Anterior, +z = Superior; millimetres, origin at the centre
of the torso near the level of the renal hila). A numpy Generator seeded from ``(seed, case index)`` varies body
habitus, organ size, position, orientation, shape (smooth random domain warps, lobulation), contrast and noise, so
no two cases are alike and held-out cases test generalisation rather than memory.

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
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from .atomic_io import atomic_write, write_json_atomic

__all__ = [
    "BTCV_LABELS",
    "PHANTOM_VERSION",
    "generate_case",
    "generate_phantom_dataset",
    "ensure_phantom",
]

#: Bump whenever the generator's output changes, so that data written by an older version is not reused.
PHANTOM_VERSION = 1
DATALIST_NAME = "dataset_0.json"
_PROGRESS_NAME = ".phantom_in_progress.json"

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

# A downsampled BTCV CT: in-plane spacing for a 128-voxel matrix, slice spacing for a 64-slice minimum.
_REFERENCE_SHAPE = (128, 128, 64)
_INPLANE_SPACING_MM = (2.6, 3.2)
_SLICE_SPACINGS_MM = (2.5, 3.0, 4.0, 5.0)
# Reference torso (semi-axes of the skin ellipse, mm) for which the structure table below is written.
_REF_BODY = {"a": 150.0, "b": 110.0, "fat": 20.0, "muscle": 12.0}
_Z_MARGIN_MM = (22.0, 28.0)  # kept above the diaphragm dome and below the lowest kidney pole


# ----------------------------------------------------------------------------------------------------------------
# geometry primitives
# ----------------------------------------------------------------------------------------------------------------


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation matrix for successive rotations about x, y then z (degrees), applied as ``Rz @ Ry @ Rx``."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=float))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class _Ellipsoid:
    """Superellipsoid; ``field`` is a normalised radius (<= 1 inside) so primitives can be unioned by a min."""

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    exponent: float = 2.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.abs(self.rot) @ self.radii
        return self.center - half, self.center + half

    def field(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        # Python floats keep the arithmetic in the coordinates' float32
        (cx, cy, cz), rot, radii = self.center.tolist(), self.rot.tolist(), self.radii.tolist()
        d = (x - cx, y - cy, z - cz)
        total = 0.0
        for k in range(3):  # local coordinate k = column k of rot dotted with the offset
            u = (rot[0][k] * d[0] + rot[1][k] * d[1] + rot[2][k] * d[2]) * (1.0 / radii[k])
            total = total + (np.abs(u) ** float(self.exponent) if self.exponent != 2 else u * u)
        return total ** (1.0 / float(self.exponent)) if self.exponent != 2 else np.sqrt(total)

    def moved(self, pose: _Pose) -> _Ellipsoid:
        radii = self.radii * pose.scale * pose.axis_scale
        return _Ellipsoid(pose.point(self.center), radii, pose.rot @ self.rot, self.exponent)


@dataclass
class _Tube:
    """Polyline with a radius at each vertex, linearly interpolated (vessels, hollow viscera, pancreas)."""

    points: np.ndarray  # (n, 3)
    radii: np.ndarray  # (n,)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = float(self.radii.max())
        return self.points.min(0) - r, self.points.max(0) + r

    def field(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        best = None
        points, radii = self.points.tolist(), self.radii.tolist()
        for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
            d = [b[i] - a[i] for i in range(3)]
            px, py, pz = x - a[0], y - a[1], z - a[2]
            t = np.clip((px * d[0] + py * d[1] + pz * d[2]) * (1.0 / max(sum(v * v for v in d), 1e-6)), 0.0, 1.0)
            dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
            g = dist / (ra + t * (rb - ra))
            best = g if best is None else np.minimum(best, g)
        return best

    def moved(self, pose: _Pose) -> _Tube:
        return _Tube(np.stack([pose.point(p) for p in self.points]), self.radii * pose.scale)


_Primitive = _Ellipsoid | _Tube


@dataclass
class _Pose:
    """Per-case placement of a structure: rotate and scale about a pivot, then shift, then stretch with the body."""

    pivot: np.ndarray
    rot: np.ndarray
    scale: float
    shift: np.ndarray
    stretch: np.ndarray  # body-size factor per axis, applied to positions only (not to organ shapes)
    axis_scale: np.ndarray = field(default_factory=lambda: np.ones(3))  # extra size factor per ellipsoid axis

    def point(self, p: np.ndarray) -> np.ndarray:
        local = self.pivot + self.scale * (self.rot @ (np.asarray(p, float) - self.pivot)) + self.shift
        return local * self.stretch


def _ell(center, radii, rot=(0, 0, 0), exponent=2.0) -> _Ellipsoid:
    return _Ellipsoid(np.asarray(center, float), np.asarray(radii, float), _rotation(rot), exponent)


def _tube(points, radii) -> _Tube:
    pts = np.asarray(points, float)
    rad = np.broadcast_to(np.asarray(radii, float), (len(pts),)).copy()
    return _Tube(pts, rad)


# ----------------------------------------------------------------------------------------------------------------
# structure table (reference anatomy; RAS+ mm, +x = patient's right)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Spec:
    """One anatomical structure of the reference anatomy and how it may vary between cases.

    ``label`` 0 paints tissue that BTCV leaves unlabelled (bowel, renal veins, hepatic veins); ``region`` limits it
    to part of the body; ``shader`` names the intensity model; ``hu`` is the sampled mean intensity range;
    ``parent`` makes a structure move with another one (the gallbladder with the liver, ...).
    """

    name: str
    label: int
    parts: list[_Primitive]
    hu: tuple[float, float]
    shader: str = "uniform"
    region: str = "abdomen"  # "abdomen" (below the diaphragm), "cavity" (whole body cavity), "liver" (inside it)
    carve: list[_Primitive] = field(default_factory=list)
    halo_mm: float = 0.0  # fat left around the structure where it displaces an earlier organ
    warp_mm: float = 0.0  # amplitude of the smooth random domain deformation
    lobulation: float = 0.0  # amplitude of a fine random perturbation of the surface (normalised radius units)
    shift_mm: float = 5.0  # standard deviation of the per-case translation
    scale_sd: float = 0.07  # standard deviation of the per-case size factor (per axis adds 0.05 more)
    rot_deg: float = 6.0  # standard deviation of the per-case rotation about each axis
    parent: str | None = None
    optional: bool = False  # may be absent (gallbladder after cholecystectomy)


def _reference_structures() -> list[_Spec]:
    """Reference anatomy in paint order: a later structure wins where two overlap."""
    return [
        # bowel first, so that every organ displaces it
        _Spec(
            "colon", 0, [_tube([(95, 5, -110), (97, 10, 0), (80, 35, 18), (20, 62, 8), (-45, 55, 14),
                                (-88, 12, 40), (-98, -5, -20), (-95, 0, -110)], 22)],
            (35, 55), shader="colon", region="cavity", warp_mm=6, shift_mm=6, scale_sd=0.1, rot_deg=3,
        ),
        _Spec(
            "duodenum", 0, [_tube([(22, 32, 30), (48, 15, 22), (52, 5, -8), (28, -2, -30), (-12, 4, -30),
                                   (-32, 12, -16)], [12, 13, 13, 12, 11, 10])],
            (35, 55), shader="bowel", region="cavity", warp_mm=3, parent="pancreas", rot_deg=2, shift_mm=2,
        ),
        _Spec(
            "liver", 6, [
                _ell((55, -5, 75), (64, 72, 74), (0, 0, 0), 2.3),  # right lobe
                _ell((-22, 42, 90), (54, 28, 34), (0, 0, -8), 2.2),  # left lobe, anterior to the stomach
                _ell((14, -8, 80), (18, 20, 30)),  # caudate lobe, beside the IVC
            ],
            (100, 122), shader="textured", warp_mm=8, shift_mm=6, scale_sd=0.06,
        ),
        _Spec(
            "hepatic veins", 0, [_tube([(20, -4, 112), (78, 18, 88)], [6, 3]),
                                 _tube([(20, -4, 112), (32, 40, 95)], [6, 3]),
                                 _tube([(20, -4, 112), (-20, 42, 94)], [5, 2.5])],
            (35, 55), shader="relative", region="liver", parent="liver", rot_deg=4, shift_mm=2,
        ),
        _Spec(
            "esophagus", 5, [_tube([(-4, -14, 260), (-8, -8, 125), (-40, 0, 100)], 7)],
            (40, 60), shader="esophagus", region="cavity", shift_mm=2, scale_sd=0.05, rot_deg=1,
        ),
        _Spec(
            "renal veins", 0, [_tube([(42, -34, -12), (22, -8, -6)], 5), _tube([(-42, -32, 0), (-10, 8, 2),
                                                                                 (20, -6, 0)], 5)],
            (140, 175), region="cavity", shift_mm=1, scale_sd=0.02, rot_deg=1,
        ),
        _Spec(
            "stomach", 7, [_tube([(-48, 0, 102), (-62, 22, 70), (-45, 42, 40), (-8, 46, 28), (22, 32, 30)],
                                 [30, 32, 28, 18, 11])],
            (75, 98), shader="stomach", halo_mm=2, warp_mm=6, shift_mm=6, scale_sd=0.09, rot_deg=5,
        ),
        _Spec(
            "spleen", 1, [_ell((-78, -26, 72), (22, 50, 46), (0, 0, -40), 2.1)],
            (115, 140), shader="textured", carve=[_ell((-45, -20, 72), (24, 32, 38), (0, 0, -40))],
            halo_mm=3, warp_mm=6, shift_mm=6, scale_sd=0.09,
        ),
        _Spec(
            "pancreas", 11, [_tube([(32, 10, -2), (30, 12, 8), (8, 20, 14), (-22, 16, 22), (-60, 0, 36),
                                    (-76, -16, 46)], [14, 15, 10, 11, 9, 7])],
            (88, 112), shader="textured", halo_mm=2, warp_mm=4, lobulation=0.12, shift_mm=4, scale_sd=0.09,
            rot_deg=4,
        ),
        _Spec(
            "gallbladder", 4, [_ell((40, 40, 18), (13, 13, 33), (35, 10, 0), 2.0)],
            (4, 20), halo_mm=1, warp_mm=3, parent="liver", shift_mm=4, scale_sd=0.1, optional=True,
        ),
        _Spec(
            "right kidney", 2, [_ell((62, -40, -12), (27, 21, 55), (-12, -12, 25), 2.2)],
            (160, 195), shader="kidney", carve=[_ell((40, -36, -12), (12, 10, 19), (-12, -12, 25))],
            halo_mm=5, warp_mm=3, shift_mm=5, scale_sd=0.07, rot_deg=4,
        ),
        _Spec(
            "left kidney", 3, [_ell((-62, -40, 0), (27, 21, 55), (-12, 12, -25), 2.2)],
            (160, 195), shader="kidney", carve=[_ell((-40, -36, 0), (12, 10, 19), (-12, 12, -25))],
            halo_mm=5, warp_mm=3, shift_mm=5, scale_sd=0.07, rot_deg=4,
        ),
        _Spec(
            "portal and splenic veins", 10, [
                _tube([(8, 10, -45), (8, 10, 12), (36, 6, 45), (56, 2, 60)], [6, 7, 7, 4]),  # SMV, portal vein
                _tube([(8, 10, 12), (-22, 6, 22), (-60, -8, 36), (-80, -24, 50)], [5, 5, 4.5, 4]),  # splenic vein
            ],
            (150, 185), region="cavity", warp_mm=3, parent="pancreas", shift_mm=1, scale_sd=0.03, rot_deg=1,
        ),
        _Spec(
            "inferior vena cava", 9, [_tube([(22, 6, 175), (22, -4, 110), (24, -8, 40), (24, -8, -260)],
                                            [12, 12, 11, 11])],
            (150, 180), region="cavity", shift_mm=2, scale_sd=0.08, rot_deg=1,
        ),
        _Spec(
            "aorta", 8, [_tube([(-20, -22, 260), (-14, -4, 110), (-10, -2, -60), (-8, 0, -260)], [12, 12, 11, 10])],
            (150, 200), region="cavity", shift_mm=2, scale_sd=0.08, rot_deg=1,
        ),
        # adrenals: two thin limbs each, an inverted V opening posteriorly, superomedial to each kidney
        _Spec(
            "right adrenal gland", 12, [_ell((42.6, -30, 56), (3.5, 11, 17), (0, 0, 25)),
                                        _ell((33.4, -30, 56), (3.5, 11, 17), (0, 0, -25))],
            (55, 80), halo_mm=3, parent="right kidney", shift_mm=2, scale_sd=0.09, rot_deg=6,
        ),
        _Spec(
            "left adrenal gland", 13, [_ell((-29.4, -22, 40), (3.5, 11, 17), (0, 0, -25)),
                                       _ell((-38.6, -22, 40), (3.5, 11, 17), (0, 0, 25))],
            (55, 80), halo_mm=3, parent="left kidney", shift_mm=2, scale_sd=0.09, rot_deg=6,
        ),
    ]


# ----------------------------------------------------------------------------------------------------------------
# per-case sampling
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Body:
    """Torso and thoracic cage of one case (mm)."""

    a: float  # skin semi-axis, left-right
    b: float  # skin semi-axis, antero-posterior
    fat: float
    muscle: float
    spine_y: float  # centre of the vertebral bodies
    vertebra_r: float
    domes: list[tuple[np.ndarray, float]]  # (apex, radius of curvature) of the right and left diaphragm domes
    hu: dict[str, float]

    @property
    def cavity(self) -> tuple[float, float]:
        return self.a - self.fat - self.muscle, self.b - self.fat - self.muscle


def _sample_body(rng: np.random.Generator) -> _Body:
    # the cavity is drawn first: habitus changes the fat much more than the room the viscera need
    ac, bc = rng.uniform(100, 130), rng.uniform(66, 88)
    muscle = rng.uniform(9, 13)
    fat = min(rng.uniform(6, 34), 158 - ac - muscle)  # the skin stays inside the smallest field of view
    a, b = ac + muscle + fat, bc + muscle + fat  # one fat thickness all round keeps the wall layers concentric
    ref_bc = _REF_BODY["b"] - _REF_BODY["fat"] - _REF_BODY["muscle"]
    stretch = np.array([ac / (_REF_BODY["a"] - _REF_BODY["fat"] - _REF_BODY["muscle"]), bc / ref_bc])
    dz = rng.normal(0, 6, 2)
    domes = [
        (np.array([50 * stretch[0], -5 * stretch[1], 138 + dz[0]]), rng.uniform(85, 110)),
        (np.array([-55 * stretch[0], -10 * stretch[1], 124 + dz[1]]), rng.uniform(80, 105)),
    ]
    hu = {
        "fat": rng.uniform(-112, -88),
        "muscle": rng.uniform(42, 60),
        "cancellous": rng.uniform(180, 300),
        "cortical": rng.uniform(650, 950),
        "rib": rng.uniform(400, 700),
        "disc": rng.uniform(70, 100),
        "csf": rng.uniform(5, 20),
        "lung": rng.uniform(-880, -820),
        "heart": rng.uniform(100, 140),
    }
    return _Body(a, b, fat, muscle, float(-bc + 43 * stretch[1]), rng.uniform(17, 22), domes, hu)


@dataclass
class _Structure:
    """A structure placed for one case."""

    spec: _Spec
    parts: list[_Primitive]
    carve: list[_Primitive]
    hu: float
    seed: int

    def bounds(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = zip(*(p.bounds() for p in self.parts))
        return np.min(lows, 0) - margin, np.max(highs, 0) + margin


def _place_structures(
    rng: np.random.Generator, body: _Body, p_missing_gallbladder: float
) -> list[_Structure]:
    """Sample each structure's pose, size and intensity; children inherit their parent's pose."""
    ref_a = _REF_BODY["a"] - _REF_BODY["fat"] - _REF_BODY["muscle"]
    ref_b = _REF_BODY["b"] - _REF_BODY["fat"] - _REF_BODY["muscle"]
    ac, bc = body.cavity
    stretch = np.array([ac / ref_a, bc / ref_b, rng.uniform(0.93, 1.07)])
    organ_scale = float(np.sqrt(stretch[0] * stretch[1])) ** 0.5  # organs grow less than the cavity does
    shared_shift = rng.normal(0, 4, 3)  # the whole visceral block moves together as well as organ by organ
    shared_shift[2] += body.domes[0][0][2] - 138  # follow the diaphragm
    specs = _reference_structures()
    poses: dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray]] = {}
    placed: dict[str, _Structure] = {}
    for spec in sorted(specs, key=lambda sp: sp.parent is not None):  # parents first
        centers = np.array([p.center if isinstance(p, _Ellipsoid) else p.points.mean(0) for p in spec.parts])
        pivot = centers.mean(0)
        rot = _rotation(np.clip(rng.normal(0, spec.rot_deg, 3), -2 * spec.rot_deg, 2 * spec.rot_deg))
        scale = float(np.clip(rng.normal(1, spec.scale_sd), 1 - 2 * spec.scale_sd, 1 + 2 * spec.scale_sd))
        shift = np.clip(rng.normal(0, spec.shift_mm, 3), -2.5 * spec.shift_mm, 2.5 * spec.shift_mm)
        hu = rng.uniform(*spec.hu)
        seed = int(rng.integers(2**31))
        if spec.parent is not None:  # move with the parent: its rotation and scale about its pivot, its shift
            p_pivot, p_rot, p_scale, p_shift = poses[spec.parent]
            shift = shift + p_shift + p_pivot + p_scale * (p_rot @ (pivot - p_pivot)) - pivot
            rot = p_rot @ rot  # but keeps its own size: a small liver does not imply a small gallbladder
        else:
            scale *= organ_scale
            shift = shift + shared_shift * (spec.region != "cavity" or spec.label == 0)
        poses[spec.name] = (pivot, rot, scale, shift)
        if spec.optional and rng.random() < p_missing_gallbladder:
            continue
        pose = _Pose(pivot, rot, scale, shift, stretch, np.clip(rng.normal(1, 0.05, 3), 0.9, 1.1))
        placed[spec.name] = _Structure(
            spec, [p.moved(pose) for p in spec.parts], [p.moved(pose) for p in spec.carve], hu, seed
        )
    return [placed[spec.name] for spec in specs if spec.name in placed]  # paint order


# ----------------------------------------------------------------------------------------------------------------
# the voxel grid
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """Voxel grid and anatomical (patient, RAS mm) coordinates of every voxel centre."""

    affine: np.ndarray  # voxel -> scanner RAS mm, as written to the NIfTI header
    shape: tuple[int, int, int]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    to_anatomy: np.ndarray  # 4x4, scanner RAS -> anatomy frame (the patient lies slightly rotated on the table)

    @property
    def spacing(self) -> np.ndarray:
        return np.abs(np.diag(self.affine)[:3])

    def block(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the anatomy-frame box [lo, hi], or None if it misses the volume."""
        corners = np.array([[c[0], c[1], c[2], 1.0] for c in np.array(np.meshgrid(*zip(lo, hi))).reshape(3, -1).T])
        vox = (np.linalg.inv(self.to_anatomy @ self.affine) @ corners.T)[:3]
        start = np.maximum(np.floor(vox.min(1)).astype(int), 0)
        stop = np.minimum(np.ceil(vox.max(1)).astype(int) + 1, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[sl], self.y[sl], self.z[sl]


def _make_grid(rng: np.random.Generator, shape: Sequence[int], z_range: tuple[float, float]) -> _Grid:
    """Spacing, slice count and affine of one case: the whole z_range (anatomy frame) always fits in the volume."""
    nx, ny, nz_min = (int(s) for s in shape)
    base = rng.uniform(*_INPLANE_SPACING_MM)
    sx, sy = base * _REFERENCE_SHAPE[0] / nx, base * _REFERENCE_SHAPE[1] / ny
    sz = float(rng.choice(_SLICE_SPACINGS_MM)) * _REFERENCE_SHAPE[2] / nz_min
    tilt = _rotation((rng.normal(0, 1.5), rng.normal(0, 1.5), rng.normal(0, 3)))
    extent = z_range[1] - z_range[0] + 2 * max(nx * sx, ny * sy) / 2 * math.sin(math.radians(5))
    nz = max(nz_min, int(math.ceil(extent / sz)) + 1)
    slack = nz * sz - extent
    z_centre = 0.5 * (z_range[0] + z_range[1]) + rng.uniform(-0.4, 0.4) * slack
    centre = np.array([rng.normal(0, 6), rng.normal(0, 6), z_centre])  # anatomy point at the volume centre
    table = np.array([0.0, rng.uniform(-200, -120), rng.uniform(-600, -100)])  # scanner position of the anatomy
    affine = np.diag([-sx, -sy, sz, 1.0])  # LPS-like storage, as in BTCV
    affine[:3, 3] = table + tilt @ centre - affine[:3, :3] @ (np.array([nx, ny, nz]) - 1) / 2
    to_anatomy = np.eye(4)
    to_anatomy[:3, :3] = tilt.T
    to_anatomy[:3, 3] = -tilt.T @ table
    vox_to_anat = to_anatomy @ affine
    i, j, k = (np.arange(n, dtype=np.float32) for n in (nx, ny, nz))
    m = vox_to_anat.astype(np.float32)
    coords = [
        m[r, 0] * i[:, None, None] + m[r, 1] * j[None, :, None] + m[r, 2] * k[None, None, :] + m[r, 3] for r in range(3)
    ]
    return _Grid(affine, (nx, ny, nz), *coords, to_anatomy)


# ----------------------------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Canvas:
    grid: _Grid
    body: _Body
    hu: np.ndarray
    label: np.ndarray
    regions: dict[str, np.ndarray]
    widen: np.ndarray | float = 1.0  # left-right torso widening factor of every voxel (see _widening)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float | Sequence[float]) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian random field with correlation length ``sigma_vox`` voxels."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma_vox, truncate=2.5)
    sd = float(field_.std())
    return field_ / sd if sd > 0 else field_


def _ellipse(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry) -> np.ndarray:
    """Inside of an axis-aligned ellipse (centre and radii may be arrays that broadcast against x and y)."""
    return (x - cx) ** 2 * ry**2 + (y - cy) ** 2 * rx**2 <= rx**2 * ry**2


def _diaphragm_z(body: _Body, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the diaphragm: the upper envelope of two paraboloid domes."""
    heights = [apex[2] - ((x - apex[0]) ** 2 + (y - apex[1]) ** 2) * (0.5 / r) for apex, r in
               ((apex.tolist(), float(r)) for apex, r in body.domes)]
    return np.maximum(*heights)


def _draw_body(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Torso, spine and back muscles, ribs, lung bases and heart; records the regions organs may occupy."""
    canvas.widen = _widening(canvas.grid.z)
    cavity = _draw_torso(canvas)
    posterior = _draw_spine(canvas, rng)
    ribs = _draw_ribs(canvas, rng)
    open_cavity = cavity & ~posterior & ~ribs
    canvas.regions["cavity"] = open_cavity
    canvas.regions["abdomen"] = open_cavity & ~_draw_thorax(canvas, open_cavity)


def _widening(z: np.ndarray) -> np.ndarray:
    """Left-right widening of the torso with descent: the belly is a little wider than the lower chest."""
    return 1.0 + 0.04 * np.tanh(z * (-1.0 / 150.0))


def _draw_torso(canvas: _Canvas) -> np.ndarray:
    """Subcutaneous fat, muscle wall and (fat-filled) abdominal cavity; returns the cavity mask."""
    body, hu, (x, y, z) = canvas.body, canvas.hu, canvas.grid.coords((slice(None),) * 3)
    widen = canvas.widen
    ac, bc = body.cavity
    hu[_ellipse(x, y, 0, 0, body.a * widen, body.b)] = body.hu["fat"]
    hu[_ellipse(x, y, 0, 0, body.a * widen - body.fat, body.b - body.fat)] = body.hu["muscle"]
    cavity = _ellipse(x, y, 0, 0, ac * widen, bc)
    hu[cavity] = body.hu["fat"]
    return cavity


def _draw_spine(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Vertebral bodies with discs, neural arches, spinal canal, paraspinal and psoas muscles.

    Returns the full-volume mask of these posterior structures, from which organs are excluded.
    """
    body, grid = canvas.body, canvas.grid
    sy, rv, bc = body.spine_y, body.vertebra_r, body.cavity[1]
    posterior = np.zeros(grid.shape, bool)
    sl = grid.block(np.array([-75.0, -body.b, -1e4]), np.array([75.0, sy + rv + 5, 1e4]))
    if sl is None:
        return posterior
    hu, (x, y, z) = canvas.hu[sl], grid.coords(sl)
    vertebra = _ellipse(x, y, 0, sy, rv * 1.1, rv)
    canal_y = sy - rv - 9
    spinous = (np.abs(x) < 4) & (y < canal_y) & (y > -bc - body.muscle + 4)
    arch = (_ellipse(x, y, 0, canal_y, 14, 13) | spinous) & ~_ellipse(x, y, 0, canal_y, 8, 7.5)
    paraspinal = _ellipse(np.abs(x), y, 30, canal_y - 16, 22, 18) & (y > -body.b + body.fat)
    psoas_r = np.clip(5 + (30 - z) * 0.09, 0, 17)
    psoas = (psoas_r > 0) & _ellipse(np.abs(x), y, rv + 14 + psoas_r * 0.5, sy + 2, psoas_r, psoas_r * 0.85)
    hu[paraspinal | psoas] = body.hu["muscle"]
    hu[_ellipse(x, y, 0, canal_y, 8, 7.5)] = body.hu["csf"]
    pitch = rng.uniform(26, 32)
    disc = np.mod(z - rng.uniform(0, pitch), pitch) < rng.uniform(5, 8)
    shell = vertebra & ~_ellipse(x, y, 0, sy, rv * 1.1 - 2.5, rv - 2.5)
    hu[vertebra] = np.where(np.broadcast_to(disc, vertebra.shape)[vertebra], body.hu["disc"], body.hu["cancellous"])
    hu[(shell | arch) & ~disc] = body.hu["cortical"]
    posterior[sl] = vertebra | arch | paraspinal | psoas | _ellipse(x, y, 0, canal_y, 8, 7.5)
    return posterior


def _draw_ribs(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Ribs in the muscle wall above the costal margin, descending anteriorly, absent near the anterior midline."""
    body, (x, y, z) = canvas.body, canvas.grid.coords((slice(None),) * 3)
    ac, bc = body.cavity
    ribs = np.zeros(canvas.grid.shape, bool)
    mid_a = ac * canvas.widen + body.muscle * 0.5
    radial = np.sqrt((x / mid_a) ** 2 + (y * (1.0 / (bc + body.muscle * 0.5))) ** 2)
    band = np.nonzero(np.abs(radial - 1) * bc < 5)  # the ring in which ribs run; only it needs the angle
    xb, yb, zb = np.broadcast_to(x, ribs.shape)[band], np.broadcast_to(y, ribs.shape)[band], np.broadcast_to(z, ribs.shape)[band]
    angle = np.abs(np.arctan2(xb, -(yb - body.spine_y)))  # 0 posterior, pi anterior
    costal_margin = rng.uniform(-45, -25) + 75 * angle / np.pi
    pitch, slope = rng.uniform(28, 34), rng.uniform(24, 34)
    on_rib = np.mod(zb + slope * angle, pitch) < rng.uniform(7, 10)
    keep = on_rib & (zb > costal_margin) & (angle > 0.35) & (angle < 0.82 * np.pi)
    ribs[tuple(b[keep] for b in band)] = True
    canvas.hu[ribs] = body.hu["rib"]
    return ribs


def _draw_thorax(canvas: _Canvas, open_cavity: np.ndarray) -> np.ndarray:
    """Lung bases, mediastinal fat and heart above the diaphragm; returns the region above the diaphragm (+4 mm)."""
    body, hu, (x, y, z) = canvas.body, canvas.hu, canvas.grid.coords((slice(None),) * 3)
    dome = _diaphragm_z(body, x, y)
    above = z > dome - 4
    thorax = open_cavity & (z > dome)
    heart_z = float(body.domes[1][0][2]) + 50
    heart = thorax & (((x + 20) * (1 / 60)) ** 2 + ((y - 35) * (1 / 50)) ** 2 + ((z - heart_z) * (1 / 55)) ** 2 < 1)
    mediastinum = thorax & _ellipse(x, y, 0, body.spine_y + body.vertebra_r + 15, 30, 35)
    hu[thorax] = body.hu["lung"]
    hu[mediastinum] = body.hu["fat"]
    hu[heart] = body.hu["heart"]
    return above


def _warped(struct: _Structure, x, y, z, amplitude: float):
    """Smooth random domain deformation: a sum of two low-frequency sinusoids per axis (mm)."""
    if amplitude <= 0:
        return x, y, z
    rng = np.random.default_rng(struct.seed)
    out = []
    for c in (x, y, z):
        d = 0.0
        for _ in range(2):
            k = rng.normal(size=3)
            k = (k * (2 * np.pi / (np.linalg.norm(k) * rng.uniform(60, 140)))).tolist()
            d = d + 0.5 * amplitude * np.sin(k[0] * x + k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi))
        out.append(c + d)
    return tuple(out)


def _union(fields: list[np.ndarray], k: float = 0.12) -> np.ndarray:
    """Smooth minimum of normalised radii, so that lobes merge without creases."""
    if len(fields) == 1:
        return fields[0]
    stacked = np.stack(fields)
    low = stacked.min(0)
    return low - k * np.log(np.exp(-(stacked - low) / k).sum(0))


def _paint(canvas: _Canvas, struct: _Structure) -> None:
    """Rasterise one structure onto the canvas: shape, clipping to its body region, halo, intensity and label."""
    spec = struct.spec
    margin = spec.warp_mm + spec.halo_mm + 4
    sl = canvas.grid.block(*struct.bounds(margin))
    if sl is None:
        return
    x, y, z = _warped(struct, *canvas.grid.coords(sl), spec.warp_mm)
    g = _union([p.field(x, y, z) for p in struct.parts])
    rng = np.random.default_rng(struct.seed + 1)
    if spec.lobulation:
        g = g + spec.lobulation * _smooth_noise(rng, g.shape, 4.0 / canvas.grid.spacing)
    inside = g <= 1.0
    for c in struct.carve:
        inside &= c.field(x, y, z) > 1.0
    if spec.region == "liver":
        inside &= canvas.label[sl] == 6
    else:
        inside &= canvas.regions[spec.region][sl]
    label, hu = canvas.label[sl], canvas.hu[sl]
    if spec.halo_mm:
        typical = min(float(np.min(p.radii)) for p in struct.parts)
        halo = (g <= 1.0 + spec.halo_mm / typical) & ~inside & (label > 0) & (label != spec.label)
        label[halo] = 0
        hu[halo] = canvas.body.hu["fat"]
    if not inside.any():
        return
    hu[inside] = _SHADERS[spec.shader](canvas, struct, inside, sl, rng, g)
    if spec.region != "liver":
        label[inside] = spec.label


# --- intensity models -------------------------------------------------------------------------------------------


def _shade_uniform(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    return np.full(int(inside.sum()), struct.hu, np.float32)


def _shade_textured(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    """Parenchyma with a mild organ-specific mottle."""
    return (struct.hu + 6.0 * _smooth_noise(rng, inside.shape, 1.2))[inside]


def _shade_relative(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    """Vessels inside an organ: the organ's intensity plus the sampled contrast."""
    return canvas.hu[sl][inside] + struct.hu


def _depth_mm(canvas: _Canvas, inside: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(np.pad(inside, 1), sampling=canvas.grid.spacing)[1:-1, 1:-1, 1:-1]


def _shade_kidney(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    """Enhancing cortex around a slightly darker medulla (renal pyramids)."""
    depth = _depth_mm(canvas, inside)[inside]
    cortex = rng.uniform(5, 8)
    medulla = struct.hu - rng.uniform(25, 45)
    pyramids = _smooth_noise(rng, inside.shape, 1.5)[inside] > -0.3
    return np.where((depth > cortex) & pyramids, medulla, struct.hu).astype(np.float32)


def _wall(struct: _Structure, g: np.ndarray, thickness_mm: float) -> np.ndarray:
    """Outer shell of a tubular structure, from its normalised radius (cheaper than a distance transform)."""
    radius = float(np.mean([np.mean(p.radii) for p in struct.parts]))
    return g > 1.0 - thickness_mm / radius


def _hollow(canvas, struct, inside, sl, rng, g, wall_hu: float, contents: str) -> np.ndarray:
    """Hollow viscus: a wall of 3-6 mm around air (non-dependent, i.e. anterior in a supine patient),
    fluid (dependent) or mottled food/stool."""
    wall = _wall(struct, g, max(rng.uniform(3, 6), 1.3 * float(canvas.grid.spacing[:2].max())))[inside]
    y = canvas.grid.coords(sl)[1][inside]
    fluid = rng.uniform(0, 30)
    mottle = _smooth_noise(rng, inside.shape, 1.0)[inside]
    if contents == "food":
        lumen = np.where(mottle > 1.2, -1000.0, rng.uniform(20, 60) + 25 * mottle)
    elif contents == "stool":
        lumen = np.where(mottle > 0.7, -1000.0, -40 + 60 * mottle)
    else:  # air over fluid; ``contents`` is the air fraction of the lumen as a string
        level = np.quantile(y[~wall], 1.0 - float(contents)) if (~wall).any() else np.inf
        lumen = np.where(y > level, -1000.0, fluid)
    return np.where(wall, wall_hu, lumen).astype(np.float32)


def _shade_stomach(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    contents = rng.choice(["food", str(rng.uniform(0.15, 0.6)), str(rng.uniform(0.7, 0.95))])
    return _hollow(canvas, struct, inside, sl, rng, g, struct.hu, contents)


def _shade_bowel(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    return _hollow(canvas, struct, inside, sl, rng, g, struct.hu, str(rng.uniform(0.0, 0.4)))


def _shade_colon(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    return _hollow(canvas, struct, inside, sl, rng, g, struct.hu, "stool")


def _shade_esophagus(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    return np.where(_wall(struct, g, 5.0)[inside], struct.hu, -1000.0).astype(np.float32)


_SHADERS: dict[str, Callable[..., np.ndarray]] = {
    "uniform": _shade_uniform,
    "textured": _shade_textured,
    "relative": _shade_relative,
    "kidney": _shade_kidney,
    "stomach": _shade_stomach,
    "bowel": _shade_bowel,
    "colon": _shade_colon,
    "esophagus": _shade_esophagus,
}


def _small_bowel(rng: np.random.Generator, body: _Body) -> list[_Structure]:
    """A few random loops of small bowel in the lower anterior abdomen (unlabelled, as in BTCV)."""
    ac, bc = body.cavity
    spec = _Spec("small bowel", 0, [], (35, 55), shader="bowel", region="abdomen")
    loops = []
    for _ in range(int(rng.integers(4, 8))):
        p = np.array([rng.uniform(-0.55, 0.55) * ac, rng.uniform(0.0, 0.6) * bc, rng.uniform(-110, -15)])
        points = [p]
        for _ in range(4):
            p = p + rng.normal(0, 1, 3) * np.array([30, 18, 18])
            points.append(p)
        loops.append(_Structure(spec, [_tube(points, rng.uniform(9, 13))], [], rng.uniform(*spec.hu),
                                int(rng.integers(2**31))))
    return loops


def _finish(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Scanner effects: point-spread blur, smooth texture, correlated quantum noise; HU rounded to int16."""
    image = ndimage.gaussian_filter(canvas.hu, 0.5, truncate=2.0)
    inside = canvas.hu > -900
    image += (rng.uniform(3, 7) * _smooth_noise(rng, image.shape, 2.0)) * inside
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), 0.6, truncate=2.0)
    image += noise * (rng.uniform(10, 20) / float(noise.std()))
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------


def _as_generator(rng_or_seed: np.random.Generator | int | Sequence[int]) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def generate_case(
    rng_or_seed: np.random.Generator | int | Sequence[int],
    shape: Sequence[int] = _REFERENCE_SHAPE,
    p_missing_gallbladder: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic portal-venous abdominal CT and its BTCV label map.

    Args:
        rng_or_seed: a numpy Generator, or a seed (int or sequence such as ``(seed, case_index)``) for one, so that
            a case can be regenerated exactly.
        shape: in-plane matrix and minimum slice count. In-plane spacing is drawn from 2.6-3.2 mm scaled by
            128 / matrix size (so the field of view stays that of a 128-matrix BTCV downsample); slice spacing from
            {2.5, 3, 4, 5} mm scaled by 64 / ``shape[2]``; more slices are added whenever needed so that the whole
            abdomen, from above the diaphragm dome to below the lowest kidney pole, is in the volume.
        p_missing_gallbladder: probability that the case has no gallbladder (cholecystectomy), to exercise code on
            label maps that lack an organ.

    Returns:
        ``(image, label, affine)``: int16 HU array and uint8 label array of the same shape ``(X, Y, Z)`` in the
        stored voxel order, and the 4x4 voxel-to-RAS affine both share (negative x and y spacing, like BTCV).
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {shape}.")
    rng = _as_generator(rng_or_seed)
    body = _sample_body(rng)
    structures = _place_structures(rng, body, p_missing_gallbladder)
    kidneys = [s for s in structures if s.spec.label in (2, 3)]
    z_low = min(float(s.bounds()[0][2]) for s in kidneys) - _Z_MARGIN_MM[1]
    z_high = max(float(apex[2]) for apex, _ in body.domes) + _Z_MARGIN_MM[0]
    grid = _make_grid(rng, shape, (z_low, z_high))
    canvas = _Canvas(grid, body, np.full(grid.shape, -1000.0, np.float32), np.zeros(grid.shape, np.uint8), {})
    _draw_body(canvas, rng)
    for struct in _small_bowel(rng, body) + structures:
        _paint(canvas, struct)
    return _finish(canvas, rng), canvas.label, grid.affine.copy()


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=1)  # scanner anatomical
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    atomic_write(path, lambda tmp: nib.save(img, tmp), ".nii.gz")


def _case_paths(index: int) -> dict[str, str]:
    return {"image": f"imagesTr/img{index:04d}.nii.gz", "label": f"labelsTr/label{index:04d}.nii.gz"}


def _phantom_params(seed, num_cases, num_validation, shape, p_missing_gallbladder) -> dict[str, Any]:
    return {
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "num_cases": int(num_cases),
        "num_validation": int(num_validation),
        "shape": [int(s) for s in shape],
        "p_missing_gallbladder": float(p_missing_gallbladder),
    }


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _differences(found: dict, wanted: dict) -> str:
    keys = sorted(set(found) | set(wanted))
    return ", ".join(f"{k}: {found.get(k)!r} on disk vs {wanted.get(k)!r} requested" for k in keys
                     if found.get(k) != wanted.get(k))


def generate_phantom_dataset(
    output_dir: str,
    num_cases: int = 30,
    num_validation: int = 6,
    seed: int = 0,
    shape: Sequence[int] = _REFERENCE_SHAPE,
    p_missing_gallbladder: float = 0.0,
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
    wanted = _phantom_params(seed, num_cases, num_validation, shape, p_missing_gallbladder)
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

    write_json_atomic(wanted, progress_path)  # lets an interrupted run resume instead of refusing its own files
    for index, case in enumerate(cases, start=1):
        image_path, label_path = (os.path.join(output_dir, case[k]) for k in ("image", "label"))
        if not overwrite and os.path.isfile(image_path) and os.path.isfile(label_path):
            continue  # same parameters: this case is already what it would be regenerated as
        image, label, affine = generate_case(np.random.default_rng([int(seed), index]), shape, p_missing_gallbladder)
        _save_nifti(label, affine, label_path)
        _save_nifti(image, affine, image_path)

    datalist = {
        "name": "Med-SORA abdominal CT phantom",
        "description": "Synthetic portal-venous abdominal CT with BTCV labels (generated by scripts/phantom.py)",
        "reference": "generated",
        "licence": "Apache-2.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": num_cases,
        "numTest": 0,
        "training": cases[: num_cases - num_validation],
        "validation": cases[num_cases - num_validation:],
        "test": [],
        "phantom": wanted,
    }
    write_json_atomic(datalist, datalist_path)
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

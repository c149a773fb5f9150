# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The phantom's anatomy: a table of abdominal structures in patient coordinates and its per-case variation.

Coordinates are RAS+ millimetres (+x = patient's Right, +y = Anterior, +z = Superior), origin at the centre of the
torso near the level of the renal hila. Each case draws body habitus, organ size, position, orientation and
intensity from a numpy Generator, so no two cases are alike; ``scanner`` turns the placed structures into voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "HABITUS",
    "Body",
    "Spec",
    "Structure",
    "Z_MARGIN_MM",
    "place_structures",
    "resize",
    "rotation",
    "sample_body",
    "tube",
]

# Reference torso (semi-axes of the skin ellipse, mm) for which the structure table below is written.
_REF_BODY = {"a": 150.0, "b": 110.0, "fat": 20.0, "muscle": 12.0}
Z_MARGIN_MM = (22.0, 28.0)  # kept above the diaphragm dome and below the lowest kidney pole
# body habitus: semi-axes of the abdominal cavity (left-right, antero-posterior) and subcutaneous fat, ranges in mm;
# "average" is the reference phantom's. An obese body may be wider than the field of view, as on a real scanner.
HABITUS: dict[str, dict[str, tuple[float, float]]] = {
    "cachectic": {"cavity_a": (92, 108), "cavity_b": (60, 72), "fat": (1, 6)},
    "average": {"cavity_a": (100, 130), "cavity_b": (66, 88), "fat": (6, 34)},
    "obese": {"cavity_a": (118, 140), "cavity_b": (84, 104), "fat": (34, 70)},
}

# ----------------------------------------------------------------------------------------------------------------
# geometry primitives
# ----------------------------------------------------------------------------------------------------------------


def rotation(degrees: Sequence[float]) -> np.ndarray:
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
    return _Ellipsoid(np.asarray(center, float), np.asarray(radii, float), rotation(rot), exponent)


def tube(points, radii) -> _Tube:
    pts = np.asarray(points, float)
    rad = np.broadcast_to(np.asarray(radii, float), (len(pts),)).copy()
    return _Tube(pts, rad)


# ----------------------------------------------------------------------------------------------------------------
# structure table (reference anatomy; RAS+ mm, +x = patient's right)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Spec:
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


def _reference_structures() -> list[Spec]:
    """Reference anatomy in paint order: a later structure wins where two overlap."""
    return [
        # bowel first, so that every organ displaces it
        Spec(
            "colon",
            0,
            [
                tube(
                    [
                        (95, 5, -110),
                        (97, 10, 0),
                        (80, 35, 18),
                        (20, 62, 8),
                        (-45, 55, 14),
                        (-88, 12, 40),
                        (-98, -5, -20),
                        (-95, 0, -110),
                    ],
                    22,
                )
            ],
            (35, 55),
            shader="colon",
            region="cavity",
            warp_mm=6,
            shift_mm=6,
            scale_sd=0.1,
            rot_deg=3,
        ),
        Spec(
            "duodenum",
            0,
            [
                tube(
                    [(22, 32, 30), (48, 15, 22), (52, 5, -8), (28, -2, -30), (-12, 4, -30), (-32, 12, -16)],
                    [12, 13, 13, 12, 11, 10],
                )
            ],
            (35, 55),
            shader="bowel",
            region="cavity",
            warp_mm=3,
            parent="pancreas",
            rot_deg=2,
            shift_mm=2,
        ),
        Spec(
            "liver",
            6,
            [
                _ell((55, -5, 75), (64, 72, 74), (0, 0, 0), 2.3),  # right lobe
                _ell((-22, 42, 90), (54, 28, 34), (0, 0, -8), 2.2),  # left lobe, anterior to the stomach
                _ell((14, -8, 80), (18, 20, 30)),  # caudate lobe, beside the IVC
            ],
            (100, 122),
            shader="textured",
            warp_mm=8,
            shift_mm=6,
            scale_sd=0.06,
        ),
        Spec(
            "hepatic veins",
            0,
            [
                tube([(20, -4, 112), (78, 18, 88)], [6, 3]),
                tube([(20, -4, 112), (32, 40, 95)], [6, 3]),
                tube([(20, -4, 112), (-20, 42, 94)], [5, 2.5]),
            ],
            (35, 55),
            shader="relative",
            region="liver",
            parent="liver",
            rot_deg=4,
            shift_mm=2,
        ),
        Spec(
            "esophagus",
            5,
            [tube([(-4, -14, 260), (-8, -8, 125), (-40, 0, 100)], 7)],
            (40, 60),
            shader="esophagus",
            region="cavity",
            shift_mm=2,
            scale_sd=0.05,
            rot_deg=1,
        ),
        Spec(
            "renal veins",
            0,
            [tube([(42, -34, -12), (22, -8, -6)], 5), tube([(-42, -32, 0), (-10, 8, 2), (20, -6, 0)], 5)],
            (140, 175),
            region="cavity",
            shift_mm=1,
            scale_sd=0.02,
            rot_deg=1,
        ),
        Spec(
            "stomach",
            7,
            [tube([(-48, 0, 102), (-62, 22, 70), (-45, 42, 40), (-8, 46, 28), (22, 32, 30)], [30, 32, 28, 18, 11])],
            (75, 98),
            shader="stomach",
            halo_mm=2,
            warp_mm=6,
            shift_mm=6,
            scale_sd=0.09,
            rot_deg=5,
        ),
        Spec(
            "spleen",
            1,
            [_ell((-78, -26, 72), (22, 50, 46), (0, 0, -40), 2.1)],
            (115, 140),
            shader="textured",
            carve=[_ell((-45, -20, 72), (24, 32, 38), (0, 0, -40))],
            halo_mm=3,
            warp_mm=6,
            shift_mm=6,
            scale_sd=0.09,
        ),
        Spec(
            "pancreas",
            11,
            [
                tube(
                    [(32, 10, -2), (30, 12, 8), (8, 20, 14), (-22, 16, 22), (-60, 0, 36), (-76, -16, 46)],
                    [14, 15, 10, 11, 9, 7],
                )
            ],
            (88, 112),
            shader="textured",
            halo_mm=2,
            warp_mm=4,
            lobulation=0.12,
            shift_mm=4,
            scale_sd=0.09,
            rot_deg=4,
        ),
        Spec(
            "gallbladder",
            4,
            [_ell((40, 40, 18), (13, 13, 33), (35, 10, 0), 2.0)],
            (4, 20),
            halo_mm=1,
            warp_mm=3,
            parent="liver",
            shift_mm=4,
            scale_sd=0.1,
            optional=True,
        ),
        Spec(
            "right kidney",
            2,
            [_ell((62, -40, -12), (27, 21, 55), (-12, -12, 25), 2.2)],
            (160, 195),
            shader="kidney",
            carve=[_ell((40, -36, -12), (12, 10, 19), (-12, -12, 25))],
            halo_mm=5,
            warp_mm=3,
            shift_mm=5,
            scale_sd=0.07,
            rot_deg=4,
        ),
        Spec(
            "left kidney",
            3,
            [_ell((-62, -40, 0), (27, 21, 55), (-12, 12, -25), 2.2)],
            (160, 195),
            shader="kidney",
            carve=[_ell((-40, -36, 0), (12, 10, 19), (-12, 12, -25))],
            halo_mm=5,
            warp_mm=3,
            shift_mm=5,
            scale_sd=0.07,
            rot_deg=4,
        ),
        Spec(
            "portal and splenic veins",
            10,
            [
                tube([(8, 10, -45), (8, 10, 12), (36, 6, 45), (56, 2, 60)], [6, 7, 7, 4]),  # SMV, portal vein
                tube([(8, 10, 12), (-22, 6, 22), (-60, -8, 36), (-80, -24, 50)], [5, 5, 4.5, 4]),  # splenic vein
            ],
            (150, 185),
            region="cavity",
            warp_mm=3,
            parent="pancreas",
            shift_mm=1,
            scale_sd=0.03,
            rot_deg=1,
        ),
        Spec(
            "inferior vena cava",
            9,
            [tube([(22, 6, 175), (22, -4, 110), (24, -8, 40), (24, -8, -260)], [12, 12, 11, 11])],
            (150, 180),
            region="cavity",
            shift_mm=2,
            scale_sd=0.08,
            rot_deg=1,
        ),
        Spec(
            "aorta",
            8,
            [tube([(-20, -22, 260), (-14, -4, 110), (-10, -2, -60), (-8, 0, -260)], [12, 12, 11, 10])],
            (150, 200),
            region="cavity",
            shift_mm=2,
            scale_sd=0.08,
            rot_deg=1,
        ),
        # adrenals: two thin limbs each, an inverted V opening posteriorly, superomedial to each kidney
        Spec(
            "right adrenal gland",
            12,
            [_ell((42.6, -30, 56), (3.5, 11, 17), (0, 0, 25)), _ell((33.4, -30, 56), (3.5, 11, 17), (0, 0, -25))],
            (55, 80),
            halo_mm=3,
            parent="right kidney",
            shift_mm=2,
            scale_sd=0.09,
            rot_deg=6,
        ),
        Spec(
            "left adrenal gland",
            13,
            [_ell((-29.4, -22, 40), (3.5, 11, 17), (0, 0, -25)), _ell((-38.6, -22, 40), (3.5, 11, 17), (0, 0, 25))],
            (55, 80),
            halo_mm=3,
            parent="left kidney",
            shift_mm=2,
            scale_sd=0.09,
            rot_deg=6,
        ),
    ]


# ----------------------------------------------------------------------------------------------------------------
# per-case sampling
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Body:
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


def sample_body(rng: np.random.Generator, habitus: str = "average") -> Body:
    """Torso of one case; ``habitus`` (a key of :data:`HABITUS`) sets the ranges of cavity size and fat."""
    ranges = HABITUS[habitus]
    # the cavity is drawn first: habitus changes the fat much more than the room the viscera need
    ac, bc = rng.uniform(*ranges["cavity_a"]), rng.uniform(*ranges["cavity_b"])
    muscle = rng.uniform(9, 13)
    fat = rng.uniform(*ranges["fat"])
    if habitus != "obese":
        fat = min(fat, 158 - ac - muscle)  # the skin stays inside the smallest field of view
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
    return Body(a, b, fat, muscle, float(-bc + 43 * stretch[1]), rng.uniform(17, 22), domes, hu)


@dataclass
class Structure:
    """A structure placed for one case."""

    spec: Spec
    parts: list[_Primitive]
    carve: list[_Primitive]
    hu: float
    seed: int
    detail: float = 1.0  # scale of the intensity pattern inside it (kidney cortex vs. medulla, parenchymal mottle)

    def bounds(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = zip(*(p.bounds() for p in self.parts))
        return np.min(lows, 0) - margin, np.max(highs, 0) + margin


def place_structures(
    rng: np.random.Generator, body: Body, p_missing_gallbladder: float, variation: float = 1.0
) -> list[Structure]:
    """Sample each structure's pose, size and intensity; children inherit their parent's pose.

    ``variation`` multiplies every structure's spread of position, size, rotation and shape (1: the reference).
    """
    ref_a = _REF_BODY["a"] - _REF_BODY["fat"] - _REF_BODY["muscle"]
    ref_b = _REF_BODY["b"] - _REF_BODY["fat"] - _REF_BODY["muscle"]
    ac, bc = body.cavity
    stretch = np.array([ac / ref_a, bc / ref_b, rng.uniform(0.93, 1.07)])
    organ_scale = float(np.sqrt(stretch[0] * stretch[1])) ** 0.5  # organs grow less than the cavity does
    shared_shift = rng.normal(0, 4, 3)  # the whole visceral block moves together as well as organ by organ
    shared_shift[2] += body.domes[0][0][2] - 138  # follow the diaphragm
    specs = _reference_structures()
    poses: dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray]] = {}
    placed: dict[str, Structure] = {}
    for spec in sorted(specs, key=lambda sp: sp.parent is not None):  # parents first
        centers = np.array([p.center if isinstance(p, _Ellipsoid) else p.points.mean(0) for p in spec.parts])
        pivot = centers.mean(0)
        rot_deg, scale_sd, shift_mm = spec.rot_deg * variation, spec.scale_sd * variation, spec.shift_mm * variation
        rot = rotation(np.clip(rng.normal(0, rot_deg, 3), -2 * rot_deg, 2 * rot_deg))
        scale = float(np.clip(rng.normal(1, scale_sd), 1 - 2 * scale_sd, 1 + 2 * scale_sd))
        shift = np.clip(rng.normal(0, shift_mm, 3), -2.5 * shift_mm, 2.5 * shift_mm)
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
        axis_sd = 0.05 * variation
        pose = _Pose(
            pivot, rot, scale, shift, stretch, np.clip(rng.normal(1, axis_sd, 3), 1 - 2 * axis_sd, 1 + 2 * axis_sd)
        )
        placed[spec.name] = Structure(
            spec, [p.moved(pose) for p in spec.parts], [p.moved(pose) for p in spec.carve], hu, seed
        )
    return [placed[spec.name] for spec in specs if spec.name in placed]  # paint order


def resize(struct: Structure, factor: float) -> Structure:
    """``struct`` grown or shrunk by ``factor`` about its centre (splenomegaly, an atrophic kidney)."""
    parts = struct.parts + struct.carve
    centre = np.mean([p.center if isinstance(p, _Ellipsoid) else p.points.mean(0) for p in parts], axis=0)
    pose = _Pose(centre, np.eye(3), float(factor), np.zeros(3), np.ones(3))
    return replace(struct, parts=[p.moved(pose) for p in struct.parts], carve=[p.moved(pose) for p in struct.carve])

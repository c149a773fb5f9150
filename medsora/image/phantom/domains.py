# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""What scanners and patients vary beyond the anatomy, drawn per phantom case (domain randomisation).

A network trained on one contrast phase, one slice thickness and complete scans reads those and little else; real CTs
come in four phases, 1-5 mm slices, cropped to part of the abdomen, from cachectic to obese patients, with cysts,
stones and fatty livers. :class:`Domains` is the set a dataset draws from (the ``phantom#domains`` block of the
configs), :class:`CaseDomain` what one case drew. The reference domain is the original phantom: portal venous, the
reference scanner, complete coverage, no pathology, and its cases are exactly what they were before domains existed.
Leaving a value out of a :class:`Domains` (a phase, a thickness range, a habitus) holds it out of training, so the
accuracy on cases drawn from it alone measures how the image features transfer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from medsora.image.phantom.anatomy import HABITUS, Body, Structure, resize

__all__ = [
    "ALL_DOMAINS",
    "PATHOLOGIES",
    "PHASES",
    "REFERENCE_CASE",
    "REFERENCE_DOMAINS",
    "CaseDomain",
    "Domains",
    "apply_phase",
    "apply_pathology_shapes",
    "crop_coverage",
    "paint_lesions",
]

PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")
PATHOLOGIES = ("cyst", "stone", "lesion", "fatty_liver", "splenomegaly", "atrophic_kidney")

_KIDNEYS = ("right kidney", "left kidney")
_ADRENALS = ("right adrenal gland", "left adrenal gland")
_VEINS = ("inferior vena cava", "portal and splenic veins", "renal veins")


def _table(**ranges: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """Structure name -> HU range; ``kidneys``, ``adrenals`` and ``veins`` stand for both or all of them."""
    groups = {"kidneys": _KIDNEYS, "adrenals": _ADRENALS, "veins": _VEINS}
    table: dict[str, tuple[float, float]] = {}
    for key, value in ranges.items():
        for name in groups.get(key, (key.replace("_", " "),)):
            table[name] = value
    return table


#: Mean HU of each structure per contrast phase (portal venous: the anatomy table's own ranges). "hepatic veins" is
#: relative to the liver; "heart" is the body's. Non-contrast and delayed values follow typical adult abdominal CT.
PHASE_HU: dict[str, dict[str, tuple[float, float]]] = {
    "non_contrast": _table(
        liver=(50, 65),
        spleen=(40, 52),
        pancreas=(35, 50),
        gallbladder=(0, 20),
        kidneys=(26, 40),
        stomach=(30, 45),
        adrenals=(12, 32),
        aorta=(35, 50),
        veins=(35, 50),
        hepatic_veins=(-12, -4),
        esophagus=(30, 45),
        heart=(35, 50),
    ),
    "arterial": _table(
        liver=(62, 85),
        spleen=(95, 130),
        pancreas=(105, 140),
        gallbladder=(0, 20),
        kidneys=(165, 215),
        stomach=(80, 110),
        adrenals=(55, 85),
        aorta=(250, 380),
        veins=(70, 120),
        hepatic_veins=(-22, -6),
        esophagus=(45, 65),
        heart=(250, 350),
    ),
    "portal_venous": {},
    "delayed": _table(
        liver=(78, 100),
        spleen=(82, 105),
        pancreas=(65, 88),
        gallbladder=(0, 20),
        kidneys=(125, 170),
        stomach=(58, 80),
        adrenals=(38, 60),
        aorta=(100, 135),
        veins=(100, 135),
        hepatic_veins=(0, 12),
        esophagus=(40, 55),
        heart=(100, 135),
    ),
}
#: How strong the intensity pattern inside an organ is, per phase (1 where not listed): the corticomedullary
#: difference of the kidneys, the arciform heterogeneity of the spleen in the arterial phase.
PHASE_DETAIL: dict[str, dict[str, float]] = {
    "non_contrast": {"right kidney": 0.15, "left kidney": 0.15, "liver": 0.6, "spleen": 0.6, "pancreas": 0.8},
    "arterial": {"right kidney": 2.5, "left kidney": 2.5, "spleen": 4.0},
    "portal_venous": {},
    "delayed": {"right kidney": 0.3, "left kidney": 0.3},
}


@dataclass(frozen=True)
class CaseDomain:
    """What one case drew; the defaults are the reference phantom's (``None``: the reference scanner's own draw)."""

    phase: str = "portal_venous"
    slice_thickness_mm: float | None = None  # also the slice spacing (at least 2 mm); None: 2.5-5 mm, no slab blur
    habitus: str = "average"
    noise_hu: float | None = None
    blur_vox: float = 0.5
    noise_grain_vox: float = 0.6
    z_coverage_mm: float | None = None  # a scan cut to this length around part of the abdomen; None: complete
    fov_fraction: float | None = None  # in-plane field of view kept, per axis; None: the whole matrix
    pathologies: tuple[str, ...] = ()
    variation: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["pathologies"] = list(self.pathologies)
        return record


REFERENCE_CASE = CaseDomain()


def _pair(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = (value, value)
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not pair[0] <= pair[1]:
        raise ValueError(f"{where} must be a range [low, high] with low <= high, got {value!r}.")
    return pair  # type: ignore[return-value]


def _names(value: Any, allowed: Sequence[str], where: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value or ())
    unknown = [n for n in names if n not in allowed]
    if not names or unknown:
        raise ValueError(f"{where} must list some of {list(allowed)}, got {list(names)}.")
    return names


def _probability(value: Any, where: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} must be a probability in [0, 1], got {value}.")
    return value


@dataclass(frozen=True)
class Domains:
    """The domains a dataset's cases are drawn from; every field at its default is the reference phantom.

    Args:
        phases: contrast phases, drawn uniformly (:data:`PHASES`).
        slice_thickness_mm: ``[low, high]`` reconstructed slice thickness; ``None``: the reference spacings.
        habitus: body habitus, drawn uniformly (``cachectic``, ``average``, ``obese``).
        noise_hu: ``[low, high]`` quantum noise (and a noise grain from fine to blotchy); ``None``: 10-20 HU.
        blur_vox: ``[low, high]`` in-plane point-spread sigma in voxels (sharp to soft kernels); ``None``: 0.5.
        p_cropped_z: probability that a scan covers only ``z_coverage_mm`` of the abdomen, cutting organs.
        z_coverage_mm: ``[low, high]`` length of such a scan.
        p_cropped_fov: probability of a field of view that cuts the body (70-90 % of the matrix per axis).
        p_pathology: probability that a case has one or two of ``pathologies``.
        pathologies: those drawn from (:data:`PATHOLOGIES`).
        variation: multiplies the spread of every organ's position, size, orientation and shape.
    """

    phases: tuple[str, ...] = ("portal_venous",)
    slice_thickness_mm: tuple[float, float] | None = None
    habitus: tuple[str, ...] = ("average",)
    noise_hu: tuple[float, float] | None = None
    blur_vox: tuple[float, float] | None = None
    p_cropped_z: float = 0.0
    z_coverage_mm: tuple[float, float] = (70.0, 200.0)
    p_cropped_fov: float = 0.0
    p_pathology: float = 0.0
    pathologies: tuple[str, ...] = PATHOLOGIES
    variation: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, where: str = "phantom#domains") -> Domains:
        """A checked :class:`Domains` from a config mapping (``None`` or ``{}``: the reference phantom)."""
        config = dict(config or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; the keys are {known}.")
        values = {**asdict(cls()), **config}
        thickness = _pair(values["slice_thickness_mm"], f"{where}#slice_thickness_mm")
        if thickness is not None and not 0.5 <= thickness[0]:
            raise ValueError(f"{where}#slice_thickness_mm must be at least 0.5 mm, got {list(thickness)}.")
        variation = float(values["variation"])
        if not 0.0 < variation <= 3.0:
            raise ValueError(f"{where}#variation must be in (0, 3], got {variation}.")
        return cls(
            phases=_names(values["phases"], PHASES, f"{where}#phases"),
            slice_thickness_mm=thickness,
            habitus=_names(values["habitus"], tuple(HABITUS), f"{where}#habitus"),
            noise_hu=_pair(values["noise_hu"], f"{where}#noise_hu"),
            blur_vox=_pair(values["blur_vox"], f"{where}#blur_vox"),
            p_cropped_z=_probability(values["p_cropped_z"], f"{where}#p_cropped_z"),
            z_coverage_mm=_pair(values["z_coverage_mm"], f"{where}#z_coverage_mm"),  # type: ignore[arg-type]
            p_cropped_fov=_probability(values["p_cropped_fov"], f"{where}#p_cropped_fov"),
            p_pathology=_probability(values["p_pathology"], f"{where}#p_pathology"),
            pathologies=_names(values["pathologies"], PATHOLOGIES, f"{where}#pathologies"),
            variation=variation,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly, for the datalist's ``phantom`` block."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def draw(self, rng: np.random.Generator) -> CaseDomain:
        """One case's domain. The reference :class:`Domains` always gives :data:`REFERENCE_CASE`."""
        if self == REFERENCE_DOMAINS:
            return REFERENCE_CASE
        thickness = None if self.slice_thickness_mm is None else float(rng.uniform(*self.slice_thickness_mm))
        noise = None if self.noise_hu is None else float(rng.uniform(*self.noise_hu))
        grain = 0.6 if self.noise_hu is None else float(rng.uniform(0.4, 1.2))
        blur = 0.5 if self.blur_vox is None else float(rng.uniform(*self.blur_vox))
        coverage = float(rng.uniform(*self.z_coverage_mm)) if rng.random() < self.p_cropped_z else None
        fov = float(rng.uniform(0.7, 0.9)) if rng.random() < self.p_cropped_fov else None
        pathologies: tuple[str, ...] = ()
        if rng.random() < self.p_pathology:
            count = min(len(self.pathologies), int(rng.integers(1, 3)))
            pathologies = tuple(str(p) for p in rng.choice(self.pathologies, size=count, replace=False))
        return CaseDomain(
            phase=str(rng.choice(self.phases)),
            slice_thickness_mm=thickness,
            habitus=str(rng.choice(self.habitus)),
            noise_hu=noise,
            blur_vox=blur,
            noise_grain_vox=grain,
            z_coverage_mm=coverage,
            fov_fraction=fov,
            pathologies=pathologies,
            variation=self.variation,
            seed=int(rng.integers(2**31)),
        )


REFERENCE_DOMAINS = Domains()
#: Everything varies: the default of the bundle's training data.
ALL_DOMAINS = Domains(
    phases=PHASES,
    slice_thickness_mm=(1.0, 5.0),
    habitus=tuple(HABITUS),
    noise_hu=(5.0, 40.0),
    blur_vox=(0.3, 1.2),
    p_cropped_z=0.35,
    p_cropped_fov=0.2,
    p_pathology=0.5,
    variation=1.5,
)


def apply_phase(structures: list[Structure], body: Body, case: CaseDomain, rng: np.random.Generator) -> None:
    """Set every structure's intensity (and the heart's) to the case's contrast phase, in place."""
    table, detail = PHASE_HU[case.phase], PHASE_DETAIL[case.phase]
    for struct in structures:
        if struct.spec.name in table:
            struct.hu = float(rng.uniform(*table[struct.spec.name]))
        struct.detail = detail.get(struct.spec.name, 1.0)
    if "heart" in table:
        body.hu["heart"] = float(rng.uniform(*table["heart"]))


def apply_pathology_shapes(structures: list[Structure], case: CaseDomain, rng: np.random.Generator) -> list[Structure]:
    """The structures with the case's diffuse pathologies: an enlarged spleen, an atrophic kidney, a fatty liver."""
    out = list(structures)
    names = [s.spec.name for s in out]
    if "splenomegaly" in case.pathologies and "spleen" in names:
        i = names.index("spleen")
        out[i] = resize(out[i], float(rng.uniform(1.3, 1.6)))
    if "atrophic_kidney" in case.pathologies:
        i = names.index(str(rng.choice(_KIDNEYS)))
        out[i] = resize(out[i], float(rng.uniform(0.55, 0.75)))
    if "fatty_liver" in case.pathologies and "liver" in names:
        liver = out[names.index("liver")]
        liver.hu = max(-20.0, liver.hu - float(rng.uniform(40, 80)))
    return out


# focal pathologies: where they go (BTCV label ids), radius (mm) and intensity (absolute HU, or relative to the organ)
_FOCAL = {
    "cyst": {"organs": (6, 2, 3), "count": (1, 3), "radius": (4.0, 14.0), "hu": (0.0, 15.0), "relative": False},
    "lesion": {
        "organs": (6, 11, 1, 2, 3),
        "count": (1, 2),
        "radius": (5.0, 18.0),
        "hu": (25.0, 60.0),
        "relative": True,
    },
    "stone": {"organs": (4, 2, 3), "count": (1, 4), "radius": (1.5, 5.0), "hu": (200.0, 1000.0), "relative": False},
}


def paint_lesions(canvas: Any, structures: list[Structure], case: CaseDomain, rng: np.random.Generator) -> None:
    """Cysts, solid lesions and stones inside the organs (they keep the organ's label, as in segmentations)."""
    grid = canvas.grid
    organ_hu = {s.spec.label: s.hu for s in structures if s.spec.label}
    for kind in case.pathologies:
        if kind not in _FOCAL:
            continue
        spec = _FOCAL[kind]
        organs = [k for k in spec["organs"] if (canvas.label == k).any()]
        if not organs:
            continue
        organ = int(organs[0] if kind == "stone" else rng.choice(organs))  # stones: the gallbladder first
        voxels = np.argwhere(canvas.label == organ)
        for _ in range(int(rng.integers(spec["count"][0], spec["count"][1] + 1))):
            centre_vox = voxels[int(rng.integers(len(voxels)))]
            centre = np.array([float(c[tuple(centre_vox)]) for c in (grid.x, grid.y, grid.z)])
            radius = float(rng.uniform(*spec["radius"]))
            sl = grid.block(centre - radius, centre + radius)
            if sl is None:
                continue
            x, y, z = grid.coords(sl)
            ball = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2) & (
                canvas.label[sl] == organ
            )
            value = float(rng.uniform(*spec["hu"]))
            if spec["relative"]:
                value = organ_hu.get(organ, 60.0) + value * (1 if rng.random() < 0.3 else -1)  # mostly hypodense
            canvas.hu[sl][ball] = value


def crop_coverage(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, case: CaseDomain, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the scan to the case's z coverage (around part of the organs) and field of view; the affine follows."""
    start = [0, 0, 0]
    stop = list(image.shape)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if case.z_coverage_mm is not None:
        slices = np.nonzero(label.any(axis=(0, 1)))[0]
        keep = int(min(image.shape[2], max(8, round(case.z_coverage_mm / spacing[2]))))
        centre = int(rng.integers(slices[0], slices[-1] + 1)) if slices.size else image.shape[2] // 2
        start[2] = int(np.clip(centre - keep // 2, 0, image.shape[2] - keep))
        stop[2] = start[2] + keep
    if case.fov_fraction is not None:
        for axis in (0, 1):
            keep = max(8, round(case.fov_fraction * image.shape[axis]))
            start[axis] = int(rng.integers(0, image.shape[axis] - keep + 1))
            stop[axis] = start[axis] + keep
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    moved = affine.copy()
    moved[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=float) + affine[:3, 3]
    return np.ascontiguousarray(image[box]), np.ascontiguousarray(label[box]), moved

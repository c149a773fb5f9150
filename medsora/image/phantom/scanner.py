# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The phantom's scanner: a case's voxel grid and affine, the anatomy painted into it, and scanner effects.

Intensity models give each structure its CT appearance (uniform, textured, layered walls with contents, kidney
cortex and medulla); the finish adds point-spread blur, texture and correlated quantum noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsora.image.phantom.anatomy import Body, Spec, Structure, rotation, tube

__all__ = ["REFERENCE_SHAPE", "Canvas", "draw_body", "finish", "make_grid", "paint", "small_bowel"]

# A downsampled BTCV CT: in-plane spacing for a 128-voxel matrix, slice spacing for a 64-slice minimum.
REFERENCE_SHAPE = (128, 128, 64)
INPLANE_SPACING_MM = (2.6, 3.2)
SLICE_SPACINGS_MM = (2.5, 3.0, 4.0, 5.0)

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


def make_grid(
    rng: np.random.Generator, shape: Sequence[int], z_range: tuple[float, float], slice_spacing_mm: float | None = None
) -> _Grid:
    """Spacing, slice count and affine of one case: the whole z_range (anatomy frame) always fits in the volume.

    ``slice_spacing_mm`` replaces the drawn slice spacing (the draw is still made, so the rest of the case is the
    same); both are for a 64-slice minimum and scale with ``shape[2]`` like the in-plane spacing does.
    """
    nx, ny, nz_min = (int(s) for s in shape)
    base = rng.uniform(*INPLANE_SPACING_MM)
    sx, sy = base * REFERENCE_SHAPE[0] / nx, base * REFERENCE_SHAPE[1] / ny
    drawn = float(rng.choice(SLICE_SPACINGS_MM))
    sz = (drawn if slice_spacing_mm is None else float(slice_spacing_mm)) * REFERENCE_SHAPE[2] / nz_min
    tilt = rotation((rng.normal(0, 1.5), rng.normal(0, 1.5), rng.normal(0, 3)))
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
class Canvas:
    grid: _Grid
    body: Body
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


def _diaphragm_z(body: Body, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the diaphragm: the upper envelope of two paraboloid domes."""
    heights = [
        apex[2] - ((x - apex[0]) ** 2 + (y - apex[1]) ** 2) * (0.5 / r)
        for apex, r in ((apex.tolist(), float(r)) for apex, r in body.domes)
    ]
    return np.maximum(*heights)


def draw_body(canvas: Canvas, rng: np.random.Generator) -> None:
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


def _draw_torso(canvas: Canvas) -> np.ndarray:
    """Subcutaneous fat, muscle wall and (fat-filled) abdominal cavity; returns the cavity mask."""
    body, hu, (x, y, _) = canvas.body, canvas.hu, canvas.grid.coords((slice(None),) * 3)
    widen = canvas.widen
    ac, bc = body.cavity
    hu[_ellipse(x, y, 0, 0, body.a * widen, body.b)] = body.hu["fat"]
    hu[_ellipse(x, y, 0, 0, body.a * widen - body.fat, body.b - body.fat)] = body.hu["muscle"]
    cavity = _ellipse(x, y, 0, 0, ac * widen, bc)
    hu[cavity] = body.hu["fat"]
    return cavity


def _draw_spine(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
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


def _draw_ribs(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Ribs in the muscle wall above the costal margin, descending anteriorly, absent near the anterior midline."""
    body, (x, y, z) = canvas.body, canvas.grid.coords((slice(None),) * 3)
    ac, bc = body.cavity
    ribs = np.zeros(canvas.grid.shape, bool)
    mid_a = ac * canvas.widen + body.muscle * 0.5
    radial = np.sqrt((x / mid_a) ** 2 + (y * (1.0 / (bc + body.muscle * 0.5))) ** 2)
    band = np.nonzero(np.abs(radial - 1) * bc < 5)  # the ring in which ribs run; only it needs the angle
    xb, yb, zb = (
        np.broadcast_to(x, ribs.shape)[band],
        np.broadcast_to(y, ribs.shape)[band],
        np.broadcast_to(z, ribs.shape)[band],
    )
    angle = np.abs(np.arctan2(xb, -(yb - body.spine_y)))  # 0 posterior, pi anterior
    costal_margin = rng.uniform(-45, -25) + 75 * angle / np.pi
    pitch, slope = rng.uniform(28, 34), rng.uniform(24, 34)
    on_rib = np.mod(zb + slope * angle, pitch) < rng.uniform(7, 10)
    keep = on_rib & (zb > costal_margin) & (angle > 0.35) & (angle < 0.82 * np.pi)
    ribs[tuple(b[keep] for b in band)] = True
    canvas.hu[ribs] = body.hu["rib"]
    return ribs


def _draw_thorax(canvas: Canvas, open_cavity: np.ndarray) -> np.ndarray:
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


def _warped(struct: Structure, x, y, z, amplitude: float):
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


def paint(canvas: Canvas, struct: Structure) -> None:
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
    return (struct.hu + 6.0 * struct.detail * _smooth_noise(rng, inside.shape, 1.2))[inside]


def _shade_relative(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    """Vessels inside an organ: the organ's intensity plus the sampled contrast."""
    return canvas.hu[sl][inside] + struct.hu


def _depth_mm(canvas: Canvas, inside: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(np.pad(inside, 1), sampling=canvas.grid.spacing)[1:-1, 1:-1, 1:-1]


def _shade_kidney(canvas, struct, inside, sl, rng, g) -> np.ndarray:
    """Enhancing cortex around a slightly darker medulla (renal pyramids)."""
    depth = _depth_mm(canvas, inside)[inside]
    cortex = rng.uniform(5, 8)
    medulla = struct.hu - struct.detail * rng.uniform(25, 45)
    pyramids = _smooth_noise(rng, inside.shape, 1.5)[inside] > -0.3
    return np.where((depth > cortex) & pyramids, medulla, struct.hu).astype(np.float32)


def _wall(struct: Structure, g: np.ndarray, thickness_mm: float) -> np.ndarray:
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


def small_bowel(rng: np.random.Generator, body: Body) -> list[Structure]:
    """A few random loops of small bowel in the lower anterior abdomen (unlabelled, as in BTCV)."""
    ac, bc = body.cavity
    spec = Spec("small bowel", 0, [], (35, 55), shader="bowel", region="abdomen")
    loops = []
    for _ in range(int(rng.integers(4, 8))):
        p = np.array([rng.uniform(-0.55, 0.55) * ac, rng.uniform(0.0, 0.6) * bc, rng.uniform(-110, -15)])
        points = [p]
        for _ in range(4):
            p = p + rng.normal(0, 1, 3) * np.array([30, 18, 18])
            points.append(p)
        loops.append(
            Structure(spec, [tube(points, rng.uniform(9, 13))], [], rng.uniform(*spec.hu), int(rng.integers(2**31)))
        )
    return loops


def finish(
    canvas: Canvas,
    rng: np.random.Generator,
    blur_vox: float = 0.5,
    slice_thickness_mm: float | None = None,
    noise_hu: float | None = None,
    noise_grain_vox: float = 0.6,
) -> np.ndarray:
    """Scanner effects: point-spread blur, smooth texture, correlated quantum noise; HU rounded to int16.

    Args:
        canvas: the painted case.
        rng: the case's generator.
        blur_vox: in-plane point-spread sigma (voxels); sharp kernels are near 0.3, soft ones near 1.2.
        slice_thickness_mm: the reconstructed slice thickness, a slab profile of that full width at half maximum
            along z (partial volume of thick slices); ``None``: the in-plane blur alone.
        noise_hu: standard deviation of the quantum noise; ``None``: drawn from 10-20 HU.
        noise_grain_vox: correlation length of the noise (its texture: fine for sharp kernels, blotchy for soft).
    """
    sigma_z = (
        blur_vox if slice_thickness_mm is None else max(blur_vox, slice_thickness_mm / 2.355 / canvas.grid.spacing[2])
    )
    image = ndimage.gaussian_filter(canvas.hu, (blur_vox, blur_vox, sigma_z), truncate=2.0)
    inside = canvas.hu > -900
    image += (rng.uniform(3, 7) * _smooth_noise(rng, image.shape, 2.0)) * inside
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), noise_grain_vox, truncate=2.0)
    drawn = rng.uniform(10, 20)
    image += noise * ((drawn if noise_hu is None else noise_hu) / float(noise.std()))
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)

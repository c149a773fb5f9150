# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Organ scores on the patient's CT: the probability map, its NIfTI file, slice orientation and the PNG figure."""

import os

import nibabel as nib
import numpy as np
import pytest
from helpers import BTCV, SCORES

from medsora.display import display_slices, organ_probability_map, render_query_figure, save_probability_map, wrap_text
from medsora.organs import rank_organs

SHAPE = (40, 40, 20)
LPS = np.diag([-2.0, -2.0, 4.0, 1.0])  # voxel axis 0 runs towards the patient's left, axis 1 towards posterior
TEXT = "Dull right upper quadrant pain after fatty meals, with nausea and yellowing of the eyes for two weeks. "


def _case():
    """A CT and BTCV label map on an anisotropic LPS grid; aorta (8) and an unmapped id stay background."""
    label = np.zeros(SHAPE, dtype=np.int16)
    label[2:14, 4:20, 4:14] = 6  # liver, voxel x low = patient's right
    label[10:14, 20:24, 8:10] = 4  # gallbladder
    label[6:10, 28:32, 6:10] = 2  # right kidney
    label[30:34, 28:32, 6:10] = 3  # left kidney
    label[30:36, 6:14, 8:14] = 1  # spleen
    label[18:22, 18:36, 2:18] = 8  # aorta
    label[24:28, 10:14, 2:4] = 9  # inferior vena cava
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 10.0, SHAPE).astype(np.float32)
    image[label == 0] = -100.0
    return image, label


def test_probability_map_values():
    image, label = _case()
    prob = organ_probability_map(label.astype(np.float32) + 0.2, BTCV, SCORES)  # float maps are rounded
    assert prob.dtype == np.float32 and prob.shape == SHAPE
    for organ, ids in BTCV.items():
        inside = np.isin(label, ids)
        if inside.any():
            assert np.all(prob[inside] == np.float32(SCORES[organ])), organ
    assert np.all(prob[~np.isin(label, [i for ids in BTCV.values() for i in ids])] == 0)
    assert np.all(prob[label == 8] == 0)


@pytest.mark.parametrize(
    "scores, message",
    [
        ({k: v for k, v in SCORES.items() if k not in ("kidney", "spleen")}, "missing.*kidney.*spleen"),
        ({**SCORES, "adrenal": 0.1}, "adrenal"),
        ({**SCORES, "liver": 1.5}, "in \\[0, 1\\]"),
        ({**SCORES, "liver": float("nan")}, "finite"),
    ],
)
def test_probability_map_rejects_bad_scores(scores, message):
    with pytest.raises(ValueError, match=message):
        organ_probability_map(np.zeros(SHAPE), BTCV, scores)


def test_probability_map_rejects_bad_organ_labels():
    with pytest.raises(ValueError, match="label id 2 .*kidney.*spleen"):
        organ_probability_map(np.zeros(SHAPE), {"kidney": [2, 3], "spleen": [2]}, {"kidney": 0.1, "spleen": 0.2})
    with pytest.raises(ValueError, match="NaN"):
        organ_probability_map(np.full(SHAPE, np.nan), BTCV, SCORES)


def test_probability_map_nifti_round_trip(tmp_path):
    _, label = _case()
    affine = LPS.copy()
    affine[:3, 3] = (40.0, 30.0, -60.0)
    prob = organ_probability_map(label, BTCV, SCORES)
    for name in ("prob.nii.gz", "prob.nii"):
        path = str(tmp_path / name)
        save_probability_map(prob, affine, path)
        img = nib.load(path)
        assert np.allclose(img.affine, affine)
        assert img.header.get_data_dtype() == np.float32
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.array_equal(np.asanyarray(img.dataobj), prob)
    assert sorted(os.listdir(tmp_path)) == ["prob.nii", "prob.nii.gz"]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        save_probability_map(prob, affine, str(tmp_path / "prob.npy"))


def _world_box_label(affine, shape):
    """Label 6 in the patient's right, anterior, superior octant of the volume, found from world coordinates."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    label = np.zeros(shape, dtype=np.uint8)
    label[np.all(world > centre + 1.0, axis=-1)] = 6  # RAS+: x grows to the right, y anterior, z superior
    return label


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([2.0, 3.0, 5.0, 1.0]),  # RAS storage
        np.diag([-2.0, -3.0, 5.0, 1.0]),  # LPS storage
        np.array([[0, 0, -2.0, 0], [3.0, 0, 0, 0], [0, -5.0, 0, 0], [0, 0, 0, 1]]),  # permuted and flipped axes
    ],
    ids=["RAS", "LPS", "permuted"],
)
def test_display_slices_radiological_convention(affine):
    shape = (24, 22, 26)
    label = _world_box_label(affine, shape)
    assert label.any()
    image = np.where(label > 0, 60.0, -50.0)
    slices = display_slices(image, label, affine, center_ids=[6])
    for plane in (slices.axial_label, slices.coronal_label):
        rows, cols = np.nonzero(plane == 6)
        assert rows.size
        # patient's right on the viewer's left; anterior (axial) and superior (coronal) at the top
        assert cols.max() < plane.shape[1] / 2
        assert rows.max() < plane.shape[0] / 2
    assert np.array_equal(slices.axial == 60.0, slices.axial_label == 6)
    assert np.array_equal(slices.coronal == 60.0, slices.coronal_label == 6)
    assert slices.axial_aspect == pytest.approx(3.0 / 2.0)
    assert slices.coronal_aspect == pytest.approx(5.0 / 2.0)
    size = dict(zip(np.argmax(np.abs(affine[:3, :3]), axis=0), shape))  # voxel count along RAS x, y, z
    assert slices.axial.shape == (size[1], size[0]) and slices.coronal.shape == (size[2], size[0])


def test_display_slices_centre():
    image, label = _case()
    liver = display_slices(image, label, LPS, center_ids=[6])
    # liver voxels x 2..13, y 4..19, z 4..13 -> RAS index (39 - 7.5, 39 - 11.5, 8.5)
    assert liver.center[2] in (8, 9) and liver.center[0] in (31, 32) and liver.center[1] in (27, 28)
    assert display_slices(image, label, LPS, center_ids=[99]).center == (20, 20, 10)
    with pytest.raises(ValueError, match="same shape"):
        display_slices(image[:, :, :5], label, LPS)


def test_rank_organs_and_wrap_text():
    assert rank_organs(SCORES) == ["liver", "gallbladder", "adrenal_gland", "kidney", "stomach", "pancreas", "spleen"]
    assert rank_organs({"a": 0.5, "b": 0.5, "c": 0.9}) == ["c", "a", "b"]
    assert wrap_text("short text") == "short text"
    wrapped = wrap_text("word " * 200, width=40, max_lines=3)
    lines = wrapped.split("\n")
    assert len(lines) == 3 and all(len(line) <= 40 for line in lines) and lines[-1].endswith("…")


@pytest.fixture
def imread():
    """PNG reader; the figure tests need matplotlib, which only the figure itself uses."""
    return pytest.importorskip("matplotlib.image").imread


def test_render_query_figure(tmp_path, imread):
    image, label = _case()
    high = str(tmp_path / "high.png")
    low = str(tmp_path / "low.png")
    others = {organ: 0.01 for organ in BTCV}  # the liver stays top-ranked, so both figures show the same slices
    render_query_figure(image, label, LPS, BTCV, {**others, "liver": 0.98}, TEXT * 4, high)
    render_query_figure(image, label, LPS, BTCV, {**others, "liver": 0.02}, TEXT * 4, low)
    for path in (high, low):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        height, width = imread(path).shape[:2]
        assert 1000 <= width <= 2000 and 400 <= height <= 2000
    assert sorted(os.listdir(tmp_path)) == ["high.png", "low.png"]
    # the liver, scored 0.98 in one figure and 0.02 in the other, is painted bright in the first and dark in the second
    bright, dark = (imread(path)[..., :3].mean(axis=-1) for path in (high, low))
    changed = np.abs(bright - dark) > 0.2
    assert changed.sum() > 20000
    assert np.mean(bright[changed] > dark[changed]) > 0.95


def test_render_query_figure_without_organs(tmp_path, imread):
    image, label = _case()
    path = str(tmp_path / "empty.png")
    render_query_figure(image, np.where(label == 8, 8, 0), LPS, BTCV, SCORES, "", path)
    assert imread(path).ndim == 3
    with pytest.raises(ValueError, match=r"\.png"):
        render_query_figure(image, label, LPS, BTCV, SCORES, TEXT, str(tmp_path / "figure.jpg"))
    with pytest.raises(ValueError, match="hu_window"):
        render_query_figure(image, label, LPS, BTCV, SCORES, TEXT, path, hu_window=(250, -175))

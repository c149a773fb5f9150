# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The synthetic BTCV-layout CT: files, geometry, anatomy, intensities, determinism and safe re-use of a directory."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medsora.image import phantom

SHAPE = (96, 96, 48)
NUM_CASES, NUM_VAL = 3, 1
ORGANS = (1, 2, 3, 4, 6, 7, 11, 12, 13)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    path = phantom.generate_phantom_dataset(str(root), num_cases=NUM_CASES, num_validation=NUM_VAL, seed=3, shape=SHAPE)
    return root, path


def _items(path):
    with open(path) as f:
        datalist = json.load(f)
    return datalist, datalist["training"] + datalist["validation"]


def _load_ras(root, item):
    """Image and label reoriented to RAS+ (axis 0 -> patient's right, 1 -> anterior, 2 -> superior)."""
    img = nib.as_closest_canonical(nib.load(os.path.join(root, item["image"])))
    lab = nib.as_closest_canonical(nib.load(os.path.join(root, item["label"])))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    return np.asarray(img.dataobj), np.asarray(lab.dataobj), img.affine


def _centroid_mm(label, affine, k):
    return affine[:3, :3] @ np.argwhere(label == k).mean(0) + affine[:3, 3]


def test_layout_and_datalist(dataset):
    root, path = dataset
    assert path == os.path.join(str(root), "dataset_0.json")
    datalist, items = _items(path)
    assert len(datalist["training"]) == NUM_CASES - NUM_VAL and len(datalist["validation"]) == NUM_VAL
    assert datalist["training"][0] == {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    assert datalist["numTraining"] == NUM_CASES and datalist["name"] and datalist["description"]
    assert datalist["labels"]["0"] == "background" and datalist["labels"]["1"] == "spleen"
    assert set(datalist["labels"]) == {str(k) for k in range(14)}
    assert datalist["phantom"] == {
        "version": phantom.PHANTOM_VERSION,
        "seed": 3,
        "num_cases": NUM_CASES,
        "num_validation": NUM_VAL,
        "shape": list(SHAPE),
        "p_missing_gallbladder": 0.0,
        "domains": phantom.REFERENCE_DOMAINS.as_dict(),
    }
    assert set(datalist["case_domains"]) == {item["image"] for item in items}
    assert all(d == phantom.CaseDomain().as_dict() for d in datalist["case_domains"].values())
    assert sorted(os.listdir(root / "imagesTr")) == [f"img{i:04d}.nii.gz" for i in range(1, NUM_CASES + 1)]
    leftovers = [n for d in ("", "imagesTr", "labelsTr") for n in os.listdir(root / d) if n.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary or progress files


def test_headers_dtypes_and_geometry(dataset):
    root, path = dataset
    for item in _items(path)[1]:
        img, lab = nib.load(os.path.join(root, item["image"])), nib.load(os.path.join(root, item["label"]))
        assert img.shape == lab.shape and img.shape[:2] == SHAPE[:2] and img.shape[2] >= SHAPE[2]
        np.testing.assert_array_equal(img.affine, lab.affine)
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # BTCV-like storage
        sx, sy, sz = np.abs(np.diag(img.affine)[:3])
        scale = 128 / SHAPE[0]
        assert sx == sy and 2.6 * scale <= sx <= 3.2 * scale
        assert min(abs(sz - s * 64 / SHAPE[2]) for s in (2.5, 3.0, 4.0, 5.0)) < 1e-6
        assert img.shape[2] * sz >= 250  # liver dome to below the kidneys


def test_labels_volumes_and_intensities(dataset):
    root, path = dataset
    for item in _items(path)[1]:
        image, label, affine = _load_ras(root, item)
        present = set(np.unique(label).tolist())
        assert present <= set(range(14)) and set(ORGANS) | {8, 9} <= present
        ml = {k: (label == k).sum() * abs(np.linalg.det(affine[:3, :3])) / 1000 for k in range(1, 14)}
        assert 500 < ml[6] < 2600 and ml[6] == max(ml.values())  # liver the largest
        assert 40 < ml[1] < 450 and 50 < ml[2] < 300 and 50 < ml[3] < 300 and 10 < ml[11] < 150
        assert 5 < ml[4] < 100 and 50 < ml[7] < 1200
        assert 1 < ml[12] < 20 and 1 < ml[13] < 20
        assert max(ml[12], ml[13]) < min(ml[k] for k in (1, 2, 3, 4, 6, 7, 11))  # adrenals the smallest organs

        def core_mean(k, image=image, label=label):  # away from partial volume at the border
            core = ndimage.binary_erosion(label == k)
            return image[core if core.sum() > 20 else label == k].mean()

        assert 95 <= core_mean(6) <= 135  # liver
        assert 105 <= core_mean(1) <= 145  # spleen
        assert 75 <= core_mean(11) <= 120  # pancreas
        assert -10 <= core_mean(4) <= 30  # gallbladder: fluid
        assert all(140 <= core_mean(k) <= 210 for k in (8, 9))  # aorta, IVC
        for k in (2, 3):  # enhancing cortex brighter than the medulla
            values = image[label == k]
            assert 145 <= np.percentile(values, 75) <= 215 and np.percentile(values, 10) < np.percentile(values, 75)
        assert all(15 <= image[label == k].mean() <= 85 for k in (12, 13))  # thin: read with partial volume
        stomach = image[label == 7]
        assert (stomach > 50).mean() > 0.04 and (stomach < 40).mean() > 0.2  # wall around air/fluid/food
        assert image[0, 0, 0] < -900 and image.min() >= -1024 and image.max() > 300  # air outside, bone


def test_anatomical_sides_after_monai_orientation(dataset):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    root, path = dataset
    load = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS", labels=None),  # as the configs do
        ]
    )
    for item in _items(path)[1]:
        data = load({k: os.path.join(root, v) for k, v in item.items()})
        label = np.asarray(data["label"])[0]
        affine = np.asarray(data["label"].affine)
        c = {k: _centroid_mm(label, affine, k) for k in (1, 2, 3, 4, 6, 8, 9, 11, 12, 13)}
        x, y, z = 0, 1, 2  # RAS+: +x patient's right, +y anterior, +z superior
        assert c[6][x] > c[1][x] + 80  # liver on the patient's right, spleen on the left
        assert c[2][x] > c[3][x] + 60  # right kidney to the right of the left kidney
        assert c[2][z] < c[3][z] + 10  # left kidney not lower than the right (usually higher)
        assert c[2][y] < c[11][y] and c[3][y] < c[11][y]  # kidneys posterior of the pancreas
        assert c[6][z] > c[2][z] + 30 and c[12][z] > c[2][z] and c[13][z] > c[3][z]  # liver, adrenals above
        assert c[4][y] > c[6][y] and c[4][x] > 0  # gallbladder anterior, on the right
        assert c[9][x] > c[8][x]  # IVC right of the aorta
        assert c[1][y] < c[11][y]  # spleen posterior


def test_determinism_and_variety():
    a = phantom.generate_case((5, 1), shape=(48, 48, 24))
    b = phantom.generate_case(np.random.default_rng((5, 1)), shape=(48, 48, 24))
    c = phantom.generate_case((6, 1), shape=(48, 48, 24))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    assert a[1].shape != c[1].shape or not np.array_equal(a[1], c[1])


def test_cases_differ(dataset):
    root, path = dataset
    loaded = [_load_ras(root, item) for item in _items(path)[1]]
    volumes = [[(lab == k).sum() * abs(np.linalg.det(aff[:3, :3])) for k in ORGANS] for _, lab, aff in loaded]
    assert len({tuple(np.round(v, 3)) for v in volumes}) == len(volumes)
    assert len({(img.shape, tuple(np.round(np.diag(aff), 4))) for img, _, aff in loaded}) > 1 or len(
        {img.tobytes() for img, _, _ in loaded}
    ) == len(loaded)


def test_dataset_is_reproducible(dataset, tmp_path):
    root, path = dataset
    again = phantom.generate_phantom_dataset(str(tmp_path), num_cases=1, num_validation=0, seed=3, shape=SHAPE)
    first = _items(path)[1][0]
    for key in ("image", "label"):
        old = nib.load(os.path.join(root, first[key]))
        new = nib.load(os.path.join(os.path.dirname(again), first[key]))
        np.testing.assert_array_equal(np.asarray(old.dataobj), np.asarray(new.dataobj))
        np.testing.assert_array_equal(old.affine, new.affine)


def test_idempotent_and_refuses_to_clobber(dataset):
    root, path = dataset
    files = [os.path.join(root, v) for item in _items(path)[1] for v in item.values()] + [path]
    before = {f: os.stat(f).st_mtime_ns for f in files}
    assert (
        phantom.generate_phantom_dataset(str(root), num_cases=NUM_CASES, num_validation=NUM_VAL, seed=3, shape=SHAPE)
        == path
    )
    assert phantom.ensure_phantom(str(root), num_cases=NUM_CASES, num_validation=NUM_VAL, seed=3, shape=SHAPE) == path
    assert {f: os.stat(f).st_mtime_ns for f in files} == before
    with pytest.raises(ValueError, match="seed") as err:
        phantom.generate_phantom_dataset(str(root), num_cases=NUM_CASES, num_validation=NUM_VAL, seed=4, shape=SHAPE)
    assert str(root) in str(err.value)
    with pytest.raises(ValueError, match="num_cases"):
        phantom.ensure_phantom(str(root), num_cases=NUM_CASES + 1, num_validation=NUM_VAL, seed=3, shape=SHAPE)
    assert {f: os.stat(f).st_mtime_ns for f in files} == before


def test_real_dataset_is_left_alone(tmp_path):
    real = {"training": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}], "labels": {}}
    (tmp_path / "dataset_0.json").write_text(json.dumps(real))
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "img0001.nii.gz").write_bytes(b"real")
    assert phantom.ensure_phantom(str(tmp_path), num_cases=1, num_validation=0) == str(tmp_path / "dataset_0.json")
    with pytest.raises(ValueError, match="not this phantom"):
        phantom.generate_phantom_dataset(str(tmp_path), num_cases=1, num_validation=0)
    assert json.loads((tmp_path / "dataset_0.json").read_text()) == real
    assert (tmp_path / "imagesTr" / "img0001.nii.gz").read_bytes() == b"real"
    # images without a datalist are not overwritten either
    (tmp_path / "dataset_0.json").unlink()
    with pytest.raises(ValueError, match="refusing"):
        phantom.generate_phantom_dataset(str(tmp_path), num_cases=1, num_validation=0)
    assert (tmp_path / "imagesTr" / "img0001.nii.gz").read_bytes() == b"real"


def test_overwrite_and_missing_gallbladder(tmp_path):
    small = dict(num_cases=2, num_validation=1, shape=(48, 48, 24))
    phantom.generate_phantom_dataset(str(tmp_path), seed=1, **small)
    path = phantom.generate_phantom_dataset(str(tmp_path), seed=2, p_missing_gallbladder=1.0, overwrite=True, **small)
    datalist, items = _items(path)
    assert datalist["phantom"]["seed"] == 2 and datalist["phantom"]["p_missing_gallbladder"] == 1.0
    for item in items:
        label = np.asarray(nib.load(os.path.join(tmp_path, item["label"])).dataobj)
        assert 4 not in label and {2, 3, 6, 11} <= set(np.unique(label).tolist())


def test_resumes_an_interrupted_run(tmp_path):
    small = dict(num_cases=2, num_validation=1, seed=0, shape=(48, 48, 24))
    path = phantom.generate_phantom_dataset(str(tmp_path), **small)
    os.remove(path)  # as if interrupted before the datalist was written
    (tmp_path / ".phantom_in_progress.json").write_text(json.dumps(_items_phantom(small)))
    os.remove(tmp_path / "imagesTr" / "img0002.nii.gz")
    kept = os.stat(tmp_path / "imagesTr" / "img0001.nii.gz").st_mtime_ns
    assert phantom.generate_phantom_dataset(str(tmp_path), **small) == path
    assert os.stat(tmp_path / "imagesTr" / "img0001.nii.gz").st_mtime_ns == kept
    assert (tmp_path / "imagesTr" / "img0002.nii.gz").exists()


def _items_phantom(params):
    return {
        "version": phantom.PHANTOM_VERSION,
        "seed": params["seed"],
        "num_cases": params["num_cases"],
        "num_validation": params["num_validation"],
        "shape": list(params["shape"]),
        "p_missing_gallbladder": 0.0,
        "domains": phantom.REFERENCE_DOMAINS.as_dict(),
    }


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        phantom.generate_phantom_dataset(str(tmp_path), num_cases=2, num_validation=2)
    with pytest.raises(ValueError):
        phantom.generate_case(0, shape=(4, 4, 4))

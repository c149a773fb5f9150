"""Organ masking and slice sampling on real NIfTI files loaded the way the bundle loads them."""

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import BTCV
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from medsora.image.organ_masking import OrganMaskd
from medsora.image.slice_sampling import (
    RandSampleSlicesd,
    SampleSlicesd,
    even_slice_indices,
    organ_extent,
    stratified_slice_indices,
)

BTCV_IDS = list(range(1, 14))
AFFINE = np.diag([-2.0, -2.0, 3.0, 1.0])


def boxes_label_map():
    """A 40x40x20 label map with one box per structure, so every organ's crop is known exactly."""
    label = np.zeros((40, 40, 20), np.uint8)
    label[2:14, 2:16, 2:12] = 6  # liver
    label[20:24, 20:30, 5:8] = 11  # pancreas
    label[30:35, 2:8, 4:10] = 2  # right kidney
    label[30:35, 30:36, 4:10] = 3  # left kidney
    label[16:19, 4:7, 3:5] = 4  # gallbladder
    label[2:8, 30:38, 6:14] = 1  # spleen
    label[10:16, 24:32, 10:16] = 7  # stomach
    label[25:27, 3:5, 12:13] = 12  # right adrenal
    label[25:27, 33:35, 12:14] = 13  # left adrenal
    label[36:38, 18:20, 0:20] = 8  # aorta, not an organ here
    return label


def write_case(tmp_path, label, image=None, image_affine=AFFINE, name="case"):
    image = np.random.default_rng(0).normal(50, 10, label.shape).astype(np.int16) if image is None else image
    image_file, label_file = tmp_path / f"{name}_img.nii.gz", tmp_path / f"{name}_lbl.nii.gz"
    nib.save(nib.Nifti1Image(image, image_affine), image_file)
    nib.save(nib.Nifti1Image(label, AFFINE), label_file)
    return {"image": str(image_file), "label": str(label_file)}


def load(item):
    return Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"])])(item)


def mask_organs(item, **kwargs):
    kwargs.setdefault("known_labels", BTCV_IDS)
    return OrganMaskd(keys="image", organ_labels=BTCV, margin=1, **kwargs)(load(item))


def test_one_masked_crop_per_organ(tmp_path):
    label = boxes_label_map()
    image = np.arange(label.size, dtype=np.int16).reshape(label.shape) % 1000
    samples = mask_organs(write_case(tmp_path, label, image))
    assert [s["organ"] for s in samples] == list(BTCV)
    assert [int(s["label"]) for s in samples] == list(range(7))
    liver = samples[0]
    # the liver box [2:14, 2:16, 2:12] plus a one-voxel margin
    assert liver["image"].shape == (1, 14, 16, 12)
    assert liver["mask"].sum() == 12 * 14 * 10
    inside = liver["mask"] > 0
    np.testing.assert_array_equal(liver["image"][inside].numpy(), image[1:15, 1:17, 1:13][inside[0].numpy()])
    assert float(liver["image"][~inside].abs().sum()) == 0.0
    # the crop keeps its position in space: its affine is shifted by the crop start
    np.testing.assert_allclose(liver["image"].affine[:3, 3].numpy(), AFFINE[:3, :3] @ [1, 1, 1])
    kidney = samples[2]
    assert kidney["mask"].sum() == 2 * 5 * 6 * 6  # both kidneys make one organ


def test_missing_organ_gives_no_sample_and_a_warning(tmp_path, caplog):
    label = boxes_label_map()
    label[label == 4] = 0
    with caplog.at_level(logging.WARNING):
        samples = mask_organs(write_case(tmp_path, label))
    assert "gallbladder" not in [s["organ"] for s in samples]
    assert len(samples) == 6
    assert any("gallbladder" in r.message and "case_lbl.nii.gz" in r.message for r in caplog.records)


def test_label_map_without_any_organ_is_an_error(tmp_path):
    label = np.zeros((40, 40, 20), np.uint8)
    label[0:3, 0:3, 0:3] = 8
    with pytest.raises(ValueError, match=r"case_lbl\.nii\.gz contains none of the organs"):
        mask_organs(write_case(tmp_path, label))


def test_unknown_label_ids_are_an_error(tmp_path):
    label = boxes_label_map()
    label[0, 0, 0] = 42
    with pytest.raises(ValueError, match=r"case_lbl\.nii\.gz contains unknown label ids \[42\]"):
        mask_organs(write_case(tmp_path, label))
    assert len(mask_organs(write_case(tmp_path, label), known_labels=None)) == 7


def test_image_and_label_on_different_grids_are_an_error(tmp_path):
    label = boxes_label_map()
    image = np.zeros((40, 40, 18), np.int16)
    with pytest.raises(ValueError, match=r"case_img\.nii\.gz has spatial shape \(40, 40, 18\).*case_lbl\.nii\.gz"):
        mask_organs(write_case(tmp_path, label, image))


def test_other_label_conventions_are_a_mapping():
    """TotalSegmentator's ids select the same organs with no code change."""
    label = torch.zeros(1, 10, 10, 10)
    label[0, 1:4, 1:4, 1:4] = 5  # TotalSegmentator liver
    label[0, 6:8, 6:8, 6:8] = 7  # TotalSegmentator pancreas
    data = {"image": torch.ones(1, 10, 10, 10), "label": label}
    total_segmentator = {"liver": [5], "pancreas": [7], "kidney": [2, 3]}
    samples = OrganMaskd(keys="image", organ_labels=total_segmentator, margin=0)(data)
    assert [(s["organ"], int(s["label"])) for s in samples] == [("liver", 0), ("pancreas", 1)]
    assert samples[0]["image"].shape == (1, 3, 3, 3)


def test_even_and_stratified_slice_indices():
    np.testing.assert_array_equal(even_slice_indices(10, 25, 4), [10, 15, 20, 25])
    np.testing.assert_array_equal(even_slice_indices(3, 4, 4), [3, 3, 4, 4])  # short organs repeat slices
    rng = np.random.RandomState(0)
    for _ in range(50):
        picks = stratified_slice_indices(10, 41, 8, rng)
        np.testing.assert_array_equal((picks - 10) // 4, np.arange(8))  # one index inside each 4-slice bin
    assert not np.array_equal(stratified_slice_indices(10, 41, 8, rng), stratified_slice_indices(10, 41, 8, rng))


def test_sample_slices_shape_extent_and_aspect():
    mask = torch.zeros(1, 20, 10, 30)
    mask[0, :, :, 5:25] = 1
    image = mask * torch.arange(30).float()  # each slice's value is its axial index
    out = SampleSlicesd(keys=["image", "mask"], num_slices=5, spatial_size=16, mode=["bilinear", "nearest"])(
        {"image": image, "mask": mask}
    )
    assert out["image"].shape == (1, 16, 16, 5)
    np.testing.assert_array_equal(out["slice_indices"].numpy(), [5, 10, 14, 19, 24])
    assert organ_extent(mask) == (5, 24)
    # 20x10 keeps its 2:1 aspect as 16x8, centred with zero padding
    content = out["mask"][0, :, :, 0]
    assert content.sum() == 16 * 8
    assert content[:, 4:12].all() and not content[:, :4].any() and not content[:, 12:].any()
    torch.testing.assert_close(out["image"][0, 8, 8, :], torch.tensor([5.0, 10.0, 14.0, 19.0, 24.0]))


def test_random_slice_sampling_is_reproducible_from_its_seed():
    mask = torch.zeros(1, 8, 8, 40)
    mask[..., 4:36] = 1
    data = {"image": mask.clone(), "mask": mask}

    def draw(seed):
        transform = RandSampleSlicesd(keys=["image", "mask"], num_slices=8, spatial_size=8)
        transform.set_random_state(seed)
        return [transform(data)["slice_indices"].tolist() for _ in range(3)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_empty_mask_is_an_error_naming_the_organ():
    data = {"image": torch.zeros(1, 4, 4, 4), "mask": torch.zeros(1, 4, 4, 4), "organ": "spleen"}
    with pytest.raises(ValueError, match="spleen.*empty"):
        SampleSlicesd(keys=["image", "mask"], num_slices=4, spatial_size=4)(data)

"""Bad datasets are refused up front, with the file and what was expected."""

import json

import nibabel as nib
import numpy as np
import pytest

from medsora.image.datalist import case_datalist, check_pair, load_datalist, prepare_dataset

AFFINE = np.diag([-3.0, -3.0, 4.0, 1.0])


def write_dataset(root, image_affine=AFFINE, label_shape=(8, 8, 6)):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 6), np.int16), image_affine), root / "imagesTr" / "img0001.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(label_shape, np.uint8), AFFINE), root / "labelsTr" / "label0001.nii.gz")
    item = {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    (root / "dataset_0.json").write_text(json.dumps({"training": [item], "validation": [item]}))
    return str(root / "dataset_0.json")


def test_a_good_dataset_loads_with_absolute_paths(tmp_path):
    datalist_file = write_dataset(tmp_path)
    assert prepare_dataset(str(tmp_path), str(tmp_path / "elsewhere")) == datalist_file
    (item,) = load_datalist(datalist_file, "training")
    assert item["image"] == str(tmp_path / "imagesTr" / "img0001.nii.gz")


def test_a_directory_without_datalist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}.*has no dataset_0.json.*BTCV layout"):
        prepare_dataset(str(tmp_path), str(tmp_path / "phantom"))
    assert not (tmp_path / "phantom").exists()  # real-data directories are never filled with a phantom


def test_missing_split_and_missing_files_are_named(tmp_path):
    datalist_file = write_dataset(tmp_path)
    with pytest.raises(ValueError, match="'test'"):
        load_datalist(datalist_file, "test")
    (tmp_path / "labelsTr" / "label0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="label0001.nii.gz does not exist"):
        load_datalist(datalist_file, "training")


def test_corrupt_nifti_is_named(tmp_path):
    datalist_file = write_dataset(tmp_path)
    (tmp_path / "imagesTr" / "img0001.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match=r"img0001.nii.gz is not a readable NIfTI image"):
        load_datalist(datalist_file, "training")


def test_shape_and_affine_mismatches_name_both_files(tmp_path):
    datalist_file = write_dataset(tmp_path / "a", label_shape=(8, 8, 5))
    with pytest.raises(ValueError, match=r"img0001.nii.gz has shape \(8, 8, 6\) but label map .*label0001.nii.gz"):
        load_datalist(datalist_file, "training")
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    datalist_file = write_dataset(tmp_path / "b", image_affine=shifted)
    with pytest.raises(ValueError, match=r"img0001.nii.gz and label map .*label0001.nii.gz have different affines"):
        load_datalist(datalist_file, "training")
    check_pair(str(tmp_path / "b" / "x.dcm"), str(tmp_path / "b" / "y.dcm"))  # non-NIfTI inputs are left to the reader


def test_single_case_inputs_are_checked(tmp_path):
    write_dataset(tmp_path)
    image, label = str(tmp_path / "imagesTr" / "img0001.nii.gz"), str(tmp_path / "labelsTr" / "label0001.nii.gz")
    assert case_datalist(image, label) == [{"image": image, "label": label}]
    with pytest.raises(ValueError, match="--label must name"):
        case_datalist(image, None)
    with pytest.raises(FileNotFoundError, match="nope.nii.gz does not exist"):
        case_datalist(str(tmp_path / "nope.nii.gz"), label)

"""A CT given as a DICOM series gives the same organs, predictions and probability maps as its NIfTI."""

import json
import os
import shutil

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from dicom_series import write_dicom_series
from helpers import BUNDLE_ROOT, INFERENCE, ORGANS
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import LoadImage

from medsora.image import phantom
from medsora.image.datalist import case_datalist, check_pair, image_grid
from medsora.image.features import organ_feature_bank
from medsora.image.file_checks import uncompressed_pixel_bytes
from medsora.image.gate import ImageGate


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """One phantom case as NIfTI and as DICOM series (CT and label map), untrained weights to run the workflows and
    the shipped text index."""
    root = tmp_path_factory.mktemp("dicom")
    image, label, affine = phantom.generate_case((9, 1), shape=(64, 64, 32))
    paths = {name: str(root / name) for name in ("ct.nii.gz", "labels.nii.gz", "ct_dicom", "labels_dicom")}
    nib.save(nib.Nifti1Image(image, affine), paths["ct.nii.gz"])
    nib.save(nib.Nifti1Image(label, affine), paths["labels.nii.gz"])
    write_dicom_series(image, affine, paths["ct_dicom"])
    write_dicom_series(label.astype(np.int16), affine, paths["labels_dicom"], intercept=0.0)
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    torch.manual_seed(0)
    (root / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    torch.save(parser.get_parsed_content("aligner_def").state_dict(), root / "models" / "alignment.pt")
    ImageGate(0.5, tuple(ORGANS)).save(str(root / "models" / "image_gate.json"))
    for name in ("text_index.pt", "fusion.json"):  # the shipped retrieval index and fusion, built for the same encoder
        shutil.copyfile(os.path.join(BUNDLE_ROOT, "models", name), root / "models" / name)
    return {"root": root, "image": image, "label": label, "affine": affine, **paths}


def run(case, run_id, **overrides):
    workflow = ConfigWorkflow(
        config_file=INFERENCE, workflow_type=None, run_id=run_id, ckpt_dir=str(case["root"] / "models"), **overrides
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_a_dicom_series_reads_back_on_the_grid_of_its_nifti(case):
    loader = LoadImage(image_only=True)
    ct, labels = loader(case["ct_dicom"]), loader(case["labels_dicom"])
    np.testing.assert_allclose(ct.affine.numpy(), case["affine"], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ct), case["image"])  # HU after RescaleIntercept, in (X, Y, Z) order
    np.testing.assert_array_equal(np.asarray(labels), case["label"])
    shape, affine = image_grid(case["ct_dicom"])
    assert shape == case["image"].shape
    np.testing.assert_allclose(affine, case["affine"], atol=1e-4)


def test_a_compressed_series_is_read_not_taken_for_a_cut_one(case, tmp_path):
    """Compressed slices are smaller than their pixels: the check for cut files applies to uncompressed ones only."""
    write_dicom_series(case["image"], case["affine"], str(tmp_path / "rle"), compressed=True)
    sizes = [os.path.getsize(tmp_path / "rle" / name) for name in os.listdir(tmp_path / "rle")]
    assert max(sizes) < case["image"][:, :, 0].size * 2  # each file is smaller than its slice's uncompressed pixels
    assert case_datalist(str(tmp_path / "rle"), case["labels.nii.gz"])
    np.testing.assert_array_equal(np.asarray(LoadImage(image_only=True)(str(tmp_path / "rle"))), case["image"])
    declared = {}
    for series in (case["ct_dicom"], str(tmp_path / "rle")):
        path = os.path.join(series, sorted(os.listdir(series))[0])
        io = itk.GDCMImageIO.New()
        io.SetFileName(path)
        io.ReadImageInformation()
        declared[series] = uncompressed_pixel_bytes(io, path)
    assert declared == {case["ct_dicom"]: case["image"][:, :, 0].size * 2, str(tmp_path / "rle"): 0}


def test_dicom_and_nifti_grids_are_compared(case, tmp_path):
    check_pair(case["ct_dicom"], case["labels.nii.gz"])
    check_pair(case["ct_dicom"], case["labels_dicom"])
    assert case_datalist(case["ct_dicom"], case["labels.nii.gz"]) == [
        {"image": case["ct_dicom"], "label": case["labels.nii.gz"]}
    ]
    shifted = case["affine"].copy()
    shifted[2, 3] += 2.0
    nib.save(nib.Nifti1Image(case["label"], shifted), tmp_path / "shifted.nii.gz")
    with pytest.raises(ValueError, match=r"image .*ct_dicom and label map .*shifted.nii.gz have different affines"):
        check_pair(case["ct_dicom"], str(tmp_path / "shifted.nii.gz"))
    nib.save(nib.Nifti1Image(case["label"][:, :, 1:], case["affine"]), tmp_path / "short.nii.gz")
    with pytest.raises(ValueError, match=r"image .*ct_dicom has shape \(64, 64, \d+\) but label map .*short.nii.gz"):
        check_pair(case["ct_dicom"], str(tmp_path / "short.nii.gz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is a directory but holds no DICOM series that ITK can read"):
        check_pair(str(tmp_path / "empty"), case["labels.nii.gz"])
    with pytest.raises(FileNotFoundError, match=r"--image .*missing_series does not exist"):
        case_datalist(str(tmp_path / "missing_series"), case["labels.nii.gz"])


def test_organ_features_from_a_dicom_ct_equal_those_from_its_nifti(case):
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    network, preprocessing = parser.get_parsed_content("network_def"), parser.get_parsed_content("preprocessing")
    network.load_state_dict(torch.load(case["root"] / "models" / "model.pt", weights_only=True))
    pairs = [("ct.nii.gz", "labels.nii.gz"), ("ct_dicom", "labels.nii.gz"), ("ct_dicom", "labels_dicom")]
    datalist = [{"image": case[image], "label": case[label]} for image, label in pairs]
    features, present = organ_feature_bank(network, datalist, preprocessing, len(ORGANS))
    assert present.all()
    for row in (1, 2):
        torch.testing.assert_close(features[row], features[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("label", ["labels.nii.gz", "labels_dicom"])
def test_inference_predictions_from_a_dicom_ct_equal_those_from_its_nifti(case, tmp_path, label):
    outputs = {}
    for image in ("ct.nii.gz", "ct_dicom"):
        outputs[image] = tmp_path / f"{image}.json"
        run(case, "inference", image=case[image], label=case[label], output_file=str(outputs[image]))
    (nifti,), (dicom,) = (json.loads(outputs[image].read_text()).values() for image in ("ct.nii.gz", "ct_dicom"))
    assert list(dicom) == list(nifti) == ORGANS
    for organ in ORGANS:
        for name, p in dicom[organ]["probabilities"].items():
            assert p == pytest.approx(nifti[organ]["probabilities"][name], abs=1e-4)


@pytest.mark.parametrize("label", ["labels.nii.gz", "labels_dicom"])
def test_query_on_a_dicom_ct_maps_probabilities_in_the_cts_world_coordinates(case, tmp_path, label):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"text": "painless jaundice and weight loss"}) + "\n")
    answers = {}
    for image, label_file in (("ct.nii.gz", "labels.nii.gz"), ("ct_dicom", label)):
        out = tmp_path / f"{image}.jsonl"
        run(
            case,
            "query",
            queries_file=str(queries),
            output_file=str(out),
            image=case[image],
            label=case[label_file],
            maps_dir=str(tmp_path / image),
        )
        answers[image] = json.loads(out.read_text())
    nifti, dicom = answers["ct.nii.gz"], answers["ct_dicom"]
    assert dicom["ranking"] == nifti["ranking"] and dicom["absent_organs"] == []
    for organ in ORGANS:
        assert dicom["scores"][organ] == pytest.approx(nifti["scores"][organ], abs=1e-4)
    prob = nib.load(dicom["probability_map"])
    np.testing.assert_allclose(prob.affine, case["affine"], atol=1e-4)  # RAS, as the CT's NIfTI
    assert prob.header.get_sform(coded=True)[1] == prob.header.get_qform(coded=True)[1] == 1  # scanner space
    values, ids = prob.get_fdata(), case["label"]
    assert values.shape == ids.shape
    assert np.allclose(values[ids == 6], dicom["scores"]["liver"], atol=1e-6)
    assert np.allclose(values[np.isin(ids, [12, 13])], dicom["scores"]["adrenal_gland"], atol=1e-6)
    assert np.all(values[np.isin(ids, [0, 5, 8, 9, 10])] == 0.0)
    np.testing.assert_allclose(values, nib.load(nifti["probability_map"]).get_fdata(), atol=1e-4)

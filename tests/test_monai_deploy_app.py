"""The MONAI Deploy application (integrations/monai_deploy) run end to end, as users run it, on a phantom CT study.

The study is written as DICOM (CT Image Storage series, and a DICOM SEG of the organs via highdicom, or a NIfTI label
map), with the symptom text in ``symptoms.txt``. The SR, SEG and NIfTI the app writes must carry the scores that the
bundle's ``run_query`` gives for the same CT, label map and text, with the shipped trained weights.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

NEEDS_EXTRA = "MONAI Deploy app tests need the [deploy] extra, in an environment of its own (README.md)"
pytest.importorskip("monai.deploy.core", reason=NEEDS_EXTRA)
hd = pytest.importorskip("highdicom", reason=NEEDS_EXTRA)

import pydicom  # noqa: E402
from dicom_series import write_dicom_series  # noqa: E402
from helpers import BTCV, BUNDLE_ROOT, INFERENCE, REPO_ROOT  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from monai.transforms import LoadImage  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

from medsora.image import phantom  # noqa: E402
from medsora.query import run_query  # noqa: E402

APP_DIR = os.path.join(REPO_ROOT, "integrations", "monai_deploy")
TEXT = "painless jaundice and weight loss"
SR_CLASSES = {  # Basic Text, Enhanced, Comprehensive and Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
}
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
TYPE2 = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime")


def write_label_seg(label: np.ndarray, ct_dir: Path, path: Path) -> None:
    """The label map as a BINARY DICOM SEG of the CT series, segment number = label id."""
    ct = sorted((pydicom.dcmread(p) for p in ct_dir.iterdir()), key=lambda ds: int(ds.InstanceNumber))
    for ds in ct:  # the phantom series leaves these Type 2 attributes out; highdicom copies them
        for keyword in TYPE2:
            setattr(ds, keyword, "")
    frames = np.stack([label[:, :, int(ds.InstanceNumber) - 1].T for ds in ct]).astype(np.uint8)  # slice, row, col
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=f"label {i}",
            algorithm_type="MANUAL",
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Organ,
        )
        for i in range(1, int(frames.max()) + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=ct,
        pixel_array=frames,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="phantom",
        manufacturer_model_name="phantom",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Input folders (CT + NIfTI label map, CT + DICOM SEG, CT + SEG without text) and the bundle's own answer."""
    root = tmp_path_factory.mktemp("monai_deploy")
    image, label, affine = phantom.generate_case((9, 1), shape=(64, 64, 32))
    write_dicom_series(image, affine, str(root / "ct"))
    nib.save(nib.Nifti1Image(label, affine), root / "labels.nii.gz")
    inputs = {name: root / f"input_{name}" for name in ("nifti", "seg", "no_text")}
    for folder in inputs.values():
        shutil.copytree(root / "ct", folder / "ct")  # the same series (same UIDs) in every input
    shutil.copy(root / "labels.nii.gz", inputs["nifti"] / "labels.nii.gz")
    write_label_seg(label, root / "ct", inputs["seg"] / "organs_seg.dcm")
    shutil.copy(inputs["seg"] / "organs_seg.dcm", inputs["no_text"] / "organs_seg.dcm")
    for name in ("nifti", "seg"):
        (inputs[name] / "symptoms.txt").write_text(TEXT + "\n", encoding="utf-8")

    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser["bundle_root"] = BUNDLE_ROOT
    (expected,) = run_query(
        parser.get_parsed_content("query_model"),
        text=TEXT,
        image=str(root / "ct"),
        label=str(root / "labels.nii.gz"),
        maps_dir=str(root / "expected_maps"),
        organ_labels=parser.get_parsed_content("organ_labels"),
        image_network=parser.get_parsed_content("network_def"),
        preprocessing=parser.get_parsed_content("preprocessing"),
        image_weights=os.path.join(BUNDLE_ROOT, "models", "model.pt"),
        device="cpu",
        image_gate=os.path.join(BUNDLE_ROOT, "models", "image_gate.json"),
    )
    ct_first = pydicom.dcmread(next((root / "ct").iterdir()), stop_before_pixels=True)
    ct_image = LoadImage(image_only=True)(str(root / "ct"))
    return {
        "root": root,
        "inputs": inputs,
        "label": label,
        "expected": expected,
        "ct": ct_first,
        "ct_affine": np.asarray(ct_image.affine),
        "ct_shape": tuple(ct_image.shape),
    }


def run_app(input_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    """``python integrations/monai_deploy -i IN -o OUT -m bundle``, as the README gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOLOSCAN_", "MEDSORA_"))}
    command = [sys.executable, APP_DIR, "-i", str(input_dir), "-o", str(output_dir), "-m", BUNDLE_ROOT]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def read_sr_ranking(text: str) -> tuple[dict[str, float], list[str]]:
    rows = re.findall(r"^(\d+)\. (\w+): ([0-9.]+)$", text, flags=re.MULTILINE)
    assert [int(rank) for rank, _, _ in rows] == list(range(1, len(rows) + 1))
    return {organ: float(score) for _, organ, score in rows}, [organ for _, organ, _ in rows]


@pytest.mark.parametrize("segmentation", ["nifti", "seg"])
def test_the_app_writes_the_ranking_as_sr_and_the_scores_on_the_ct(study, tmp_path, segmentation):
    out = tmp_path / "output"
    result = run_app(study["inputs"][segmentation], out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected, ct = study["expected"], study["ct"]
    datasets = [pydicom.dcmread(p) for p in out.glob("*.dcm")]

    (sr,) = [ds for ds in datasets if ds.SOPClassUID in SR_CLASSES]
    assert sr.Modality == "SR" and sr.file_meta.MediaStorageSOPClassUID == sr.SOPClassUID
    assert sr.StudyInstanceUID == ct.StudyInstanceUID and sr.PatientID == ct.PatientID
    assert sr.SeriesInstanceUID != ct.SeriesInstanceUID
    (report,) = [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
    scores, ranking = read_sr_ranking(report)
    assert sorted(scores) == sorted(BTCV)
    for organ in BTCV:
        assert scores[organ] == pytest.approx(expected["scores"][organ], abs=1e-4)
    assert ranking == expected["ranking"]
    assert f"Abdominal (in domain): {'yes' if expected['in_domain'] else 'no'}" in report
    assert f"P(abdominal) {expected['p_abdominal']:.3f}, threshold " in report
    assert f"CT series: {ct.SeriesInstanceUID}" in report
    evidence = re.findall(
        r'^- (\w+): "(.+)" \(similarity ([0-9.-]+)(?:, lexical [0-9.]+)?; (\S+) (\S+)', report, flags=re.MULTILINE
    )
    assert [(organ, text) for organ, text, *_ in evidence] == [(e["organ"], e["text"]) for e in expected["evidence"]]
    for (*_, source, identifier), item in zip(evidence, expected["evidence"]):
        assert (source, identifier.rstrip(":)")) == (item["provenance"]["source"], item["provenance"]["identifier"])
    assert f"Organ segmentation: {'DICOM SEG' if segmentation == 'seg' else 'NIfTI label map'} " in report

    assert "Organs the image network does not recognise on this CT (reference score): " in report
    assert f"Organs cut by the edge of the scan: {', '.join(expected['cut_organs']) or 'none'}" in report

    answer = json.loads((out / "ranking.json").read_text(encoding="utf-8"))
    assert answer["ranking"] == expected["ranking"] and answer["in_domain"] == expected["in_domain"]
    assert answer["evidence"] == expected["evidence"] and len(answer["evidence"]) == 6
    assert answer["study_instance_uid"] == ct.StudyInstanceUID
    assert answer["image_features"] == expected["image_features"] and answer["cut_organs"] == expected["cut_organs"]
    assert answer["figure_3d"] == "organ_probability_3d.png" and answer["view_3d"] == "organ_probability_3d.html"
    assert (out / "organ_probability_3d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (out / "organ_probability_3d.html").read_text(encoding="utf-8")[:100000].lower()

    ids = study["label"]
    prob = nib.load(out / "organ_probability.nii.gz")
    assert prob.shape == study["ct_shape"] == ids.shape
    np.testing.assert_allclose(prob.affine, study["ct_affine"], atol=1e-4)
    values = prob.get_fdata()
    for organ, organ_ids in BTCV.items():
        assert np.allclose(values[np.isin(ids, organ_ids)], expected["scores"][organ], atol=1e-4)
    assert np.all(values[~np.isin(ids, sum(BTCV.values(), []))] == 0.0)

    (seg_ds,) = [ds for ds in datasets if ds.SOPClassUID == SEGMENTATION_STORAGE]
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg.segmentation_type.value == "FRACTIONAL" and seg_ds.SegmentationFractionalType == "PROBABILITY"
    assert seg_ds.StudyInstanceUID == ct.StudyInstanceUID and seg_ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert [item.SeriesInstanceUID for item in seg_ds.ReferencedSeriesSequence] == [ct.SeriesInstanceUID]
    assert [item.SegmentLabel for item in seg_ds.SegmentSequence] == list(BTCV)
    geometry = hd.VolumeGeometry(study["ct_affine"], study["ct_shape"], "PATIENT", from_reference_convention="RAS")
    channels = seg.get_volume().match_geometry(geometry).array  # (x, y, z, organ) on the CT's grid
    tolerance = 0.5 / int(seg_ds.MaximumFractionalValue) + 1e-6
    for index, (organ, organ_ids) in enumerate(BTCV.items()):
        inside = np.isin(ids, organ_ids)
        assert np.allclose(channels[..., index][inside], expected["scores"][organ], atol=tolerance)
        assert np.all(channels[..., index][~inside] == 0.0)


def test_the_app_without_symptom_text_fails_naming_the_file(study, tmp_path):
    out = tmp_path / "output"
    result = run_app(study["inputs"]["no_text"], out)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "no symptom text" in message and os.path.join(str(study["inputs"]["no_text"]), "symptoms.txt") in message
    assert not list(out.glob("*.dcm"))

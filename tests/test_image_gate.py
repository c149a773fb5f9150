# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The image gate: a patient's organ features are used only where the image network reads the organ; elsewhere the
organ's score is the text-only one. Calibration, the per-organ report, the warning, and `query` and `inference` on a
CT from a domain the network never saw, cut by the scan's edge."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import INFERENCE, ORGANS, run_bundle
from monai.data import MetaTensor

from medsora.image import phantom
from medsora.image.features import OrganReadings
from medsora.image.gate import ImageGate, calibrate_image_gate, gate_warning, load_image_gate


class _Reader(torch.nn.Module):
    """A stand-in image network whose organ sample *is* its logits (one slice, one branch)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def features_and_logits(self, x):
        return x.reshape(1, 1, -1), (self.scale * x).reshape(1, 1, 1, -1)


def _sample(organ: int, logits, cut=False):
    return {
        "image": MetaTensor(torch.tensor(logits, dtype=torch.float32)),
        "label": torch.tensor([organ]),
        "cut_at_edge": cut,
    }


def _confident(organ: int, read_as: int, strength: float):
    logits = [0.0] * len(ORGANS)
    logits[read_as] = strength
    return _sample(organ, logits)


def test_calibration_keeps_the_share_of_correct_readings(tmp_path):
    network = _Reader()
    weights = tmp_path / "model.pt"
    torch.save(network.state_dict(), weights)
    strengths = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]  # ten correct readings, rising confidence
    cases = [[_confident(k % 7, k % 7, s)] for k, s in enumerate(strengths)] + [[_confident(0, 2, 9.0)]]  # one wrong
    gate = calibrate_image_gate(network, str(weights), cases, ORGANS, str(tmp_path / "image_gate.json"), keep=0.8)
    confidence = [float(torch.softmax(torch.tensor([s] + [0.0] * 6), 0)[0]) for s in strengths]
    assert gate.threshold == pytest.approx(confidence[2])  # the 8 most confident of the 10 correct ones pass
    assert gate.validation == {
        "organ_samples": 11,
        "accuracy": round(10 / 11, 4),
        "correct_kept": 0.8,
        "passed": round(8 / 11, 4),
    }
    assert load_image_gate(str(tmp_path / "image_gate.json")) == ImageGate(
        gate.threshold, tuple(ORGANS), 0.8, gate.validation
    )
    with pytest.raises(ValueError, match="none of the 1 validation organs"):
        calibrate_image_gate(network, str(weights), [[_confident(0, 1, 5.0)]], ORGANS, str(tmp_path / "g.json"))


def test_report_and_features_follow_the_gate():
    gate = ImageGate(0.5, tuple(ORGANS))
    probabilities = torch.full((1, 7, 7), 0.01)
    probabilities[0, 0, 0] = 0.9  # liver read as liver, confidently: the patient's features
    probabilities[0, 2, 5] = 0.46  # kidney read as stomach: the reference
    probabilities[0, 4, 4] = 0.3  # spleen read right, but below the threshold: the reference
    present = torch.tensor([[True, False, True, False, True, False, False]])
    readings = OrganReadings(torch.ones(1, 7, 2, 3), probabilities, present, torch.zeros(1, 7, dtype=torch.bool))
    reference = torch.zeros(7, 2, 3)
    features, report = gate.apply(readings, reference)
    assert report["liver"] == {"source": "patient", "predicted": "liver", "confidence": 0.9}
    assert report["kidney"] == {"source": "reference", "predicted": "stomach", "confidence": 0.46}
    assert report["spleen"]["source"] == "reference" and report["spleen"]["predicted"] == "spleen"
    assert report["pancreas"] == {"source": "reference", "predicted": None, "confidence": None}  # absent
    assert torch.equal(features[:, 0, 0], torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))
    warning = gate_warning("ct.nii.gz", report)
    assert warning.startswith("ct.nii.gz: the image network does not recognise kidney (read as stomach, 0.46), ")
    assert "spleen (read as spleen, 0.30)" in warning and "pancreas" not in warning
    assert gate_warning("ct.nii.gz", {"liver": report["liver"]}) is None


def test_gate_file_errors_name_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="image_gate.json not found: run `python -m monai.bundle run calibrate"):
        load_image_gate(str(tmp_path / "image_gate.json"))
    (tmp_path / "image_gate.json").write_text('{"organs": []}')
    with pytest.raises(ValueError, match="is not a gate file"):
        load_image_gate(str(tmp_path / "image_gate.json"))


def _unseen_domain_ct(tmp_path):
    """A phantom CT no phantom domain makes: intensities remapped (fat bright, organs dark, as in no CT protocol)
    and cut to 130 mm, so that five organs reach the scan's edge."""
    case = phantom.CaseDomain(phase="non_contrast", z_coverage_mm=130.0, seed=7)
    image, label, affine = phantom.generate_case((21, 1), shape=(96, 96, 48), domain=case)
    remapped = np.clip(180 - 1.5 * image.astype(np.float32), -1024, 3071).astype(np.int16)
    paths = {}
    for name, array in (("ct", remapped), ("labels", label)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(array, affine), paths[name])
    ids = dict(zip(ORGANS, ([6], [11], [2, 3], [4], [1], [7], [12, 13])))
    faces = [label[0], label[-1], label[:, 0], label[:, -1], label[..., 0], label[..., -1]]
    touching = {o for o, i in ids.items() if any(np.isin(face, i).any() for face in faces)}
    surely_cut = {o for o, i in ids.items() if np.isin(label[..., [0, -1]], i).sum() >= 40}  # survive resampling
    return paths["ct"], paths["labels"], touching, surely_cut


@pytest.mark.slow
def test_query_and_inference_on_an_unseen_domain(tiny_bundle, tmp_path):
    image, label, touching, surely_cut = _unseen_domain_ct(tmp_path)
    assert surely_cut
    text = "Colicky pain from the flank to the groin with blood in the urine"
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"text": text}) + "\n")

    def ask(ckpt_dir, *patient):
        out = tmp_path / f"answers_{ckpt_dir.name}_{len(patient)}.jsonl"
        dirs = ["--ckpt_dir", ckpt_dir, "--output_dir", tiny_bundle["output_dir"]]
        options = ["--queries_file", queries, "--output_file", out, *patient]
        result = run_bundle("run", "query", "--config_file", INFERENCE, *dirs, *options)
        return json.loads(out.read_text()), result.stdout + result.stderr

    patient = ["--image", image, "--label", label, "--maps_dir", tmp_path / "maps"]
    models = tiny_bundle["ckpt_dir"]
    text_only, _ = ask(models)
    answer, log = ask(models, *patient)
    gate = load_image_gate(str(models / "image_gate.json"))
    assert set(answer["image_features"]) == set(ORGANS)
    assert surely_cut <= set(answer["cut_organs"]) <= touching  # the organs the scan's edge cuts
    for organ, seen in answer["image_features"].items():
        if seen["source"] == "reference":  # the network cannot read it: the text-only score, never worse
            assert answer["scores"][organ] == text_only["scores"][organ], organ
        else:
            assert seen["predicted"] == organ and seen["confidence"] >= gate.threshold
    misread = [o for o, seen in answer["image_features"].items() if seen["source"] == "reference" and seen["predicted"]]
    assert log.count("the image network does not recognise") == (1 if misread else 0)  # one warning per CT
    for key in ("figure_3d", "view_3d"):
        assert open(answer[key], "rb").read(1)

    # a gate that trusts nothing: the answer on the CT is the text-only answer, organ for organ
    closed = tmp_path / "closed_gate"
    shutil.copytree(models, closed)
    ImageGate(1.0, tuple(ORGANS)).save(str(closed / "image_gate.json"))
    shut, _ = ask(closed, *patient)
    assert shut["scores"] == text_only["scores"] and shut["ranking"] == text_only["ranking"]
    assert all(seen["source"] == "reference" for seen in shut["image_features"].values())

    # `run inference` reports what `query` did with every organ
    predictions = tmp_path / "predictions.json"
    dirs = ["--ckpt_dir", models, "--output_dir", tiny_bundle["output_dir"]]
    patient_only = ["--image", image, "--label", label]
    run_bundle("run", "inference", "--config_file", INFERENCE, *dirs, *patient_only, "--output_file", predictions)
    (organs,) = json.loads(predictions.read_text()).values()
    for organ, entry in organs.items():
        seen = answer["image_features"][organ]
        assert (entry["source"], entry["predicted"], entry["confidence"]) == (
            seen["source"],
            seen["predicted"],
            seen["confidence"],
        )
        assert entry["cut_at_edge"] == (organ in answer["cut_organs"])

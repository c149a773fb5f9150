"""The printed answer explains itself: the query's own P(abdominal) against the threshold and the decision, what a
score is, the evidence under each organ, and on a patient's CT the organs it lacks and those the image gate kept at
their reference features. Checked on made-up answers (every branch) and on real answers of the shipped models."""

import nibabel as nib
import numpy as np
import pytest
from helpers import BTCV, BUNDLE_ROOT, INFERENCE, ORGANS
from monai.bundle import ConfigParser

from medsora.image import phantom
from medsora.literal_options import literal_overrides
from medsora.query import run_query
from medsora.query.printout import SCORES_MEANING, format_ranking

EVIDENCE = {
    "text": "Colicky right upper quadrant pain after a fatty meal",
    "organ": "gallbladder",
    "similarity": 0.81,
    "provenance": {"source": "clinical", "identifier": "gallbladder/biliary_colic"},
}


def made_up(in_domain, p_abdominal, **more):
    scores = dict(zip(ORGANS, [0.1, 0.05, 0.02, 0.9, 0.0, 0.3, 0.01]))
    ranking = sorted(ORGANS, key=lambda organ: -scores[organ])
    return {"scores": scores, "ranking": ranking, "in_domain": in_domain, "p_abdominal": p_abdominal, **more}


def test_an_abdominal_answer_shows_its_p_against_the_threshold_and_what_a_score_is():
    lines = format_ranking("biliary colic", made_up(True, 0.9731, evidence=[EVIDENCE]), 0.6642).splitlines()
    assert lines[:3] == [
        "symptoms: biliary colic",
        "abdominal: yes (P(abdominal) 0.973 >= threshold 0.664)",
        "scores: each organ's relevance to these symptoms, in [0, 1]; not probabilities (they need not sum to one)",
    ]
    assert lines[2] == SCORES_MEANING
    assert lines[3] == "  1. gallbladder    0.900 " + "#" * 27
    assert lines[4] == (
        '       evidence: "Colicky right upper quadrant pain after a fatty meal" '
        "(similarity 0.81; clinical gallbladder/biliary_colic)"
    )
    assert lines[5].startswith("  2. stomach        0.300 ") and len(lines) == 3 + 7 + 1  # one evidence line
    # under hybrid retrieval the item also carries the similarity of its character n-grams
    item = {**EVIDENCE, "lexical_similarity": 0.436}
    hybrid = format_ranking("biliary colic", made_up(True, 0.9731, evidence=[item]), 0.6642)
    assert hybrid.splitlines()[4].endswith("(similarity 0.81, lexical 0.44; clinical gallbladder/biliary_colic)")


def test_a_rejected_answer_says_why():
    below = format_ranking("knee pain", made_up(False, 0.031), 0.664).splitlines()[1]
    assert below == "abdominal: no (P(abdominal) 0.031 < threshold 0.664): no abdominal organ is indicated"
    # P above the threshold yet out of domain: the text is mostly words the model cannot read
    unread = format_ranking("dolor intenso", made_up(False, 0.803), 0.664).splitlines()[1]
    assert unread == (
        "abdominal: no (P(abdominal) 0.803 >= threshold 0.664, but most of its words are unknown to the model): "
        "no abdominal organ is indicated"
    )


def test_on_a_ct_absent_organs_and_the_organs_the_gate_kept_are_listed():
    features = {organ: {"source": "patient", "predicted": organ, "confidence": 0.99} for organ in ORGANS}
    features["gallbladder"] = {"source": "reference", "predicted": None, "confidence": None}  # absent
    features["spleen"] = {"source": "reference", "predicted": "liver", "confidence": 0.4312}
    answer = made_up(True, 0.97, absent_organs=["gallbladder"], image_features=features, cut_organs=[])
    lines = format_ranking("biliary colic", answer, 0.664).splitlines()
    assert lines[-2:] == [
        "absent from the label map (reference score): gallbladder",
        "reference features kept by the image gate (text-only score): spleen (read as liver, 0.43)",
    ]
    everything_read = made_up(True, 0.97, absent_organs=[], image_features={o: features["liver"] for o in ORGANS})
    assert format_ranking("x", everything_read, 0.664).splitlines()[-1].startswith("  7. ")


@pytest.fixture(scope="module")
def shipped():
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update(literal_overrides(bundle_root=BUNDLE_ROOT))
    return parser


def test_the_shipped_models_answer_prints_its_own_numbers(shipped, capsys):
    query = shipped.get_parsed_content("query_model")
    (answer,) = run_query(query, text="colicky right upper quadrant pain after fatty meals")
    printed = capsys.readouterr().out.splitlines()
    assert 0.0 <= answer["p_abdominal"] <= 1.0 and answer["in_domain"] == (answer["p_abdominal"] >= query.threshold)
    relation = ">=" if answer["in_domain"] else "<"
    verdict = "yes" if answer["in_domain"] else "no"
    assert printed[1].startswith(
        f"abdominal: {verdict} (P(abdominal) {answer['p_abdominal']:.3f} {relation} threshold {query.threshold:.3f})"
    )
    assert printed[2] == SCORES_MEANING
    for rank, organ in enumerate(answer["ranking"], 1):
        assert any(line.startswith(f"{rank:>3}. {organ:<14} {answer['scores'][organ]:.3f}") for line in printed)
    assert sum(line.startswith("       evidence: ") for line in printed) == 3  # one per top organ


def test_the_shipped_models_answer_on_a_ct_lists_absent_and_gated_organs(shipped, tmp_path, capsys):
    image, label, affine = phantom.generate_case((3, 1), shape=(96, 96, 48))
    label[np.isin(label, BTCV["gallbladder"])] = 0  # a cholecystectomy: the label map lacks the gallbladder
    paths = {}
    for name, array in (("ct", image), ("labels", label)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(array, affine), paths[name])
    (answer,) = run_query(
        shipped.get_parsed_content("query_model"),
        text="vomiting blood and black tarry stools",
        image=paths["ct"],
        label=paths["labels"],
        maps_dir=str(tmp_path / "maps"),
        organ_labels=shipped.get_parsed_content("organ_labels"),
        image_network=shipped.get_parsed_content("network_def"),
        image_weights=f"{BUNDLE_ROOT}/models/model.pt",
        preprocessing=shipped.get_parsed_content("preprocessing"),
        image_gate=shipped.get_parsed_content("image_gate"),
    )
    printed = capsys.readouterr().out.splitlines()
    assert answer["absent_organs"] == ["gallbladder"]
    assert "absent from the label map (reference score): gallbladder" in printed
    kept = [
        f"{organ} (read as {seen['predicted']}, {seen['confidence']:.2f})"
        for organ, seen in answer["image_features"].items()
        if seen["source"] == "reference" and seen["predicted"] is not None
    ]
    gate_line = [line for line in printed if line.startswith("reference features kept by the image gate")]
    assert gate_line == (
        [f"reference features kept by the image gate (text-only score): {', '.join(kept)}"] if kept else []
    )
    assert printed.index("absent from the label map (reference score): gallbladder") > printed.index(SCORES_MEANING)
    assert any(line.startswith("probability map: ") for line in printed)

"""The text half trained for real on the shipped corpus (short schedules), then queried the way users query it."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from helpers import INFERENCE, ORGANS, TEXT, TINY_TEXT, run_bundle
from monai.bundle import ConfigParser

from medsora.image import phantom
from medsora.query import MAX_TEXT_CHARS
from medsora.stages import load_weights
from medsora.text.alignment import AlignmentInfoNCELoss
from medsora.text.encoders import HFTextEncoder
from medsora.text.soft_labels import AnchorMarginLoss, OrganAnchors, load_anchors, soft_labels, training_targets


def query(tiny_bundle, *args, check=True):
    """``run query`` with the tiny bundle's trained weights."""
    dirs = ["--ckpt_dir", tiny_bundle["ckpt_dir"], "--output_dir", tiny_bundle["output_dir"]]
    return run_bundle("run", "query", "--config_file", INFERENCE, *dirs, *args, check=check)


@pytest.mark.slow
def test_every_stage_writes_its_file(tiny_bundle):
    for name in ("text_anchors.pt", "text_model.pt", "domain_gate.pt", "alignment.pt", "text_index.pt", "fusion.json"):
        assert (tiny_bundle["ckpt_dir"] / name).is_file(), name
    history = json.loads((tiny_bundle["output_dir"] / "text_training" / "anchors_loss.json").read_text())
    assert len(history["epoch_loss"]) == TINY_TEXT["anchor_epochs"]
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    metrics = json.loads((tiny_bundle["output_dir"] / "text_metrics.json").read_text())
    for split in ("validation", "test"):
        for model in ("Med-SORA", "text head only", "zero-shot (organ name)"):
            report = metrics[split][model]
            assert 0.0 <= report["Rank-1"] <= report["Rank-2"] <= report["Rank-3"] <= 1.0
        assert 0.5 < metrics[split]["out-of-domain"]["AUROC"] <= 1.0
        fused = metrics[split]["Med-SORA fused (retrieval + learned)"]
        assert 0.0 <= fused["Rank-1"] <= fused["Rank-2"] <= fused["Rank-3"] <= 1.0
        assert 0.5 < metrics[split]["out-of-domain, fused"]["AUROC"] <= 1.0
    fusion = json.loads((tiny_bundle["ckpt_dir"] / "fusion.json").read_text())
    assert fusion["parameters"]["neighbours"] in fusion["choice"]["grid"]["neighbours"]
    assert 0.0 <= fusion["parameters"]["threshold"] <= 1.0
    text_history = json.loads((tiny_bundle["output_dir"] / "text_training" / "text_loss.json").read_text())
    assert 1 <= len(text_history["epoch_loss"]) <= TINY_TEXT["text_epochs"]


@pytest.mark.slow
def test_each_text_stage_prints_one_summary_line_and_the_run_a_short_metrics_summary(tiny_bundle):
    log = tiny_bundle["text_log"]
    assert "Epoch[" not in log and '"AP per organ"' not in log  # no per-epoch lines, no JSON dump
    for title, epochs in (
        ("organ anchors", "anchor_epochs"),
        ("domain gate", "gate_epochs"),
        ("alignment", "align_epochs"),
    ):
        lines = re.findall(rf"^{title}: (\d+) epochs in \d+ s; loss [\d.]+ -> [\d.]+$", log, re.MULTILINE)
        assert lines == [str(TINY_TEXT[epochs])], title
    history = json.loads((tiny_bundle["output_dir"] / "text_training" / "text_loss.json").read_text())
    (text_line,) = re.findall(r"^text model: .*$", log, re.MULTILINE)  # early stopping: its best validation loss
    assert re.fullmatch(
        rf"text model: {len(history['epoch_loss'])}( of {TINY_TEXT['text_epochs']})? epochs in \d+ s; loss "
        rf"{history['epoch_loss'][0]:.4f} -> {history['epoch_loss'][-1]:.4f}; best validation_loss [\d.]+ at epoch \d+",
        text_line,
    ), text_line
    metrics_file = tiny_bundle["output_dir"] / "text_metrics.json"
    test = json.loads(metrics_file.read_text())["test"]
    fused, paper = test["Med-SORA fused (retrieval + learned)"], test["Med-SORA"]
    assert f"text side on the corpus's test split ({test['queries']} queries):" in log
    assert (
        f"  fused (query's default)  Rank-1 {fused['Rank-1']:.3f}  Rank-3 {fused['Rank-3']:.3f}  class-wise mAP "
        f"{fused['mAP (class-wise)']:.3f}  out-of-domain AUROC {test['out-of-domain, fused']['AUROC']:.3f}"
    ) in log
    assert f"  paper's scorer           Rank-1 {paper['Rank-1']:.3f}" in log
    assert f"(every split, per-organ AP, out-of-domain operating points): {metrics_file}" in log


@pytest.mark.slow
def test_soft_labels_point_to_the_right_organ(tiny_bundle):
    encoder = HFTextEncoder()
    anchors = load_anchors(str(tiny_bundle["ckpt_dir"] / "text_anchors.pt"), encoder.dim, 7)
    unambiguous = {
        "liver": "Yellowing of the skin and eyes with dark urine and an enlarged tender liver edge.",
        "kidney": "Blood in the urine with flank pain and reduced urine output.",
        "stomach": "Vomiting blood and burning pain in the upper stomach after meals.",
    }
    labels = soft_labels(anchors, torch.as_tensor(encoder.encode(list(unambiguous.values()))))
    assert labels.min() >= 0.0 and labels.max() <= 1.0
    for row, organ in enumerate(unambiguous):
        assert ORGANS[int(labels[row].argmax())] == organ, (organ, labels[row])


@pytest.mark.slow
def test_query_file_contract(tiny_bundle, tmp_path):
    lines = [
        json.dumps({"text": "jaundice, dark urine and pale stools", "id": 7, "meta": {"ward": "A"}}),
        "not json at all",
        json.dumps({"id": 9}),
        json.dumps({"text": "   "}),
        json.dumps({"text": 42}),
        json.dumps(["text"]),
        None,  # invalid UTF-8, written as bytes below
        json.dumps({"text": "x" * (MAX_TEXT_CHARS + 1)}),
        json.dumps({"text": "sprained left knee after a football tackle, swelling over the joint"}),
    ]
    queries = tmp_path / "q.jsonl"
    queries.write_bytes(b"\n".join(b"\xff\xfe broken" if line is None else line.encode() for line in lines) + b"\n")
    out = tmp_path / "answers.jsonl"
    query(tiny_bundle, "--queries_file", queries, "--output_file", out)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) == len(lines)
    first, knee = answers[0], answers[-1]
    assert first["id"] == 7 and first["meta"] == {"ward": "A"} and first["text"].startswith("jaundice")
    for answer in (first, knee):
        assert list(answer["scores"]) == ORGANS
        assert all(0.0 <= s <= 1.0 for s in answer["scores"].values())
        assert answer["ranking"] == sorted(ORGANS, key=lambda o: (-answer["scores"][o], ORGANS.index(o)))
        assert isinstance(answer["in_domain"], bool) and "error" not in answer
    assert first["in_domain"] and not knee["in_domain"]
    assert max(knee["scores"].values()) < max(first["scores"].values())
    assert [item["organ"] for item in first["evidence"]] == [o for o in first["ranking"][:3] for _ in range(2)]
    for item in first["evidence"]:
        assert set(item) - {"lexical_similarity"} == {"text", "organ", "similarity", "provenance"}
        assert -1.0 <= item["similarity"] <= 1.0 and 0.0 <= item.get("lexical_similarity", 0.0) <= 1.0
        assert item["provenance"]["source"] and item["provenance"]["identifier"]
    errors = [a.get("error", "") for a in answers[1:-1]]
    assert "not JSON" in errors[0]
    assert "no 'text'" in errors[1] and answers[2]["id"] == 9
    assert "empty" in errors[2]
    assert "must be a string" in errors[3]
    assert "expected an object" in errors[4]
    assert "UTF-8" in errors[5]
    assert "characters long" in errors[6]
    assert all("scores" not in a for a in answers[1:-1])


@pytest.mark.slow
def test_single_text_prints_a_ranking(tiny_bundle):
    result = query(tiny_bundle, "--text", "vomiting blood and black tarry stools")
    assert "abdominal: yes" in result.stdout
    lines = result.stdout.splitlines()
    ranked = [line.split()[1] for line in lines if re.match(r"\s*[1-7]\. ", line)]
    assert sorted(ranked) == sorted(ORGANS)
    # a line of evidence under each of the three top organs: a corpus text, its similarity and its source
    for rank in (1, 2, 3):
        row = next(i for i, line in enumerate(lines) if re.match(rf"\s*{rank}\. ", line))
        line = r'\s+evidence: ".+" \(similarity -?[01]\.\d\d(, lexical [01]\.\d\d)?; (hpo|icd10cm|clinical) '
        assert re.match(line, lines[row + 1])


@pytest.mark.slow
def test_the_papers_scorer_is_one_override_away(tiny_bundle, tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"text": "vomiting blood and black tarry stools"}) + "\n")
    answers = {}
    for scorer in ("fused", "paper"):
        out = tmp_path / f"{scorer}.jsonl"
        query(tiny_bundle, "--queries_file", queries, "--output_file", out, "--query_scorer", scorer)
        answers[scorer] = json.loads(out.read_text())
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    aligner = load_weights(parser.get_parsed_content("aligner_def"), str(tiny_bundle["ckpt_dir"] / "alignment.pt"))
    expected = aligner.organ_scores(torch.as_tensor(HFTextEncoder().encode(["vomiting blood and black tarry stools"])))
    assert [answers["paper"]["scores"][o] for o in ORGANS] == pytest.approx(expected[0].tolist(), abs=1e-5)
    assert answers["fused"]["scores"] != answers["paper"]["scores"]
    assert answers["paper"]["evidence"] and answers["fused"]["evidence"]
    result = query(tiny_bundle, "--text", "nausea", "--query_scorer", "papers", check=False)
    assert result.returncode != 0 and "query_scorer must be one of ['fused', 'paper'], got 'papers'" in result.stderr


@pytest.mark.slow
def test_query_on_a_patient_ct_writes_probability_maps(tiny_bundle, tmp_path):
    phantom.generate_phantom_dataset(str(tmp_path / "ct"), num_cases=1, num_validation=0, seed=11)
    items = json.loads((tmp_path / "ct" / "dataset_0.json").read_text())["training"][0]
    image, label = str(tmp_path / "ct" / items["image"]), str(tmp_path / "ct" / items["label"])
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"text": "painless jaundice and weight loss"}) + "\n")
    out = tmp_path / "answers.jsonl"
    patient = ["--image", image, "--label", label, "--maps_dir", tmp_path / "maps"]
    query(tiny_bundle, "--queries_file", queries, "--output_file", out, *patient)
    answer = json.loads(out.read_text())
    prob = nib.load(answer["probability_map"])
    labels = nib.load(label)
    np.testing.assert_allclose(prob.affine, labels.affine, atol=1e-5)
    values, ids = prob.get_fdata(), np.rint(labels.get_fdata()).astype(int)
    assert np.allclose(values[ids == 6], answer["scores"]["liver"], atol=1e-6)
    assert np.allclose(values[np.isin(ids, [2, 3])], answer["scores"]["kidney"], atol=1e-6)
    assert np.all(values[np.isin(ids, [0, 5, 8, 9, 10])] == 0.0)
    assert open(answer["figure"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert answer["absent_organs"] == []


def test_missing_weights_name_the_file_and_the_command(tmp_path):
    empty = ["--ckpt_dir", tmp_path]
    result = run_bundle("run", "query", "--config_file", INFERENCE, *empty, "--text", "nausea", check=False)
    assert result.returncode != 0
    assert "alignment.pt not found" in result.stderr and "run train_text" in result.stderr


def test_anchor_margin_loss_matches_the_papers_formula():
    # one text of organ 0, two organs, m = 0.8: s+ = [0.5, 0.3], s- = [0.1, 0.6]
    sims = torch.tensor([[[0.5, 0.3], [0.1, 0.6]]])
    loss = AnchorMarginLoss(0.8)(sims, torch.tensor([0]))
    # organ 0 (P): max(0, .8-.5) + max(0, .1-.2) = 0.3; organ 1 (N): max(0, .8-.6) + max(0, .3-.2) = 0.3
    # organ 0 has no negative and organ 1 no positive text here: mean over organs of (0.3 + 0) and (0 + 0.3)
    assert float(loss) == pytest.approx(0.3)
    anchors = OrganAnchors(4, 2)
    assert anchors(torch.randn(3, 4)).shape == (3, 2, 2)


def test_label_modes_give_eq4_eq4_with_the_annotated_organ_at_1_or_one_hot():
    torch.manual_seed(0)
    anchors, embeddings, organs = OrganAnchors(8, 3), torch.randn(5, 8), torch.tensor([0, 1, 2, 2, 1])
    eq4 = soft_labels(anchors, embeddings)
    assert torch.equal(training_targets("soft", embeddings, organs, 3, anchors), eq4)
    annotated = training_targets("soft_annotated", embeddings, organs, 3, anchors)
    own = torch.nn.functional.one_hot(organs, 3).bool()
    assert torch.all(annotated[own] == 1.0) and torch.equal(annotated[~own], eq4[~own])
    assert torch.equal(annotated.argmax(dim=1), organs) and eq4.max() < 1.0
    assert torch.equal(training_targets("hard", embeddings, organs, 3), own.float())
    with pytest.raises(ValueError, match="'soft_annotated' needs trained organ anchors"):
        training_targets("soft_annotated", embeddings, organs, 3)
    with pytest.raises(ValueError, match=r"one of \['soft', 'soft_annotated', 'hard'\], got 'fuzzy'"):
        training_targets("fuzzy", embeddings, organs, 3, anchors)


def test_infonce_prefers_the_matching_organ():
    matched = torch.eye(3)[None] * 0.9
    shuffled = matched[:, [1, 2, 0]]
    loss = AlignmentInfoNCELoss(0.1, ["image_to_text", "text_to_image"])
    target = torch.arange(3)[None]
    assert float(loss(matched, target)) < 0.01 < float(loss(shuffled, target))


def test_inference_builds_the_text_model_the_text_stages_train():
    shared = ["text_encoder_def", "text_embedding_dim", "text_model_def", "domain_gate_def", "aligner_def"]
    text, inference = (yaml.safe_load(open(path)) for path in (TEXT, INFERENCE))
    assert {k: inference[k] for k in shared} == {k: text[k] for k in shared}

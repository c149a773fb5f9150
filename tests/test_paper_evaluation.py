"""The `evaluate` workflow: every table row trained per seed through the bundle's configs, summarised, reported."""

import json
import os
import re

import numpy as np
import pytest
from helpers import CONFIGS, EVALUATE, ORGANS, REPO_ROOT, TINY_IMAGE, TRAIN, cli, run_bundle

from medsora.evaluation.bm25 import bm25_organ_scores
from medsora.evaluation.grid import Alignment, ExperimentGrid
from medsora.evaluation.report import markdown_report, summarize, summarize_reports
from medsora.text.corpus import default_corpus_dir
from medsora.text.encoders import default_minilm_path

STRUCTURES = ["2D Only", "3D Only", "2D+3D (concat)", "2D+3D (cross-Attn)"]
TINY_SCHEDULE = {
    "epochs": 1,
    "val_interval": 1,
    "anchor_epochs": 3,
    "text_epochs": 3,
    "gate_epochs": 3,
    "align_epochs": 3,
}
FULL_LABELS = "soft_annotated_organ_at_1"  # the slug of the full model's Table 2 row, "Soft, annotated organ at 1"


def test_bm25_scores_each_organ_by_its_best_matching_training_text():
    train = [
        "yellow skin and dark urine",
        "flank pain with blood in the urine",
        "vomiting blood after meals",
        "burning upper abdominal pain after meals",
    ]
    labels = np.zeros((4, 3), dtype=bool)
    labels[0, 0] = labels[1, 1] = labels[2, 2] = labels[3, 2] = True  # organs: liver, kidney, stomach
    labels[1, 0] = True  # a multi-organ training text counts for both organs
    scores = bm25_organ_scores(train, labels, ["blood in urine and flank pain", "pain after meals", "zzz qqq"])
    assert scores.shape == (3, 3)
    assert scores[0, 1] == scores[0, 0] > scores[0, 2]  # the liver-and-kidney text scores for both organs
    assert scores[1].argmax() == 2
    np.testing.assert_array_equal(scores[2], 0.0)  # no known word: nothing scores
    with pytest.raises(ValueError, match=r"train_labels must be \(N, K\) for 4 texts"):
        bm25_organ_scores(train, labels[:2], ["x"])
    with pytest.raises(ValueError, match="every organ needs at least one training text"):
        bm25_organ_scores(train, np.c_[labels, np.zeros(4, dtype=bool)], ["x"])


def test_summaries_are_mean_and_sample_std_in_percent():
    s = summarize([0.5, 0.7, 0.9], 100.0)
    assert s["values"] == pytest.approx([50.0, 70.0, 90.0])
    assert s["mean"] == pytest.approx(70.0) and s["std"] == pytest.approx(20.0)  # ddof=1: sqrt((400+0+400)/2)
    assert summarize([0.25], 100.0) == {"mean": 25.0, "std": 0.0, "values": [25.0]}
    assert summarize([None, 0.5]) == {"mean": 0.5, "std": 0.0, "values": [0.5]}  # an undefined seed is skipped
    assert summarize([None])["mean"] is None
    reports = [{"Rank-1": 0.5, "mAP (class-wise)": 0.25}, {"Rank-1": 1.0, "mAP (class-wise)": 0.75}]
    table = summarize_reports(reports, ["Rank-1", "mAP (class-wise)"])
    assert table["Rank-1"]["mean"] == pytest.approx(75.0) and table["mAP (class-wise)"]["mean"] == pytest.approx(50.0)


def test_report_prints_the_papers_numbers_labelled_beside_ours():
    row = summarize_reports(
        [{"Rank-1": 0.5, "Rank-2": 0.6, "Rank-3": 0.7, "mAP (class-wise)": 0.4, "mAP (query-wise)": 0.45}] * 2
    )
    ood = {
        k: summarize([0.9, 0.8])
        for k in ("AUROC", "AUROC of P(abdominal)", "threshold", "in_domain_recall", "ood_rejection")
    }
    table = {
        "title": "Table 2",
        "caption": "c",
        "rows": {"Soft": row},
        "paper": {"Soft": {"Rank-1": 77.5, "mAP": 73.46}, "Other": {"Rank-1": 1.0}},
    }
    metrics = {
        "seeds": [3, 4],
        "test_queries": 10,
        "ood_test_queries": 5,
        "schedule": {"epochs": 1},
        "tables": {
            "labeling": table,
            "structure": table,
            "text_models": table,
            "out_of_domain": {"m": ood},
            "image": {
                "2D Only": {"accuracy": summarize([1.0]), "recall_per_organ": {o: summarize([1.0]) for o in ORGANS}}
            },
        },
    }
    report = markdown_report(metrics, {"Fig. 5": "figures/fig5.png"}, ORGANS)
    assert "Seeds: 3, 4" in report
    assert "| Soft | ours, 2 seed(s) | 50.0 ± 0.0 | 60.0 ± 0.0 | 70.0 ± 0.0 | 40.0 ± 0.0 | 45.0 ± 0.0 |" in report
    assert "| Soft | **paper** | 77.50 | – | – | 73.46 | – |" in report
    assert "| Other | **paper** | 1.00 |" in report  # paper rows we do not reproduce are still listed
    assert "| m | 0.850 ± 0.071 |" in report
    assert "![Fig. 5](figures/fig5.png)" in report


def grid(tmp_path, **changes):
    values = dict(
        configs_dir=CONFIGS,
        work_dir=str(tmp_path),
        seeds=[0, 1],
        image_structures={s: None for s in STRUCTURES},
        labelings={"Hard": "hard", "Soft": "soft"},
        text_encoders={"MiniLM": {}, "Other": {"path": "/models/other"}},
        default_structure="2D+3D (cross-Attn)",
        default_labeling="Soft",
        default_encoder="MiniLM",
        overrides={"epochs": 1},
    )
    return ExperimentGrid(**{**values, **changes})


def test_grid_trains_each_row_once_and_shares_the_full_model(tmp_path):
    g = grid(tmp_path)
    rows = g.alignments(1)
    full = Alignment(1, "2D+3D (cross-Attn)", "MiniLM", "Soft")
    assert rows.count(full) == 1 and len(rows) == 4 + 1 + 1  # structures, hard labels, the other encoder
    assert {a.structure for a in rows} == set(STRUCTURES)
    overrides = g.run_overrides(str(tmp_path / "run"), 1, "Other", "Hard")
    assert overrides["seed"] == overrides["text_seed"] == 1 and overrides["epochs"] == 1
    assert overrides["text_encoder_def#path"] == "/models/other" and overrides["label_mode"] == "hard"
    assert overrides["ckpt_dir"] == str(tmp_path / "run" / "models")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"default_structure": "4D"}, r"evaluation#default_structure '4D' is not one of"),
        ({"seeds": []}, "evaluation#seeds is empty"),
        ({"labelings": {"Hard": "hard", "Soft": "fuzzy"}}, r"label_mode must be one of \[.*\], got 'fuzzy'"),
    ],
)
def test_grid_refuses_a_bad_configuration(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        grid(tmp_path, **changes)


def run_evaluate(root, *extra):
    data = {"phantom_dir": root / "phantom", "output_dir": root / "eval", "corpus_dir": root / "corpus"}
    tiny = {key: value for key, value in TINY_IMAGE.items() if key != "epochs"}  # the schedule sets the epochs
    grid = {"evaluation#seeds": [0, 1], "evaluation#schedule": TINY_SCHEDULE}
    encoder = {"evaluation#text_encoders#MiniLM_CLS": {"path": default_minilm_path(), "pooling": "cls"}}
    overrides = cli({**data, **tiny, "text_cache_dir": root / "cache", **grid, **encoder})
    result = run_bundle("run", "evaluate", "--config_file", str([TRAIN, EVALUATE]), *overrides, *extra, timeout=1200)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The whole evaluation on a tiny phantom and every twelfth line of the shipped corpus, two seeds, run twice."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "corpus").mkdir()
    for name in os.listdir(default_corpus_dir()):
        if name.endswith(".jsonl"):
            lines = open(os.path.join(default_corpus_dir(), name), encoding="utf-8").read().splitlines()
            (root / "corpus" / name).write_text("\n".join(lines[::12]) + "\n", encoding="utf-8")
    first = run_evaluate(root)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    again = run_evaluate(root)
    return {
        "root": root,
        "log": first,
        "again": again,
        "metrics": metrics,
        "metrics_again": json.loads((root / "eval" / "metrics.json").read_text()),
    }


@pytest.mark.slow
def test_every_row_is_trained_for_every_seed(evaluated):
    log, tables = evaluated["log"], evaluated["metrics"]["tables"]
    for seed in (0, 1):
        for structure in ("2d_only", "3d_only", "2d_3d_concat", "2d_3d_cross_attn"):
            assert f"[evaluate] training: seed{seed}/image/{structure}" in log
        for text in ("minilm-hard", "minilm-soft", f"minilm-{FULL_LABELS}", f"minilm_cls-{FULL_LABELS}"):
            assert f"[evaluate] train_text_model: seed{seed}/text/{text}" in log
    assert evaluated["metrics"]["seeds"] == [0, 1]
    assert list(tables["labeling"]["rows"]) == ["Hard", "Soft", "Soft, annotated organ at 1"]
    assert list(tables["structure"]["rows"]) == STRUCTURES
    assert list(tables["text_models"]["rows"]) == [
        "MiniLM* (zero-shot: query vs. organ name)",
        "MiniLM_CLS* (zero-shot: query vs. organ name)",
        "BM25 over the training texts",
        "MiniLM: text head alone (no image)",
        "Med-SORA (ours)",
        "MiniLM_CLS: text head alone (no image)",
        "MiniLM_CLS",
    ]
    assert list(tables["clinician_queries"]["rows"]) == [
        f"{model}, {labels} labels"
        for labels in ("Hard", "Soft", "Soft, annotated organ at 1")
        for model in ("Med-SORA", "text head alone")
    ]
    for table in ("labeling", "structure", "text_models", "clinician_queries"):
        for row in tables[table]["rows"].values():
            for metric in ("Rank-1", "Rank-2", "Rank-3", "mAP (class-wise)", "mAP (query-wise)"):
                summary = row[metric]
                assert len(summary["values"]) == 2 and all(0.0 <= v <= 100.0 for v in summary["values"])
                assert summary["mean"] == pytest.approx(np.mean(summary["values"]))
                assert summary["std"] == pytest.approx(np.std(summary["values"], ddof=1))
            for low, high in (("Rank-1", "Rank-2"), ("Rank-2", "Rank-3")):
                assert all(a <= b for a, b in zip(row[low]["values"], row[high]["values"]))


@pytest.mark.slow
def test_the_full_model_is_one_run_shared_by_the_tables_and_matches_its_own_metrics(evaluated):
    root, tables = evaluated["root"], evaluated["metrics"]["tables"]
    full = tables["labeling"]["rows"]["Soft, annotated organ at 1"]
    assert tables["structure"]["rows"]["2D+3D (cross-Attn)"] == full == tables["text_models"]["rows"]["Med-SORA (ours)"]
    for index, seed in enumerate((0, 1)):
        run = root / "eval" / "experiments" / f"seed{seed}" / "align" / f"2d_3d_cross_attn-minilm-{FULL_LABELS}"
        own = json.loads((run / "eval" / "text_metrics.json").read_text())["test"]
        assert full["Rank-1"]["values"][index] == pytest.approx(100 * own["Med-SORA"]["Rank-1"])
        ood = tables["out_of_domain"]["Med-SORA (ours)"]
        assert ood["AUROC"]["values"][index] == pytest.approx(own["out-of-domain"]["AUROC"])
    zero_shot = tables["text_models"]["rows"]["MiniLM* (zero-shot: query vs. organ name)"]
    assert zero_shot["Rank-1"]["std"] == 0.0  # no training: the seed changes nothing
    image = tables["image"]
    assert list(image) == STRUCTURES and list(image["2D Only"]["recall_per_organ"]) == ORGANS
    assert json.loads((root / "eval" / "image_metrics.json").read_text())["samples"] == 2 * 7


@pytest.mark.slow
def test_report_has_every_table_the_papers_numbers_and_the_figures(evaluated):
    root = evaluated["root"]
    report = (root / "eval" / "report.md").read_text()
    for title in (
        "Table 2: hard vs. soft labelling",
        "Table 3: 2D / 3D image feature fusion",
        "Table 4: text models and baselines",
        "Clinician-phrased queries, per labelling",
        "Out-of-domain rejection",
        "Image side",
    ):
        assert title in report
    assert "Seeds: 0, 1" in report
    assert "| Soft | **paper** | 77.50 | 89.64 | 94.85 | 73.46 | – |" in report
    assert "| 3D Only | **paper** | 33.21 | 60.00 | 74.29 | 39.60 | – |" in report
    assert "| PubMedBERT | **paper** | 74.29 | 85.00 | 90.71 | 71.65 | – |" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    names = {os.path.basename(link) for link in links}
    assert {
        "fig5_text_features.png",
        "fig6_organ_correlation.png",
        "fig6_queries_vs_organs.png",
        "fig7_fusion_attention.png",
    } <= names
    assert sum(name.startswith("img") for name in names) == 4  # the four example queries on a validation CT
    for link in links:
        with open(root / "eval" / link, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", link
    answers = [json.loads(line) for line in (root / "eval" / "figures" / "fig7_answers.jsonl").read_text().splitlines()]
    assert [a["text"] for a in answers][-1] == "Pain in the knee joint" and len(answers) == 4
    assert all(os.path.isfile(a["probability_map"]) for a in answers)


@pytest.mark.slow
def test_a_second_run_resumes_from_the_finished_runs(evaluated):
    assert "[evaluate] training" not in evaluated["again"] and "[evaluate] align" not in evaluated["again"]
    assert evaluated["metrics_again"]["tables"] == evaluated["metrics"]["tables"]


def test_the_commands_data_and_label_convention_reach_every_run(tmp_path):
    """`--dataset_dir` and `--label_convention` given to `evaluate` are what every retrained row reads."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([TRAIN, EVALUATE])
    parser["bundle_root"] = os.path.join(REPO_ROOT, "bundle")
    parser["dataset_dir"], parser["label_convention"] = str(tmp_path / "TotalSegmentator_cts"), "totalsegmentator"
    parser["datalist_file"] = "unused"  # the data itself is read by the runs, not here
    g = parser.get_parsed_content("evaluation#grid")
    overrides = g.run_overrides(str(tmp_path / "run"), 2)
    assert overrides["dataset_dir"] == str(tmp_path / "TotalSegmentator_cts")
    assert overrides["label_convention"] == "totalsegmentator"
    assert overrides["label_conventions"]["totalsegmentator"]["organ_labels"]["liver"] == [5]
    assert overrides["epochs"] == parser["evaluation"]["schedule"]["epochs"]
    assert g.seeds == [0, 1, 2] and g.default == Alignment(
        -1, "2D+3D (cross-Attn)", "MiniLM", "Soft, annotated organ at 1"
    )
    files = g.config_files("3D Only", "text.yaml")
    assert [os.path.basename(f) for f in files] == ["train.yaml", "text.yaml", "3d_only.yaml"]

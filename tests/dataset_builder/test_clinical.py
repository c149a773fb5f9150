"""Clinician-phrased training texts from the presentation table: checked table, deterministic, training only."""

import json
import os

import pytest

from dataset_builder import clinical
from dataset_builder.config import DEFAULT_CONFIG, load_config

CORPUS = os.path.join(os.path.dirname(clinical.__file__), "corpus")


@pytest.fixture(scope="module")
def cfg():
    return load_config(DEFAULT_CONFIG)


def test_table_covers_every_organ(cfg):
    table = clinical.load_table(organs=cfg["organs"])
    assert all(len(table["organs"][organ]) >= 15 for organ in cfg["organs"])
    assert len(table["out_of_domain"]) >= 5


def test_bad_table_names_the_file_and_the_organ(tmp_path, cfg):
    bad = tmp_path / "table.yaml"
    bad.write_text("organs:\n  liver: [jaundice]\n")
    with pytest.raises(ValueError, match=r"table.yaml: organ 'liver' needs a list of at least 15"):
        clinical.load_table(str(bad), cfg["organs"])


def test_generation_is_deterministic_and_published(tmp_path, cfg):
    counts = clinical.run(cfg, str(tmp_path))
    assert counts["clinical_train"] == {organ: cfg["clinical"]["texts_per_organ"] for organ in cfg["organs"]}
    for name in ("clinical_train.jsonl", "clinical_ood_train.jsonl"):
        assert (tmp_path / name).read_bytes() == open(os.path.join(CORPUS, name), "rb").read(), name


def test_texts_are_distinct_training_only_and_disjoint_from_the_test_files(cfg):
    inside, outside = clinical.clinical_records(cfg)
    texts = [r["text"] for r in inside + outside]
    assert len(set(t.lower() for t in texts)) == len(texts)
    assert {r["organ"] for r in inside} == set(cfg["organs"]) and all(not r["labels"] for r in outside)
    published = set()
    for name in ("test.jsonl", "ood_test.jsonl"):
        with open(os.path.join(CORPUS, name), encoding="utf-8") as f:
            published |= {json.loads(line)["text"].lower() for line in f}
    assert not published & {t.lower() for t in texts}
    assert all(r["group"].startswith("clinical:") and r["provenance"]["findings"] for r in inside + outside)

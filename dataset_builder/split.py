"""Stage 6, split: train/test 8:2 per organ, grouped by source, with the leakage filter on test.

Groups (an HPO term, an OMIM disease, an ICD code, a PubMed abstract, a Wikipedia section) are
assigned to one split for the whole corpus, so paraphrases of one source never straddle train and
test, even across organs. Test groups are chosen first, from texts that pass the leakage filter,
the groups whose findings point most strongly to the organ first; within a split, texts are
taken round-robin over groups so that as many sources as possible appear.

Out-of-domain (non-abdominal) texts that pass the same leakage filter are taken round-robin over
their branches: ood_test first, from the records not reserved for training; then ood_train, for
training and calibrating an out-of-domain detector, from the groups ood_test does not use (so the
two share no HPO term, hence no text) and the records reserved for it, without the texts that name
an abdominal or pelvic region (`ood_train_exclude_patterns`: a detector must not learn that flank
or groin pain is out of domain).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

from .io import read_jsonl, write_jsonl
from .provenance import sha256

TRAIN_KEYS = ("id", "text", "organ", "source", "group", "provenance")
TEST_KEYS = ("id", "text", "organ", "labels", "source", "group", "provenance")
OOD_KEYS = ("id", "text", "labels", "domain", "branch", "source", "group", "provenance")


def leakage_regex(patterns: dict[str, list[str]]) -> re.Pattern[str]:
    """One case-insensitive pattern matching any organ name, synonym or stem from the config."""
    return re.compile("|".join(p for organ in patterns for p in patterns[organ]), re.IGNORECASE)


def round_robin(groups: list[list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
    """First text of every group, then the second of every group, ... up to `limit` texts."""
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < limit and any(depth < len(g) for g in groups):
        out += [g[depth] for g in groups if depth < len(g)][: limit - len(out)]
        depth += 1
    return out


def informative(texts: list[dict[str, Any]]) -> float:
    """How strongly a group's texts point to their organ (see generate.specificity), to one decimal."""
    return round(max(t.get("specificity") or 0.0 for t in texts), 1)


def split(records: list[dict[str, Any]], cfg: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """train, test, ood_test and ood_train records plus the counts of what was left out and why."""
    scfg = cfg["split"]
    leaks = leakage_regex(scfg["leakage_patterns"]) if scfg["leakage_filter"] else None
    min_lift = float(scfg["test_min_lift"])
    order = lambda group: sha256(f"{cfg['seed']}:{group}")  # noqa: E731 - seeded, stable group order
    by_organ: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["domain"] == "organ":
            by_organ[r["organ"]][r["group"]].append(r)
    test_groups: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {"train": [], "test": [], "ood_test": [], "ood_train": []}
    dropped: Counter[str] = Counter()
    available = {o: sum(map(len, by_organ[o].values())) for o in cfg["organs"]}
    targets = {}
    for organ in cfg["organs"]:
        total = min(available[organ], int(scfg["texts_per_organ"]))
        n_test = round(total * float(scfg["test_fraction"]))
        targets[organ] = (total - n_test, n_test)
        groups = sorted(
            by_organ[organ], key=lambda g: (g not in test_groups, -informative(by_organ[organ][g]), order(g))
        )
        chosen, clean = [], 0
        for group in groups:
            if clean >= n_test and group not in test_groups:
                break
            texts = by_organ[organ][group]
            leaky = [r for r in texts if leaks and leaks.search(r["text"])]
            vague = [r for r in texts if r not in leaky and r.get("specificity", min_lift) < min_lift]
            passing = [r for r in texts if r not in leaky and r not in vague]
            if not passing and group not in test_groups:
                continue  # nothing this source says is usable for test: leave it to train
            test_groups.add(group)
            dropped["leakage (test names an organ)"] += len(leaky)
            dropped["weakly organ-specific (test)"] += len(vague)
            chosen.append(passing)
            clean += len(passing)
        picked = round_robin(chosen, n_test)
        dropped["test group surplus"] += clean - len(picked)
        out["test"] += picked
    for organ in cfg["organs"]:
        groups = sorted((g for g in by_organ[organ] if g not in test_groups), key=order)
        pool = [by_organ[organ][g] for g in groups]
        picked = round_robin(pool, targets[organ][0])
        dropped["over the per-organ cap"] += sum(map(len, pool)) - len(picked)
        out["train"] += picked
    ood: dict[str, list[dict[str, Any]]] = defaultdict(list)
    reserved: dict[str, list[dict[str, Any]]] = defaultdict(list)  # for ood_train only
    for r in records:
        if r["domain"] == "ood":
            if leaks and leaks.search(r["text"]):
                dropped["leakage (ood names an organ)"] += 1
            else:
                (reserved if r.get("reserved_for") else ood)[r["branch"]].append(r)
    by_group = lambda texts: sorted(texts, key=lambda r: order(r["group"]))  # noqa: E731
    out["ood_test"] = round_robin([by_group(ood[b]) for b in sorted(ood)], int(scfg["ood_texts"]))
    held_out = {r["group"] for r in out["ood_test"]}
    near = scfg.get("ood_train_exclude_patterns") or []
    near_abdomen = re.compile("|".join(near), re.IGNORECASE) if near else None
    pool: dict[str, list[dict[str, Any]]] = {}
    for b in sorted(set(ood) | set(reserved)):
        pool[b] = [r for r in ood.get(b, []) + reserved.get(b, []) if r["group"] not in held_out]
        if near_abdomen:
            kept = [r for r in pool[b] if not near_abdomen.search(r["text"])]
            dropped["abdominal or pelvic region (ood_train)"] += len(pool[b]) - len(kept)
            pool[b] = kept
    out["ood_train"] = round_robin([by_group(pool[b]) for b in pool], int(scfg.get("ood_train_texts") or 0))
    dropped["ood_train surplus"] += sum(map(len, pool.values())) - len(out["ood_train"])
    return out, {
        "available_after_dedup": available,
        "ood_train_available": {b: len(pool[b]) for b in pool},
        "dropped": dict(sorted(dropped.items())),
        "test_groups": len(test_groups),
    }


def project(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The published fields of a record."""
    return {k: record[k] for k in keys if k in record}


def run(cfg: dict[str, Any], in_path: str, out_dir: str) -> dict[str, Any]:
    """Write train, test, ood_test and ood_train.jsonl; returns counts per organ (per branch for ood) and split."""
    import os

    parts, info = split(read_jsonl(in_path), cfg)
    keys = {"train": TRAIN_KEYS, "test": TEST_KEYS, "ood_test": OOD_KEYS, "ood_train": OOD_KEYS}
    for name, records in parts.items():
        write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), (project(r, keys[name]) for r in records))
    counts = {name: dict(Counter(r["organ"] for r in parts[name])) for name in ("train", "test")}
    counts = {name: {o: counts[name].get(o, 0) for o in cfg["organs"]} for name in counts}
    for name in ("ood_test", "ood_train"):
        counts[name] = dict(sorted(Counter(r["branch"] for r in parts[name]).items()))
    multi = sum(len(r["labels"]) > 1 for r in parts["test"])
    return {"counts": counts, "test_multi_label": multi, **info}

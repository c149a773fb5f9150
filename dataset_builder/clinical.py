"""Training texts in clinician phrasing, composed from the project's table of classic presentations.

The ontology-derived corpus names findings the way HPO and ICD-10-CM do ("Hemobilia", "Abnormal coagulation
profile"); clinicians write "3 days of epigastric pain radiating to the back, lipase 5x ULN". This source composes
2-3 findings of one organ (sometimes with a nonspecific one and a patient description) in the styles of clinical
notes, deterministically from a seed. Non-abdominal presentations are composed the same way, so that the
out-of-domain gate does not learn clinical style itself as a sign of the abdomen. Both are published as their own
files, ``clinical_train.jsonl`` and ``clinical_ood_train.jsonl``, for training only: the test files stay the
ontology-derived ones, written independently of this table.
"""

from __future__ import annotations

import os
import random
from typing import Any

import yaml

from .io import write_jsonl
from .provenance import sha256

DEFAULT_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "knowledge", "clinical_presentations.yaml")

STYLES = (
    "{who} with {findings}.",
    "{who}, presenting with {findings}.",
    "Presents with {findings}.",
    "c/o {findings}.",
    "{who}. History: {findings}.",
    "On examination and work-up: {findings}.",
    "{who} reports {findings}.",
    "Referred with {findings}.",
    "{findings}.",
    "Seen in clinic for {findings}.",
)
PATIENTS = (
    "A 54-year-old man",
    "A 38-year-old woman",
    "67F",
    "45M",
    "An elderly patient",
    "A 29-year-old",
    "72-year-old man",
    "A middle-aged woman",
    "60M",
    "A 33-year-old man",
)


def load_table(path: str = DEFAULT_TABLE, organs: list[str] | None = None) -> dict[str, Any]:
    """Read and check the presentation table: every organ listed, each with at least 15 findings."""
    with open(path, encoding="utf-8") as f:
        table = yaml.safe_load(f)
    if not isinstance(table, dict) or not isinstance(table.get("organs"), dict):
        raise ValueError(f"{path}: expected a mapping with an 'organs' mapping of organ -> findings.")
    for organ in organs or list(table["organs"]):
        findings = table["organs"].get(organ)
        if not isinstance(findings, list) or len(findings) < 15 or not all(isinstance(x, str) and x for x in findings):
            raise ValueError(f"{path}: organ {organ!r} needs a list of at least 15 non-empty findings.")
    if not all(isinstance(x, str) and x for x in table.get("shared", [])):
        raise ValueError(f"{path}: 'shared' must be a list of non-empty findings.")
    for branch, findings in (table.get("out_of_domain") or {}).items():
        if not isinstance(findings, list) or len(findings) < 3 or not all(isinstance(x, str) and x for x in findings):
            raise ValueError(f"{path}: out_of_domain branch {branch!r} needs a list of at least 3 findings.")
    return table


def _phrase(finding: str, rng: random.Random) -> str:
    """One of a finding's ``|``-separated phrasings."""
    return rng.choice([p.strip() for p in finding.split("|")])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def compose(pool: list[str], table: dict[str, Any], rng: random.Random, shared: bool = True) -> tuple[str, list[str]]:
    """One text from a pool of findings and the entries it uses (the first is the text's primary finding)."""
    findings = rng.sample(pool, min(len(pool), rng.choice((2, 2, 3, 3, 4))))
    parts = [_phrase(f, rng) for f in findings]
    if shared and table.get("shared") and rng.random() < 0.35:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(table["shared"]))
    text = rng.choice(STYLES).format(who=rng.choice(PATIENTS), findings=_join(parts))
    return text[0].upper() + text[1:], findings


def _records(
    pools: dict[str, list[str]],
    count: int,
    table: dict[str, Any],
    rng: random.Random,
    version: str,
    identifier: str,
    domain: str,
) -> list[dict[str, Any]]:
    """``count`` distinct texts per pool (an organ, or a body system for out-of-domain texts)."""
    records, seen = [], set()
    for name, pool in pools.items():
        made, attempts = 0, 0
        while made < count and attempts < 50 * count:
            attempts += 1
            text, findings = compose(pool, table, rng, shared=domain == "organ")
            if text.lower() in seen:
                continue
            seen.add(text.lower())
            made += 1
            key = "organ" if domain == "organ" else "branch"
            record = {
                "id": sha256(f"clinical:{name}:{text}")[:16],
                "text": text,
                key: name,
                "source": "clinical",
                "group": f"clinical:{name}:{sha256(findings[0])[:12]}",
                "provenance": {
                    "source": "clinical",
                    "method": "offline-templates",
                    "findings": findings,
                    "identifier": identifier,
                    "version": f"table sha256 {version}",
                },
            }
            if domain == "ood":
                record.update(labels=[], domain="ood")
            records.append(record)
    return records


def clinical_records(cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training records per organ and out-of-domain training records per body system, with provenance.

    Records are grouped by their primary finding, so a held-out split by group never sees that finding in training.
    """
    ccfg = cfg["clinical"]
    path = ccfg.get("table") or DEFAULT_TABLE
    table = load_table(path, cfg["organs"])
    with open(path, encoding="utf-8") as f:
        version = sha256(f.read())[:16]
    rng = random.Random(f"{cfg['seed']}:clinical")
    identifier = os.path.basename(path)
    organs = {organ: table["organs"][organ] for organ in cfg["organs"]}
    inside = _records(organs, int(ccfg["texts_per_organ"]), table, rng, version, identifier, "organ")
    outside = _records(
        table.get("out_of_domain") or {}, int(ccfg["ood_texts_per_branch"]), table, rng, version, identifier, "ood"
    )
    return inside, outside


def run(cfg: dict[str, Any], out_dir: str) -> dict[str, dict[str, int]]:
    """Write ``clinical_train.jsonl`` and ``clinical_ood_train.jsonl`` into ``out_dir``; returns the counts."""
    inside, outside = clinical_records(cfg)
    write_jsonl(os.path.join(out_dir, "clinical_train.jsonl"), inside)
    write_jsonl(os.path.join(out_dir, "clinical_ood_train.jsonl"), outside)
    count = lambda records, key: {n: sum(r[key] == n for r in records) for n in dict.fromkeys(r[key] for r in records)}  # noqa: E731
    return {"clinical_train": count(inside, "organ"), "clinical_ood_train": count(outside, "branch")}

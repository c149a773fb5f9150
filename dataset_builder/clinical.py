"""Training texts in clinician and patient phrasing, composed from the project's table of presentations.

The ontology-derived corpus names findings the way HPO and ICD-10-CM catalogue them ("Hemobilia"); people write
"54M, 3 days of epigastric pain radiating to the back, lipase 5x ULN" or "I've had pain under my right ribs after
fatty food". Each text leads with one finding of an organ (every finding in turn, in a seeded order), adds one to
three findings of the same presentation (``conditions`` in the table), sometimes a nonspecific one, and a patient:
a child, a pregnant woman, an injured or an operated patient when the leading finding's category says so. It is
written in one of three registers: terse notes, clinical sentences, a patient's own words. Non-abdominal texts are
composed the same way per body system, so that the out-of-domain gate does not learn the style itself as a sign of
the abdomen. Both files, ``clinical_train.jsonl`` and ``clinical_ood_train.jsonl``, are for training only: the test
files stay the ontology-derived ones, written independently of this table.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from typing import Any

from .io import write_jsonl
from .presentations import CONTEXTS, DEFAULT_TABLE, SEXES, Finding, Table, hpo_phrasings, load_table
from .provenance import sha256
from .sources.hpo import hpo_version, load_ontology

REGISTERS = ("terse", "clinical", "lay")
TEMPLATES = {
    # {who}: the patient; {findings}: all findings; {first}, {rest}: the leading one and the others
    "terse": {
        "who": ("{who}: {findings}.", "{who} c/o {findings}.", "{who}. {Findings}.", "{who} w/ {findings}."),
        "plain": ("C/o {findings}.", "{findings}.", "PC: {findings}.", "Hx: {findings}."),
    },
    "clinical": {
        "who": (
            "{who} presents with {findings}.",
            "{who} is referred with {findings}.",
            "{who} with {findings}.",
            "{who} is admitted with {findings}.",
        ),
        "plain": (
            "Presents with {findings}.",
            "Seen in clinic for {findings}.",
            "Admitted with {findings}.",
            "Referred by the GP with {findings}.",
            "On examination and work-up: {findings}.",
        ),
        "multi": ("History of {first}, now with {rest}.", "Presenting with {first}; work-up shows {rest}."),
    },
    # a patient's own message: the findings are fragments ("went yellow", "pain under the right ribs")
    "lay": {
        "who": (
            "{who}: {findings}.",
            "{who} - {findings}. What could it be?",
            "{who}. {Findings}, should I be worried?",
        ),
        "plain": ("{Findings}. What could this be?", "{Findings} - should I be worried?", "Help please: {findings}."),
    },
}
# Without a patient's own words for a test result, the patient reports the test.
LAY_RESULT = {"laboratory": "tests showing {}", "imaging": "a scan showing {}"}
# A phrasing that already says who the patient is takes no patient description.
NAMES_PATIENT = re.compile(
    r"\b(man|woman|men|women|boy|girl|child|children|infant|baby|newborn|neonate|toddler|teenager|adolescent|"
    r"elderly|older|young|adult|\w+-(day|week|month|year)-old|aged|age of|over \d+|under \d+|in his|in her|"
    r"bodybuilder|pregnan\w*|trimester|gestation|postpartum|delivery|breastfeeding|\d+ weeks)\b",
    re.IGNORECASE,
)
TERSE_JOIN = (", ", "; ")
HPO_SHARE = 0.25  # how often an HPO name or synonym stands for the table's own phrasing
SHARED_SHARE = 0.3  # how often a nonspecific finding joins an organ's text
CHILD_AGES = ((10, "day"), (5, "week"), (4, "month"), (9, "month"), (2, "year"), (3, "year"), (6, "year"), (9, "year"))
CHILD_AGES += ((13, "year"), (15, "year"))
CLINICAL = ("symptom", "sign", "named_sign", "laboratory", "imaging", "complication")
SIZES = (2, 2, 3, 3, 4)  # findings of the organ per text
OOD_SIZES = (1, 1, 1, 2)  # a body system's findings are mostly separate complaints


def _join(parts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def patient(context: str | None, sex: str | None, register: str, rng: random.Random) -> str:
    """A patient description in the register's words: an adult, or the context's patient."""
    female = (sex or ("female" if context == "pregnancy" else rng.choice(SEXES))) == "female"
    letter, person = ("F", "woman") if female else ("M", "man")
    if context == "paediatric":
        age, unit = rng.choice(CHILD_AGES)
        child = ("girl" if female else "boy") if unit == "year" else "baby " + ("girl" if female else "boy")
        return {
            "terse": f"{age}yo {child}" if unit == "year" else f"{age}{unit[0]} {letter}",
            "clinical": f"A {age}-{unit}-old {child}",
            "lay": f"My {age}-{unit}-old {'daughter' if female else 'son'}",
        }[register]
    age = rng.randint(19, 43) if context == "pregnancy" else rng.randint(19, 88)
    article = "An" if 80 <= age < 90 else "A"
    if context == "pregnancy":
        weeks = rng.choice((8, 12, 20, 26, 30, 34, 37))
        return {
            "terse": f"{age}F, {weeks}/40",
            "clinical": f"{article} {age}-year-old woman at {weeks} weeks' gestation",
            "lay": f"{weeks} weeks pregnant",
        }[register]
    if context == "trauma":
        return {
            "terse": f"{age}{letter}, trauma call",
            "clinical": f"{article} {age}-year-old {person} brought in after an accident",
            "lay": "Since an accident yesterday",
        }[register]
    if context == "post_operative":
        day = rng.randint(2, 10)
        return {
            "terse": f"{age}{letter} POD{day}",
            "clinical": f"{article} {age}-year-old {person} on day {day} after surgery",
            "lay": f"{day} days after my operation",
        }[register]
    return {
        "terse": f"{age}{letter}",
        "clinical": f"{article} {age}-year-old {person}",
        "lay": rng.choice((f"I'm {article.lower()} {age}-year-old {person}", f"{age}-year-old {person} here")),
    }[register]


def phrase(finding: Finding, register: str, hpo: dict[str, list[str]], rng: random.Random) -> str:
    """One phrasing of a finding in a register; sometimes its HPO name or a synonym instead."""
    extra = hpo.get(finding.hpo or "", [])
    if register == "lay" and finding.lay:
        return rng.choice(finding.lay)
    if extra and rng.random() < HPO_SHARE:
        text = rng.choice(extra)
    else:
        text = rng.choice(finding.clinical)
    if register == "lay" and finding.category in LAY_RESULT:
        return LAY_RESULT[finding.category].format(text)
    return text


def names_patient(finding: Finding) -> bool:
    """Whether one of the finding's phrasings says who the patient is ("in an older man", "at 32 weeks")."""
    return any(NAMES_PATIENT.search(p) for p in finding.phrasings)


def _fits(candidate: Finding, lead: Finding, chosen: list[Finding], conditions: set[str]) -> bool:
    """Whether a finding can join a text: the same patient, sex and presentation as the findings chosen so far.

    A text led by a patient context (a child, a pregnancy, an injury, an operation) takes only clinical findings
    (and, after an injury, further injuries) of the lead's presentation, or of none when the lead has none; any other
    text takes no patient context. Two findings that each say who the patient is are not combined.
    """
    shares = bool(conditions & set(candidate.conditions))
    if candidate in chosen or (names_patient(candidate) and any(map(names_patient, chosen))):
        return False
    if lead.category in CONTEXTS:
        allowed = CLINICAL + (("trauma",) if lead.category == "trauma" else ())
        if candidate.category not in allowed or not (shares if lead.conditions else not candidate.conditions):
            return False
    elif candidate.category in CONTEXTS:
        return False
    if candidate.sex and any(f.sex and f.sex != candidate.sex for f in chosen):
        return False
    return not conditions or not candidate.conditions or shares


def combine(lead: Finding, pool: list[Finding], size: int, rng: random.Random) -> list[Finding]:
    """The leading finding and up to ``size - 1`` others that present with it: those sharing one of its conditions
    first, then findings of no particular presentation."""
    chosen = [lead]
    conditions = set(lead.conditions)
    while len(chosen) < size:
        fitting = [f for f in pool if _fits(f, lead, chosen, conditions)]
        if not fitting:
            break
        related = [f for f in fitting if conditions & set(f.conditions)]
        pick = rng.choice(related if related and rng.random() < 0.7 else fitting)
        conditions = conditions or set(pick.conditions)
        chosen.append(pick)
    return chosen


def render(
    findings: list[Finding], extra: Finding | None, register: str, hpo: dict[str, list[str]], rng: random.Random
) -> str:
    """A text of the findings (the first leads) and an optional nonspecific finding, in a register."""
    parts = [phrase(f, register, hpo, rng) for f in findings]
    if extra is not None:
        parts.insert(rng.randint(1, len(parts)), phrase(extra, register, hpo, rng))
    lead = findings[0]
    sexes = {f.sex for f in findings if f.sex}
    who = None
    named = any(map(names_patient, findings)) or any(map(NAMES_PATIENT.search, parts))
    if not named and (lead.category in CONTEXTS or rng.random() < 0.8):
        context = lead.category if lead.category in CONTEXTS else None
        who = patient(context, next(iter(sexes), None), register, rng)
    styles = TEMPLATES[register]
    options = list(styles["who"] if who else styles["plain"])
    if len(parts) > 1 and "multi" in styles and who is None:
        options += styles["multi"]
    template = rng.choice(options)
    joined = rng.choice(TERSE_JOIN).join(parts) if register == "terse" else _join(parts)
    rest = _join(parts[1:]) if len(parts) > 1 else ""
    text = template.format(who=who, findings=joined, Findings=joined[0].upper() + joined[1:], first=parts[0], rest=rest)
    return text[0].upper() + text[1:]


def compose(
    section: str,
    findings: list[Finding],
    shared: list[Finding],
    count: int,
    sizes: tuple[int, ...],
    hpo: dict[str, list[str]],
    seed: str,
) -> list[tuple[str, list[Finding], str]]:
    """``count`` distinct texts of one organ or body system: (text, findings used, register).

    Every finding leads in turn, in a seeded order, so each leads about ``count / len(findings)`` texts.
    """
    rng = random.Random(f"{seed}:clinical:{section}")
    order = rng.sample(findings, len(findings))
    out, seen = [], set()
    for attempt in range(50 * count):
        if len(out) == count:
            break
        lead = order[attempt % len(order)]
        chosen = combine(lead, findings, rng.choice(sizes), rng)
        register = rng.choice(REGISTERS)
        nonspecific = bool(shared) and lead.category not in ("trauma", "post_operative") and rng.random() < SHARED_SHARE
        extra = rng.choice(shared) if nonspecific else None
        if extra and any(p.lower() in q.lower() for p in extra.phrasings for f in chosen for q in f.phrasings):
            extra = None  # already said: "weight loss" with "weight loss with anorexia"
        text = render(chosen, extra, register, hpo, rng)
        if text.lower() not in seen:
            seen.add(text.lower())
            out.append((text, chosen + ([extra] if extra else []), register))
    return out


def _record(section: str, text: str, used: list[Finding], register: str, table: Table, ver: str) -> dict[str, Any]:
    return {
        "id": sha256(f"clinical:{section}:{text}")[:16],
        "text": text,
        "source": "clinical",
        "group": f"clinical:{used[0].name}",
        "provenance": {
            "source": "clinical",
            "identifier": f"{os.path.basename(table.path)}#" + "+".join(f.name for f in used),
            "findings": [f.hpo or f.name for f in used],
            "method": "offline-templates",
            "register": register,
            "version": f"table sha256 {table.version}; {ver}",
        },
    }


def load(cfg: dict[str, Any]) -> Table:
    """The configured presentation table (``clinical.table``, the packaged one when null), checked."""
    return load_table(cfg["clinical"].get("table") or DEFAULT_TABLE, cfg["organs"])


def clinical_records(
    cfg: dict[str, Any], table: Table | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training records per organ and out-of-domain training records per body system, with provenance.

    A record's group is its leading finding, so a held-out split by group never sees that finding lead in training.
    """
    ccfg = cfg["clinical"]
    table = table or load(cfg)
    hpo = hpo_phrasings(table, load_ontology())
    ver = hpo_version()
    inside, outside = [], []
    for organ in cfg["organs"]:
        texts = compose(organ, table.organs[organ], table.shared, int(ccfg["texts_per_organ"]), SIZES, hpo, cfg["seed"])
        inside += [{**_record(organ, *t, table, ver), "organ": organ} for t in texts]
    for branch, findings in table.out_of_domain.items():
        texts = compose(branch, findings, [], int(ccfg["ood_texts_per_branch"]), OOD_SIZES, hpo, cfg["seed"])
        outside += [{**_record(branch, *t, table, ver), "branch": branch, "labels": [], "domain": "ood"} for t in texts]
    return inside, outside


def table_counts(table: Table) -> dict[str, Any]:
    """Findings per organ and category, per body system, and how many name an HPO term."""
    return {
        "findings": {o: dict(sorted(Counter(f.category for f in fs).items())) for o, fs in table.organs.items()},
        "ood_findings": {b: len(fs) for b, fs in table.out_of_domain.items()},
        "with_hpo_term": sum(f.hpo is not None for f in table.findings()),
        "findings_total": len(table.findings()),
    }


def run(cfg: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Write ``clinical_train.jsonl`` and ``clinical_ood_train.jsonl`` into ``out_dir``; returns the counts."""
    table = load(cfg)
    inside, outside = clinical_records(cfg, table)
    write_jsonl(os.path.join(out_dir, "clinical_train.jsonl"), inside)
    write_jsonl(os.path.join(out_dir, "clinical_ood_train.jsonl"), outside)
    return {
        "clinical_train": dict(Counter(r["organ"] for r in inside)),
        "clinical_ood_train": dict(Counter(r["branch"] for r in outside)),
        "registers": dict(sorted(Counter(r["provenance"]["register"] for r in inside + outside).items())),
        "table_version": table.version,
        **table_counts(table),
    }

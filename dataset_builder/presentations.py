"""The presentation table (``knowledge/clinical_presentations.yaml``): its schema, checked on loading, and HPO terms.

Each finding of an organ (or of a non-abdominal body system) has phrasings in a clinician's and a patient's words, a
category, the presentations (conditions) it belongs to and, where one fits, a Human Phenotype Ontology term whose name
and synonyms become further phrasings. A term must exist, be current and fit the finding: its name or one of its
synonyms, spelling and plurals aside, must be contained in one of the finding's own phrasings, so that a mistyped id
cannot attach another finding's words.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from .offline import phrasings as usable_phrasings
from .provenance import sha256

DEFAULT_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "knowledge", "clinical_presentations.yaml")
CATEGORIES = (
    "symptom",
    "sign",
    "named_sign",
    "laboratory",
    "imaging",
    "complication",
    "drug_toxin",
    "history",
    "paediatric",
    "pregnancy",
    "trauma",
    "post_operative",
)
# Categories that say who the patient is (or what happened to them): a text led by one describes that patient.
CONTEXTS = ("paediatric", "pregnancy", "trauma", "post_operative")
SEXES = ("female", "male")
MIN_FINDINGS = 15
MIN_OOD_FINDINGS = 3
HPO_ID = re.compile(r"^HP:\d{7}$")
FIELDS = {"category", "clinical", "lay", "hpo", "conditions", "sex"}


@dataclass(frozen=True)
class Finding:
    """One finding of the table; ``section`` is its organ, body system or ``shared``."""

    section: str
    key: str
    clinical: tuple[str, ...]
    lay: tuple[str, ...] = ()
    category: str | None = None
    hpo: str | None = None
    conditions: tuple[str, ...] = ()
    sex: str | None = None

    @property
    def name(self) -> str:
        """``section/key``: how provenance names the entry."""
        return f"{self.section}/{self.key}"

    @property
    def phrasings(self) -> tuple[str, ...]:
        return self.clinical + self.lay


@dataclass(frozen=True)
class Table:
    """The checked table: findings per organ, the nonspecific ones, findings per body system, and its hash."""

    path: str
    version: str
    organs: dict[str, list[Finding]]
    shared: list[Finding]
    out_of_domain: dict[str, list[Finding]]

    def findings(self) -> list[Finding]:
        """Every finding of the table."""
        return (
            [f for fs in self.organs.values() for f in fs]
            + self.shared
            + [f for fs in self.out_of_domain.values() for f in fs]
        )


class _UniqueKeys(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (the second would silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _strings(value: Any, where: str, field: str, required: bool) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x.strip() for x in value):
        raise ValueError(f"{where}: '{field}' must be a non-empty list of non-empty strings, got {value!r}.")
    return tuple(x.strip() for x in value)


def _finding(path: str, section: str, key: Any, entry: Any, organ: bool) -> Finding:
    where = f"{path}: {section}/{key}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with 'clinical' phrasings, got {entry!r}.")
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(FIELDS)}.")
    category = entry.get("category")
    if (organ or category is not None) and category not in CATEGORIES:
        raise ValueError(f"{where}: 'category' must be one of {list(CATEGORIES)}, got {category!r}.")
    hpo = entry.get("hpo")
    if hpo is not None and not (isinstance(hpo, str) and HPO_ID.match(hpo)):
        raise ValueError(f"{where}: 'hpo' must be an HPO id like HP:0000952, got {hpo!r}.")
    sex = entry.get("sex")
    if sex is not None and sex not in SEXES:
        raise ValueError(f"{where}: 'sex' must be one of {list(SEXES)}, got {sex!r}.")
    return Finding(
        section=section,
        key=str(key),
        clinical=_strings(entry.get("clinical"), where, "clinical", True),
        lay=_strings(entry.get("lay"), where, "lay", False),
        category=category,
        hpo=hpo,
        conditions=_strings(entry.get("conditions"), where, "conditions", False),
        sex=sex,
    )


def _section(path: str, name: str, entries: Any, minimum: int, organ: bool) -> list[Finding]:
    if not isinstance(entries, dict) or len(entries) < minimum:
        raise ValueError(f"{path}: {name!r} needs a mapping of at least {minimum} findings (key -> finding).")
    return [_finding(path, name, key, entry, organ) for key, entry in entries.items()]


def load_table(path: str = DEFAULT_TABLE, organs: list[str] | None = None) -> Table:
    """Read and check the table: the listed organs (all of the file's when None) with at least 15 findings each,
    every field of the schema, no key written twice, and body systems of at least 3 findings.

    Raises:
        ValueError: naming the file, the entry and what was expected.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        table = yaml.load(text, Loader=_UniqueKeys)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a valid presentation table ({err}).") from err
    if not isinstance(table, dict) or not isinstance(table.get("organs"), dict):
        raise ValueError(f"{path}: expected a mapping with an 'organs' mapping of organ -> findings.")
    names = organs or list(table["organs"])
    found = {o: _section(path, o, table["organs"].get(o), MIN_FINDINGS, True) for o in names}
    shared = _section(path, "shared", table.get("shared") or {}, 0, False)
    ood = {
        branch: _section(path, f"out_of_domain/{branch}", entries, MIN_OOD_FINDINGS, False)
        for branch, entries in (table.get("out_of_domain") or {}).items()
    }
    return Table(path=path, version=sha256(text)[:16], organs=found, shared=shared, out_of_domain=ood)


SPELLING = (("haem", "hem"), ("aem", "em"), ("oe", "e"), ("ae", "e"), ("our", "or"), ("isation", "ization"))
SAME_WORD = {"raised": "increased", "elevated": "increased", "high": "increased", "low": "decreased"}
STOP_WORDS = {"a", "an", "the", "of", "in", "on", "to", "and", "or", "with", "by", "at", "from", "for"}


def words(text: str) -> set[str]:
    """Content words of a phrase, British spelling, plurals and 'raised/elevated/high' made comparable."""
    text = text.lower()
    for british, american in SPELLING:
        text = text.replace(british, american)
    out = set()
    for word in re.findall(r"[a-z0-9]+", text):
        word = SAME_WORD.get(word, word)
        out.add(word[:-1] if len(word) > 3 and word.endswith("s") else word)
    return out - STOP_WORDS


def fits(labels: list[str], own: tuple[str, ...]) -> bool:
    """Whether one of an HPO term's labels (name, synonyms) is contained in one of the finding's phrasings."""
    mine = [words(p) for p in own]
    return any(label_words and any(label_words <= p for p in mine) for label_words in map(words, labels))


def hpo_problems(table: Table, ontology: Any) -> list[str]:
    """Every finding whose HPO term is unknown, obsolete or does not fit its phrasings, as 'file: entry: why'."""
    problems = []
    for finding in table.findings():
        if finding.hpo is None:
            continue
        where = f"{table.path}: {finding.name}"
        try:
            term = ontology.get_hpo_object(finding.hpo)
        except (KeyError, RuntimeError, ValueError):
            problems.append(f"{where}: {finding.hpo} is not in the packaged HPO")
            continue
        if term.is_obsolete:
            problems.append(f"{where}: {finding.hpo} ({term.name}) is obsolete")
        elif not fits([term.name, *term.synonym], finding.phrasings):
            problems.append(f"{where}: no phrasing contains {finding.hpo} '{term.name}' or one of its synonyms")
    return problems


def hpo_phrasings(table: Table, ontology: Any) -> dict[str, list[str]]:
    """The usable phrasings (name, then synonyms; no bare abbreviations) of every HPO term the table names.

    Raises:
        ValueError: listing every finding whose term is unknown, obsolete or does not fit.
    """
    problems = hpo_problems(table, ontology)
    if problems:
        raise ValueError("HPO terms of the presentation table:\n" + "\n".join(problems))
    out = {}
    for hpo_id in sorted({f.hpo for f in table.findings() if f.hpo}):
        term = ontology.get_hpo_object(hpo_id)
        labels = [label for label in sorted(set(term.synonym)) if "," not in label]  # not "Seizures, febrile"
        out[hpo_id] = usable_phrasings({"name": term.name, "synonyms": labels})
    return out

"""Offline generator: patient-style symptom texts from HPO and ICD-10-CM findings, no LLM.

Each text combines one to three findings of one source record (a phenotype term, the presentation
of one disease, an ICD-10-CM complaint) in a clinical-note or complaint template, using the
ontology's lay synonyms as alternative phrasings. Choices are seeded by the record id, so the same
inputs always give the same texts.
"""

from __future__ import annotations

import random
import re
from typing import Any

ICD_NOISE = re.compile(
    r"\b(unspecified|not elsewhere classified|NOS)\b|\s+and related conditions|^other\s+|,\s*$", re.IGNORECASE
)
BRACKETED = re.compile(r"\s*\[[^\]]*\]")  # ICD-10-CM's "[K]", "[NOS]" qualifiers
ABBREVIATION = re.compile(r"^[A-Z0-9-]{2,}$")
CROSS_REFERENCE = re.compile(r"\blisted (in|under)\b", re.IGNORECASE)  # "Any condition listed in K80.2 with ..."


def tidy(phrase: str) -> str:
    """Clinical phrase as it reads inside a sentence: ICD filler words dropped, lower-case start."""
    phrase = BRACKETED.sub("", ICD_NOISE.sub("", phrase))
    phrase = re.sub(r"\s*,\s*,|\s+,", ",", phrase)
    phrase = re.sub(r"\s+", " ", phrase).strip(" ,;")
    first = phrase.split(" ", 1)[0]
    if first and not (first.isupper() or any(c.isupper() for c in first[1:])):
        phrase = phrase[0].lower() + phrase[1:]
    return phrase


def phrasings(finding: dict[str, Any]) -> list[str]:
    """Distinct usable phrasings of a finding: its name, then its synonyms (not bare abbreviations)."""
    out: list[str] = []
    for raw in [finding["name"], *finding.get("synonyms", [])]:
        if CROSS_REFERENCE.search(raw):
            continue
        phrase = tidy(raw)
        if len(phrase) < 4 or ABBREVIATION.match(phrase) or phrase.lower() in (p.lower() for p in out):
            continue
        out.append(phrase)
    return out


def join_list(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def pick_phrases(indices: list[int], options: list[list[str]], rng: random.Random) -> list[str]:
    """One phrasing per finding; a finding sharing a phrasing with an earlier one is the same thing said
    twice (e.g. two terms both called "end-stage renal disease") and is left out."""
    used: set[str] = set()
    phrases = []
    for i in indices:
        lowered = {p.lower() for p in options[i]}
        if lowered & used:
            continue
        phrases.append(rng.choice(options[i]))
        used |= lowered
    return phrases


def render(phrases: list[str], templates: dict[str, list[str]], rng: random.Random) -> str:
    """Put phrases into a randomly chosen (seeded) template and capitalise the sentence."""
    if len(phrases) == 1:
        text = rng.choice(templates["single"]).format(phrases[0])
    else:
        text = rng.choice(templates["multi"]).format(
            list=join_list(phrases), first=phrases[0], rest=join_list(phrases[1:])
        )
    return text[0].upper() + text[1:]


def _distinct_sets(candidates: list[list[int]], limit: int, taken: list[list[int]] | None = None) -> list[list[int]]:
    """The first ``limit`` candidate sets that differ from each other and from the ``taken`` ones."""
    seen = [sorted(s) for s in taken or []]
    out: list[list[int]] = []
    for chosen in candidates:
        if sorted(chosen) not in seen:
            out.append(chosen)
            seen.append(sorted(chosen))
        if len(out) == limit:
            break
    return out


def finding_sets(
    record: dict[str, Any],
    size: int,
    n_led: int,
    n_plain: int,
    rng: random.Random,
    taken: list[list[int]] | None = None,
) -> list[list[int]]:
    """Which findings (indices) go together in each text of a record, distinct sets only.

    A disease gives ``n_led`` texts led by one of its organ findings with one or two other findings, and
    ``n_plain`` texts made only of its presenting findings (two or three of them), none the same as a ``taken``
    set. Any other record gives one text of its one finding.
    """
    findings = record["findings"]
    if record["kind"] != "disease" or len(findings) == 1:
        return [[0]]
    anchors = max(int(record.get("anchors", 1)), 1)
    led = []
    for i in range(n_led * 3):
        others = [j for j in range(len(findings)) if j != i % anchors]
        led.append([i % anchors] + sorted(rng.sample(others, min(rng.randint(1, size - 1), len(others)))))
    presenting = list(range(anchors, len(findings)))
    plain = (
        [sorted(rng.sample(presenting, min(rng.randint(2, size), len(presenting)))) for _ in range(n_plain * 3)]
        if len(presenting) >= 2
        else []
    )
    led = _distinct_sets(led, n_led, taken)
    return led + _distinct_sets(plain, n_plain, (taken or []) + led)


def _texts(
    record: dict[str, Any], sets: list[list[int]], options: list[list[str]], cfg: dict[str, Any], rng: random.Random
) -> list[dict[str, Any]]:
    out = []
    for indices in sets:
        if not all(options[i] for i in indices):
            continue
        phrases = pick_phrases(indices, options, rng)
        out.append(
            {
                "text": render(phrases, cfg["templates"], rng),
                "content": " | ".join(phrases),
                "findings": [record["findings"][i] for i in indices],
            }
        )
    return out


def generate_offline(record: dict[str, Any], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Texts of one filtered record: each with the phrases used and the findings they came from.

    A single finding gives one text (its name or, as often, a synonym: the lay phrasings); two
    texts of one finding in other words would only be a paraphrase, which dedup drops anyway.
    A disease of an organ the sources leave short gets further texts, other combinations of its findings
    (``generate.extra_texts_per_disease`` and ``extra_texts_per_disease_presentation``), marked ``extra``:
    they come from a random stream of their own, so the first texts are the same with or without them.
    """
    gcfg = cfg["generate"]
    size = int(gcfg["max_findings_per_text"])
    rng = random.Random(f"{cfg['seed']}:{record['id']}")
    options = [phrasings(f) for f in record["findings"]]
    sets = finding_sets(record, size, int(gcfg["texts_per_disease"]), int(gcfg["texts_per_disease_presentation"]), rng)
    out = _texts(record, sets, options, cfg, rng)
    n_led = int((gcfg.get("extra_texts_per_disease") or {}).get(record["organ"], 0))
    n_plain = int((gcfg.get("extra_texts_per_disease_presentation") or {}).get(record["organ"], 0))
    if (n_led or n_plain) and record["kind"] == "disease" and len(record["findings"]) > 1:
        rng = random.Random(f"{cfg['seed']}:{record['id']}:extra")
        more = finding_sets(record, size, n_led, n_plain, rng, taken=sets)
        out += [{**text, "extra": True} for text in _texts(record, more, options, cfg, rng)]
    return out

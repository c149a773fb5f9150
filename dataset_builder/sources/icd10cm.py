"""ICD-10-CM (as packaged by `simple-icd-10-cm`): presenting complaints and signs coded per organ."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from ..errors import StageError
from ..provenance import provenance, stable_id


def retrieve_icd10cm(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per configured code and descendant: description plus inclusion terms as synonyms."""
    import simple_icd_10_cm as icd

    read_at = cfg["packaged_sources_read_at"]
    ver = f"simple-icd-10-cm {version('simple-icd-10-cm')}"
    records = []
    for organ in cfg["organs"]:
        for root in cfg["retrieve"]["icd10cm"]["codes"].get(organ, []):
            if not icd.is_valid_item(root):
                raise StageError("retrieve", "not an ICD-10-CM code", f"{organ}/{root}")
            for code in [root, *icd.get_descendants(root)]:
                description = icd.get_description(code)
                finding = {
                    "icd_code": code,
                    "name": description,
                    "synonyms": sorted(set(icd.get_inclusion_term(code))),
                    "organs": [organ],
                }
                records.append(
                    {
                        "id": stable_id("icd10cm", code, organ),
                        "organ": organ,
                        "domain": "organ",
                        "source": "icd10cm",
                        "kind": "code",
                        "title": description,
                        "text": "",
                        "findings": [finding],
                        "group": f"ICD10CM:{code}",
                        "provenance": provenance("icd10cm", code, read_at, version=ver),
                    }
                )
    return records

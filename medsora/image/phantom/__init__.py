# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The generated abdominal CT phantom, the bundle's default data (see ``dataset``; its domains: ``domains``)."""

from medsora.image.phantom.dataset import (
    BTCV_LABELS,
    PHANTOM_VERSION,
    case_domain,
    ensure_phantom,
    generate_case,
    generate_phantom_dataset,
)
from medsora.image.phantom.domains import ALL_DOMAINS, REFERENCE_DOMAINS, CaseDomain, Domains

__all__ = [
    "ALL_DOMAINS",
    "BTCV_LABELS",
    "PHANTOM_VERSION",
    "REFERENCE_DOMAINS",
    "CaseDomain",
    "Domains",
    "case_domain",
    "ensure_phantom",
    "generate_case",
    "generate_phantom_dataset",
]

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The image side (paper sections 3.3 and 4.1): data, organ masking, slice sampling, networks, losses."""

from medsora._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(
    __name__,
    (
        "datalist",
        "features",
        "losses",
        "networks",
        "organ_masking",
        "phantom",
        "pretrained",
        "reports",
        "slice_sampling",
    ),
)

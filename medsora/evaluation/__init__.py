# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The evaluation: retrieval metrics, the experiment grid, the paper's tables, report and figures."""

from medsora._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(
    __name__,
    (
        "bm25",
        "figures",
        "grid",
        "metrics",
        "paper",
        "report",
        "text_metrics",
    ),
)

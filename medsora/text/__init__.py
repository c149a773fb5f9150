# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The text side (paper sections 3.2 and 3.4): encoders, corpus, anchors and soft labels, text model, alignment."""

from medsora._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(
    __name__,
    (
        "alignment",
        "corpus",
        "encoders",
        "model",
        "soft_labels",
    ),
)

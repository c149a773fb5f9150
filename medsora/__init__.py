# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Med-SORA: symptom-to-organ reasoning on abdominal CT (Na & Cho, 2025).

The library the bundle's configs name in ``_target_``, the way zoo configs name ``monai``:

* ``medsora.organs``: the seven organs, their order, the ranking tie rule, label conventions;
* ``medsora.image``: the phantom, datalists, organ masking, slice sampling, the 2D/3D ViTs and fusion, losses;
* ``medsora.text``: text encoders, the corpus, organ anchors and soft labels, the text model, alignment;
* ``medsora.query``: the ``query`` workflow; ``medsora.display``: probability maps and pictures;
* ``medsora.evaluation``: metrics, the experiment grid, the paper's tables and figures.

Submodules are imported on first use: a query never imports the evaluation or the figures.
"""

from medsora._lazy import lazy_submodules

__version__ = "0.6.0"

__getattr__, __dir__ = lazy_submodules(
    __name__,
    (
        "atomic_io",
        "bundle_location",
        "checkpoints",
        "config_check",
        "determinism",
        "display",
        "evaluation",
        "image",
        "literal_options",
        "organs",
        "query",
        "stages",
        "text",
        "thresholds",
        "training_history",
    ),
)

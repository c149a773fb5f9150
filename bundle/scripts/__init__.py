# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Med-SORA bundle code: only what MONAI lacks, one module per paper stage; the configs wire it."""

from . import (
    alignment,
    atomic_io,
    config_check,
    datalist,
    determinism,
    evaluation,
    evaluation_figures,
    evaluation_report,
    experiment_grid,
    lexical_baseline,
    losses,
    networks,
    organ_display,
    organ_masking,
    paper_evaluation,
    phantom,
    pretrained,
    query,
    retrieval_metrics,
    slice_sampling,
    soft_labels,
    text_data,
    text_encoders,
    text_evaluation,
    text_model,
    training_history,
)

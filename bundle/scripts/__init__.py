# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Med-SORA bundle code: only what MONAI lacks, one module per paper stage; the configs wire it."""

from . import (
    atomic_io,
    config_check,
    datalist,
    determinism,
    evaluation,
    losses,
    networks,
    organ_masking,
    phantom,
    pretrained,
    slice_sampling,
)

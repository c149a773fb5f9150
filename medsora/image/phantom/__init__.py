# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The generated abdominal CT phantom, the bundle's default data (see ``dataset``)."""

from medsora.image.phantom.dataset import (
    BTCV_LABELS,
    PHANTOM_VERSION,
    ensure_phantom,
    generate_case,
    generate_phantom_dataset,
)

__all__ = ["BTCV_LABELS", "PHANTOM_VERSION", "ensure_phantom", "generate_case", "generate_phantom_dataset"]

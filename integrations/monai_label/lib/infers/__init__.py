# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Infer tasks of the Med-SORA MONAI Label app."""

from .organ_query import OrganQueryInfer

__all__ = ["OrganQueryInfer"]

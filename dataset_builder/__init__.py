"""Builds the Med-SORA symptom corpus: organ-labelled, patient-style symptom texts.

Stages (one module each, one CLI command each): retrieve, chunk, filter, generate, dedup, split.
Every stage reads the previous stage's file and writes its own, so any stage can be rerun alone.
"""

from medsora.organs import ORGANS  # the one organ list, shared with the model

__all__ = ["ORGANS"]

"""Builds the Med-SORA symptom corpus: organ-labelled, patient-style symptom texts.

Stages (one module each, one CLI command each): retrieve, chunk, filter, generate, dedup, split.
Every stage reads the previous stage's file and writes its own, so any stage can be rerun alone.
"""

ORGANS: tuple[str, ...] = ("liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland")

__all__ = ["ORGANS"]

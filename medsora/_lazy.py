# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Submodules imported on first use (PEP 562), so that ``medsora.text.corpus.f`` works in a config expression after
``import medsora`` while a query imports neither the evaluation nor the figures."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType

__all__ = ["lazy_submodules"]


def lazy_submodules(package: str, names: Sequence[str]) -> tuple[Callable[[str], ModuleType], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose submodules ``names`` load when first accessed."""
    names = tuple(names)

    def __getattr__(name: str) -> ModuleType:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *names})

    return __getattr__, __dir__

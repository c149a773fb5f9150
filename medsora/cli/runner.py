# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Bundle runs in this process, quietly: what ``python -m monai.bundle run`` does, without its logging set-up and
its notice about trusting configs (these are the project's own configs). MONAI is imported only when a run starts,
so ``medsora --help`` answers at once."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from medsora.bundle_location import find_bundle_root
from medsora.literal_options import literal_overrides

__all__ = ["config_path", "find_bundle_root", "parse_configs", "quiet", "run_workflow"]


def config_path(bundle_root: str, name: str) -> str:
    return os.path.join(bundle_root, "configs", name)


def quiet() -> None:
    """Silence the third-party notices our runs cause: MONAI's notices about trusting configs and optional decoders
    (warnings, filtered before MONAI is imported)."""
    warnings.filterwarnings("ignore", message="parsing config_file")
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


def _quiet_loggers() -> None:
    """MONAI's bundle modules and ignite log set-up notices and per-epoch lines at INFO; runs here report their own."""
    import monai.bundle  # noqa: F401  (its modules set their loggers' levels when imported)

    for name in ("monai.bundle.workflows", "monai.bundle.scripts", "ignite", "monai.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def parse_configs(bundle_root: str, config_files: Sequence[str], overrides: Mapping[str, Any]):
    """A ``ConfigParser`` of the bundle's ``config_files`` with ``bundle_root`` and ``overrides`` set."""
    from monai.bundle import ConfigParser

    _quiet_loggers()
    parser = ConfigParser()
    parser.read_config([config_path(bundle_root, name) for name in config_files])
    parser.update(literal_overrides({"bundle_root": bundle_root, **overrides}))
    return parser


def run_workflow(bundle_root: str, config_files: Sequence[str], run_id: str, overrides: Mapping[str, Any]) -> Any:
    """``monai.bundle run RUN_ID`` of the bundle's ``config_files`` with ``overrides``, in this process."""
    from monai.bundle import ConfigWorkflow

    _quiet_loggers()
    workflow = ConfigWorkflow(
        config_file=[config_path(bundle_root, name) for name in config_files],
        workflow_type=None,
        run_id=run_id,
        logging_file=False,
        meta_file=config_path(bundle_root, "metadata.json"),
        **literal_overrides({"bundle_root": bundle_root, **overrides}),
    )
    workflow.initialize()
    try:
        return workflow.run()
    finally:
        workflow.finalize()

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Where the bundle is: the directory its configs' relative paths (``models/``, ``eval/``, ``data/``) start from.

The configs' ``bundle_root`` is :func:`bundle_root`, so ``python -m monai.bundle run query --config_file
/path/to/bundle/configs/inference.yaml`` works from any directory: the bundle is found from the config file, the way
MONAI finds a bundle's ``logging.conf`` and ``metadata.json``. ``--bundle_root DIR`` still overrides it.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Sequence

__all__ = [
    "BUNDLE_ENV",
    "bundle_config_files",
    "bundle_root",
    "cli_options",
    "config_bundle",
    "find_bundle_root",
    "is_bundle_command",
]

#: names the bundle directory for the ``medsora`` command and for Python callers that pass no ``bundle_root``
BUNDLE_ENV = "MEDSORA_BUNDLE"
#: a bundle holds this file; a directory without it is not one
MARKER = os.path.join("configs", "inference.yaml")


def cli_options(argv: Sequence[str]) -> dict[str, str]:
    """``--key value`` and ``--key=value`` pairs of a command line, in order."""
    options: dict[str, str] = {}
    args = list(argv)
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, sep, value = arg[2:].partition("=")
        options[key] = value if sep else (args[i + 1] if i + 1 < len(args) else "")
    return options


def is_bundle_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a ``python -m monai.bundle ...`` command line (also under ``torchrun``)."""
    return len(argv) >= 2 and argv[0].endswith(os.path.join("monai", "bundle", "__main__.py"))


def bundle_config_files(argv: Sequence[str]) -> list[str] | None:
    """The ``--config_file`` files of a ``python -m monai.bundle`` command line (a path or a list of paths as MONAI
    takes them); ``None`` for any other command line or one without ``--config_file``."""
    if not is_bundle_command(argv):
        return None
    typed = cli_options(argv[2:]).get("config_file", "")
    if not typed:
        return None
    files = ast.literal_eval(typed) if typed.startswith("[") else typed
    return [str(f) for f in files] if isinstance(files, (list, tuple)) else [str(files)]


def config_bundle(config_file: str) -> str:
    """The bundle a config file belongs to: the directory above its ``configs/`` (MONAI's rule), else its own."""
    directory = os.path.dirname(os.path.abspath(config_file))
    return os.path.dirname(directory) if os.path.basename(directory) == "configs" else directory


def _checkout_bundle() -> str:
    """The ``bundle/`` of the checkout this library is installed from (``pip install -e .``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle")


def find_bundle_root(bundle_root: str | None = None) -> str:
    """The Med-SORA bundle directory: ``bundle_root``, else ``$MEDSORA_BUNDLE``, else the ``bundle/`` of the checkout
    this library is installed from; the error says how to name it when none holds ``configs/inference.yaml``."""
    candidate = bundle_root or os.environ.get(BUNDLE_ENV) or _checkout_bundle()
    if not os.path.isfile(os.path.join(candidate, MARKER)):
        raise FileNotFoundError(
            f"no Med-SORA bundle at {candidate} (expected {MARKER} there): pass --bundle_root DIR or set "
            f"{BUNDLE_ENV}=DIR, the bundle directory holding configs/ and models/."
        )
    return os.path.abspath(candidate)


def bundle_root(argv: Sequence[str] | None = None) -> str:
    """The configs' default ``bundle_root``: the bundle of the first ``--config_file`` on a ``python -m monai.bundle``
    command line (``argv``, default this process's), otherwise :func:`find_bundle_root`'s."""
    files = bundle_config_files(sys.argv if argv is None else argv)
    return config_bundle(files[0]) if files else find_bundle_root()

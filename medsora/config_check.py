# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Refuse command-line overrides that name no config item.

``monai.bundle run`` turns every ``--key value`` into a config entry, so a misspelt key (``--epoch 5``) silently
creates an unused item and the run goes on with the default. This check runs first in each workflow's run list.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from collections.abc import Sequence

from monai.bundle import ConfigParser

__all__ = ["check_cli_overrides", "unknown_override_keys"]

# arguments of `monai.bundle run` itself, not config items
RUN_ARGUMENTS = {
    "config_file",
    "meta_file",
    "logging_file",
    "args_file",
    "run_id",
    "init_id",
    "final_id",
    "tracking",
    "workflow_type",
    "workflow_name",
    "properties_path",
}


def _cli_options(argv: Sequence[str]) -> dict[str, str]:
    """``--key value`` and ``--key=value`` pairs of a command line, in order."""
    options: dict[str, str] = {}
    args = list(argv)
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, sep, value = arg[2:].partition("=")
        options[key] = value if sep else (args[i + 1] if i + 1 < len(args) else "")
    return options


def unknown_override_keys(overrides: Sequence[str], parser: ConfigParser) -> list[str]:
    """Override keys that are neither an existing item nor a new entry inside an existing dictionary."""
    unknown = []
    for key in overrides:
        config_id = key.replace("::", "#")
        if config_id in parser:
            continue
        parent = config_id.rpartition("#")[0]
        if parent and parent in parser and isinstance(parser[parent], dict):
            continue
        unknown.append(key)
    return unknown


def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Raise a ``KeyError`` naming each override of a ``monai.bundle run`` command line that matches no config item.

    Other entry points (``ConfigWorkflow`` in Python, tests) pass overrides directly and are not checked.
    """
    argv = sys.argv if argv is None else argv
    if len(argv) < 2 or argv[1] != "run" or not argv[0].endswith(os.path.join("monai", "bundle", "__main__.py")):
        return
    options = _cli_options(argv[2:])
    config_files = options.get("config_file", "")
    files = ast.literal_eval(config_files) if config_files.startswith("[") else config_files
    parser = ConfigParser()
    parser.read_config(files)
    unknown = unknown_override_keys([k for k in options if k not in RUN_ARGUMENTS], parser)
    if unknown:
        known = list(parser.get())
        hints = [
            f"--{k}" + (f" (did you mean --{close[0]}?)" if (close := difflib.get_close_matches(k, known, n=1)) else "")
            for k in unknown
        ]
        raise KeyError(f"unknown override key(s) {', '.join(hints)}: not an item of {files}.")

# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The command line's front door: overrides that name no config item or hold the wrong type are refused, and an error
ends with its real message.

``monai.bundle run`` turns every ``--key value`` into a config entry, so a misspelt key (``--epoch 5``,
``--label_conventions#btcv#known_label``) silently creates an unused item and the run goes on with the default, and
``--epochs abc`` fails deep inside the trainer. :func:`check_cli_overrides` runs first in each workflow's run list.
MONAI wraps every error of a config expression in ``RuntimeError: Failed to evaluate ...``; :func:`error_message`
finds the error a user needs under those wrappers.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from fire.parser import DefaultParseValue
from monai.bundle import ComponentLocator, ConfigComponent, ConfigParser
from monai.utils import optional_import

from medsora.bundle_location import cli_options, is_bundle_command
from medsora.literal_options import LITERAL_OPTIONS, rerun_as_typed

__all__ = ["check_cli_overrides", "error_message", "override_type_errors", "unknown_override_keys"]

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
# a new key this close to an existing one of the same dictionary is a misspelling, not a new entry
TYPO_CUTOFF = 0.9
# the messages with which MONAI wraps the error of a config expression, a component or a transform
MONAI_WRAPPERS = ("Failed to evaluate", "Failed to instantiate", "applying transform")


def _parameters(component: Mapping[str, Any], locator: ComponentLocator) -> set[str] | None:
    """The keywords a ``_target_`` component's callable accepts; ``None`` when it accepts any or cannot be found."""
    if not isinstance(component.get("_target_"), str) or component["_target_"].startswith(("$", "@", "%")):
        return None
    name = ConfigComponent(config=dict(component), locator=locator).resolve_module_name()
    module, _, attribute = name.rpartition(".")
    target, found = optional_import(module, name=attribute) if module else (None, False)
    if not found or not callable(target):
        return None
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters} | ConfigComponent.non_arg_keys


def unknown_override_keys(overrides: Sequence[str], parser: ConfigParser) -> dict[str, str | None]:
    """Override keys that are neither an existing item nor a real new entry, each with the closest valid key.

    A new key inside an existing dictionary is allowed unless it is a misspelling of one of that dictionary's keys
    (``label_conventions#btcv#known_label``) or a keyword the dictionary's ``_target_`` does not accept
    (``train#trainer#max_epoch``); ``label_conventions#mine`` adds a convention.
    """
    unknown: dict[str, str | None] = {}
    locator = ComponentLocator()
    for key in overrides:
        config_id = key.replace("::", "#")
        if config_id in parser:
            continue
        parent, _, name = config_id.rpartition("#")
        if parent and parent in parser and isinstance(parser[parent], dict):
            siblings = [str(k) for k in parser[parent]]
            close = difflib.get_close_matches(name, siblings, n=1, cutoff=TYPO_CUTOFF)
            accepted = _parameters(parser[parent], locator)
            if not close and (accepted is None or name in accepted):
                continue
            if not close:
                close = difflib.get_close_matches(name, sorted(accepted or ()), n=1)
            unknown[key] = f"{parent}#{close[0]}" if close else None
            continue
        close = difflib.get_close_matches(config_id, [str(k) for k in parser.get()], n=1)
        unknown[key] = close[0] if close else None
    return unknown


def _kind(value: Any) -> str | None:
    """``bool``, ``int`` or ``float`` for a plain config number or flag; ``None`` for anything else."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return None


def override_type_errors(options: Mapping[str, str], parser: ConfigParser) -> list[str]:
    """The overrides whose value, read as the command line reads it, cannot stand for the config's number or flag."""
    expected = {"bool": "true or false", "int": "an integer", "float": "a number"}
    errors = []
    for key, typed in options.items():
        config_id = key.replace("::", "#")
        if key in LITERAL_OPTIONS or config_id not in parser:
            continue
        default = parser[config_id]
        kind = _kind(default)
        value = DefaultParseValue(typed)
        if kind is None or _kind(value) == kind or (kind == "float" and _kind(value) == "int"):
            continue
        errors.append(f"--{key} {typed!r}: expected {expected[kind]} like the config's {default!r}")
    return errors


def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Check a ``monai.bundle run`` command line, then let its user-facing options reach the code as typed.

    Raises a ``KeyError`` naming each override that matches no config item (with the closest valid key) and a
    ``ValueError`` naming each number or flag given a value of another type. On the process's own command line
    (``argv`` not given), errors from here on end with their real message (:func:`error_message`), and
    :func:`medsora.literal_options.rerun_as_typed` runs the command again with texts, paths and names as typed when
    the parsers would change them. Other entry points (``ConfigWorkflow`` in Python, tests) pass overrides directly
    and are not checked.
    """
    own = argv is None  # this process's own command line, not one given to check
    argv = sys.argv if argv is None else argv
    if not is_bundle_command(argv) or argv[1] != "run":
        return
    if own:
        sys.excepthook = _print_error
    options = cli_options(argv[2:])
    typed = options.get("config_file", "")
    files = ast.literal_eval(typed) if typed.startswith("[") else typed
    parser = ConfigParser()
    parser.read_config(files)
    overrides = {key: value for key, value in options.items() if key not in RUN_ARGUMENTS}
    unknown = unknown_override_keys(list(overrides), parser)
    if unknown:
        hints = [f"--{key}" + (f" (did you mean --{close}?)" if close else "") for key, close in unknown.items()]
        raise KeyError(f"unknown override key(s) {', '.join(hints)}: not an item of {files}.")
    errors = override_type_errors(overrides, parser)
    if errors:
        raise ValueError("; ".join(errors) + ".")
    if own:
        rerun_as_typed(argv, overrides)


def error_message(error: BaseException) -> str:
    """``Type: message`` of the error a user needs: the first one in ``error``'s cause chain that is not one of
    MONAI's wrappers (``RuntimeError: Failed to evaluate ConfigExpression ...``), so one line can say what failed."""
    while isinstance(error, RuntimeError) and str(error).startswith(MONAI_WRAPPERS) and error.__cause__ is not None:
        error = error.__cause__
    # a KeyError's str() is the repr of its key; its message is the argument itself
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else error
    return f"{type(error).__name__}: {message}"


def _print_error(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    """The usual traceback, then the real error as the last line when MONAI wrapped it."""
    sys.__excepthook__(kind, error, traceback)
    message = error_message(error)
    if message != f"{kind.__name__}: {error}":
        print(f"error: {message}", file=sys.stderr)

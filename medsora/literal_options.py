# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""User-facing options (a symptom text, file paths, names) reach the code as the user typed them.

``python -m monai.bundle run`` hands every ``--key value`` to two parsers before any bundle code runs: fire reads the
value as a Python literal (``"rib #5 hurts"`` becomes ``"rib"``, ``"123"`` an int) and MONAI's config parser reads it
as config syntax (``$...`` is evaluated as Python, ``@id`` and ``%id`` are replaced by config items, ``#`` becomes
``::``). That is right for config values and wrong for a symptom text or a path, so these options are passed to the
config as :func:`literal` expressions, which the parser turns back into exactly the typed string:

* in Python, ``ConfigWorkflow(config_file=..., **literal_overrides(text=..., image=...))``;
* on the command line, the first step of every run list (``medsora.config_check.check_cli_overrides``) calls
  :func:`rerun_as_typed`: when fire or MONAI would change one of these options, the same command is run again with
  the options as typed, and the first run stops before anything reads them.

MONAI reads the options once before that first step, which is why a few values still fail there, before the bundle's
own code runs: ``%`` followed by something that is not a config id (MONAI's ``KeyError: query key``) and ``$``
followed by text containing ``import`` that is not Python (``SyntaxError``); ``$import NAME`` imports an installed
module there. ``--queries_file`` is read by the bundle itself and takes any text.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import fire
from fire import decorators
from fire.parser import DefaultParseValue

__all__ = ["LITERAL_OPTIONS", "literal", "literal_overrides", "needs_literal", "rerun_as_typed"]

#: options whose value is a text, a path or a name, never config syntax
LITERAL_OPTIONS = frozenset(
    {
        "text",
        "queries_file",
        "output_file",
        "image",
        "label",
        "maps_dir",
        "dataset_dir",
        "label_convention",
        "label_mode",
        "bundle_root",
        "ckpt_dir",
        "output_dir",
        "phantom_dir",
        "resume_from",
        "pretrained_2d",
        "corpus_dir",
        "text_cache_dir",
    }
)
# characters MONAI's parser reads anywhere in a string (references, ids, macros), written as escapes instead
_ESCAPES = {char: f"\\x{ord(char):02x}" for char in "@#%:"}
_rerun = False  # set while the command line runs again as typed, so that its own first step does not rerun it


def literal(value: str) -> str:
    """A config value that MONAI's parser resolves to exactly ``value``: a ``$`` expression of a Python string literal
    in which no character the parser interprets appears."""
    return "$" + "".join(_ESCAPES.get(char, char) for char in repr(value))


def literal_overrides(overrides: Mapping[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """``overrides`` for ``ConfigWorkflow`` with every string value of :data:`LITERAL_OPTIONS` made :func:`literal`."""
    values = {**(overrides or {}), **more}
    return {
        key: literal(value) if key in LITERAL_OPTIONS and isinstance(value, str) else value
        for key, value in values.items()
    }


def needs_literal(typed: str) -> bool:
    """Whether fire or MONAI's config parser would change ``typed`` before the bundle's code saw it."""
    return typed.startswith(("$", "@", "%")) or "#" in typed or "::" in typed or DefaultParseValue(typed) != typed


def rerun_as_typed(argv: Sequence[str], options: Mapping[str, str]) -> None:
    """Run the ``monai.bundle run`` command line ``argv`` again with :data:`LITERAL_OPTIONS` as typed, then exit.

    Does nothing when no such option of ``options`` (the command line's ``--key value`` pairs) would be changed by the
    parsers, or inside the rerun itself.

    Raises:
        SystemExit: status 0 once the rerun has finished, so that the first run never reads the options.
    """
    if _rerun or not any(key in LITERAL_OPTIONS and needs_literal(value) for key, value in options.items()):
        return
    fire.Fire(_run_as_typed, command=list(argv[2:]), name="monai.bundle run")
    raise SystemExit(0)


@decorators.SetParseFns(**dict.fromkeys(LITERAL_OPTIONS, str))
def _run_as_typed(
    run_id: str | None = None,
    init_id: str | None = None,
    final_id: str | None = None,
    meta_file: str | Sequence[str] | None = None,
    config_file: str | Sequence[str] | None = None,
    logging_file: str | None = None,
    tracking: str | dict | None = None,
    args_file: str | None = None,
    **override: Any,
) -> None:
    """``monai.bundle.scripts.run`` with the literal options as typed (fire parses them with ``str``)."""
    global _rerun
    from monai.bundle.scripts import run

    _rerun = True
    try:
        with warnings.catch_warnings():
            # the first run of this command line has shown MONAI's notice about trusting config files already
            warnings.filterwarnings("ignore", message="parsing config_file")
            run(
                run_id,
                init_id,
                final_id,
                meta_file,
                config_file,
                logging_file,
                tracking,
                args_file,
                **literal_overrides(override),
            )
    finally:
        _rerun = False

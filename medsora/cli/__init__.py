# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The ``medsora`` command line (``medsora query "..."``, ``medsora demo``, ``medsora train|evaluate|serve``).

Options are checked against the verb before anything runs, so a misspelt one is refused with the closest valid
name; text and path values reach the verb exactly as typed (fire would otherwise read ``[1, 2]`` or ``True`` as
Python values); an error prints one line and exits with status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import sys
from collections.abc import Sequence

__all__ = ["entry_point", "main"]

#: options every verb accepts besides its own
GLOBAL_FLAGS = ("--debug",)
HELP_FLAGS = ("--help", "-h")


class UsageError(ValueError):
    """A command line that names no verb or an option the verb does not have."""


def _verbs(commands: type) -> dict[str, inspect.Signature]:
    verbs = {name: f for name, f in vars(commands).items() if callable(f) and not name.startswith("_")}
    return {name: inspect.signature(f) for name, f in verbs.items()}


def _quote_values(verb: str, args: Sequence[str], signature: inspect.Signature) -> list[str]:
    """Check ``--option`` names against the verb and quote string values so fire keeps them as typed."""
    params = {name: p for name, p in signature.parameters.items() if name != "self"}
    out: list[str] = []
    positional = [name for name in params]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in HELP_FLAGS:
            out.append(arg)
            i += 1
            continue
        if re.fullmatch(r"-[A-Za-z]", arg):  # fire's one-letter alias of the one option starting with that letter
            names = [name for name in params if name.startswith(arg[1])]
            arg = f"--{names[0]}" if len(names) == 1 else arg
        if arg.startswith("-"):
            name, sep, value = arg.lstrip("-").partition("=")
            if name not in params:
                close = difflib.get_close_matches(name, list(params), n=1)
                hint = f" (did you mean --{close[0]}?)" if close else ""
                raise UsageError(f"medsora {verb}: unknown option --{name}{hint}; see `medsora {verb} --help`.")
            if not sep:
                if i + 1 >= len(args) or params[name].annotation in ("bool", bool):
                    out.append(arg)
                    i += 1
                    continue
                value = args[i + 1]
                i += 1
            out.append(f"--{name}={_literal(params[name], value)}")
            positional = [p for p in positional if p != name]
        else:
            if not positional:
                raise UsageError(f"medsora {verb}: unexpected argument {arg!r}; see `medsora {verb} --help`.")
            out.append(_literal(params[positional.pop(0)], arg))
        i += 1
    return out


def _literal(param: inspect.Parameter, value: str) -> str:
    """A string option's value as a Python string literal, which fire reads back unchanged."""
    return repr(value) if "str" in str(param.annotation) else value


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medsora ARGS``; returns the exit status."""
    import fire

    from medsora.cli.runner import quiet

    quiet()
    from medsora.cli.commands import Commands

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a not in GLOBAL_FLAGS]
    verbs = _verbs(Commands)
    try:
        if args and args[0] in verbs:
            args = [args[0], *_quote_values(args[0], args[1:], verbs[args[0]])]
        elif args and args[0] not in HELP_FLAGS:
            close = difflib.get_close_matches(args[0], list(verbs), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"medsora: unknown command {args[0]!r}{hint}; commands: {', '.join(verbs)}.")
        if any(a in HELP_FLAGS for a in args):  # fire's own form of a help request, printed to stdout
            args = [a for a in args if a not in HELP_FLAGS] + ["--", "--help"]
            with contextlib.redirect_stderr(sys.stdout):
                fire.Fire(Commands(), command=args, name="medsora")
        else:
            fire.Fire(Commands(), command=args, name="medsora")
    except fire.core.FireExit as e:
        return int(e.code or 0)
    except BrokenPipeError:  # the reader stopped (| head): nothing more to say
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("medsora: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        from medsora.config_check import error_message

        print(f"medsora: error: {' '.join(error_message(e).split())}", file=sys.stderr)
        return 1
    return 0


def entry_point() -> None:
    """The console script."""
    sys.exit(main())

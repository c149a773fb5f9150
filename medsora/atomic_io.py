# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Atomic file writes: an interrupted run leaves the previous file or the new one, never a truncated one.

Used by everything that writes a result (weights, maps, reports, corpus stages): the temporary file is written in
the destination directory, flushed to disk, given the permissions ``open()`` would, then renamed over ``path``.
A writer killed outright (``kill -9``) leaves its temporary file behind; the temporary file names its writer's
process, and the first write of a later run into that directory removes what writers no longer running left there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

__all__ = ["TMP_PREFIX", "atomic_write", "remove_stale_temporaries", "write_json_atomic", "write_text_atomic"]

TMP_PREFIX = ".tmp-"
_STARTED = time.time()  # temporary files older than this run, of writers no longer running, are leftovers
_swept: set[str] = set()


def _writer_running(name: str) -> bool:
    """Whether the process that named the temporary file ``name`` (``.tmp-PID-...``) still runs."""
    pid = name[len(TMP_PREFIX) :].partition("-")[0]
    if not pid.isdigit() or os.name != "posix":  # on Windows signal 0 is CTRL_C_EVENT, not a probe
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the temporary files of :func:`atomic_write` in ``directory`` that are older than this run and whose
    writer is gone; returns their paths."""
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False)):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < _STARTED and not _writer_running(entry.name):
                    os.remove(entry.path)
                    removed.append(entry.path)
    return removed


def atomic_write(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temporary file in the destination directory, then rename it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if directory not in _swept:
        remove_stale_temporaries(directory)
        _swept.add(directory)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` as UTF-8 with ``\\n`` line ends, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)

    atomic_write(path, write, os.path.splitext(path)[1])


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")

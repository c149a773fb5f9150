"""JSONL files written atomically, completeness marks, and append-only checkpoints that make long stages resumable.

A stage's output appears only when complete (temp file + os.replace), and then its completeness mark
`<output>.complete.json` (record count and SHA-256), written atomically after it: the next stage reads the
file only if it is still what the stage finished, so a file cut or edited afterwards (`head -n`) is refused
instead of read as a smaller corpus. A long stage appends each finished record to `<output>.partial`
(one flushed line each); a rerun after a crash reads it back, skips the finished input records and
finally writes the output in input order, so a resumed run gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm

from medsora.atomic_io import write_text_atomic

from .errors import StageError


def dumps(record: dict[str, Any]) -> str:
    """Canonical one-line JSON: stable key order and unicode kept, so files diff and hash cleanly."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Read every record of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically; returns how many."""
    lines = [dumps(r) + "\n" for r in records]
    write_text_atomic(path, "".join(lines))
    return len(lines)


def mark_path(path: str) -> str:
    """Where the completeness mark of the stage file `path` is written."""
    return path + ".complete.json"


def _count_and_hash(path: str) -> tuple[int, str]:
    digest, records = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for line in f:
            digest.update(line)
            records += bool(line.strip())
    return records, digest.hexdigest()


def mark_complete(path: str, stage: str) -> None:
    """Record, after the stage file `path` is written, what `stage` wrote: its record count and SHA-256."""
    records, sha256 = _count_and_hash(path)
    mark = {"file": os.path.basename(path), "stage": stage, "records": records, "sha256": sha256}
    write_text_atomic(mark_path(path), json.dumps(mark, indent=1) + "\n")


def check_complete(path: str, reader: str, writer: str, rerun: str) -> None:
    """Refuse the stage file `path` unless it is what stage `writer` finished (its completeness mark matches).

    Raises:
        StageError: of stage `reader`, naming the file, what is wrong, and `rerun`, the command that writes it.
    """
    if not os.path.exists(mark_path(path)):
        raise StageError(
            reader,
            f"input {path} has no completeness mark ({mark_path(path)}): stage {writer} did not "
            f"finish writing it; re-run `{rerun}`",
        )
    with open(mark_path(path), encoding="utf-8") as f:
        mark = json.load(f)
    records, sha256 = _count_and_hash(path)
    if (records, sha256) != (mark.get("records"), mark.get("sha256")):
        raise StageError(
            reader,
            f"input {path} is not the file stage {writer} wrote: it holds {records} records (SHA-256 {sha256[:12]}), "
            f"{writer} wrote {mark.get('records')} (SHA-256 {str(mark.get('sha256'))[:12]}); it was cut or changed "
            f"since; re-run `{rerun}`",
        )


class Checkpoint:
    """Append-only log of finished work: one line `{"key": ..., "records": [...]}` per input record.

    A line cut short by a kill is ignored on reading, so that input record is simply redone.
    """

    def __init__(self, output_path: str, fingerprint: str = "") -> None:
        self.path = output_path + ".partial"
        self.fingerprint = fingerprint
        self.done: dict[str, list[dict[str, Any]]] = dict(self._read())
        self._file = None

    def _read(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Finished entries of a log made with the same fingerprint (same input and config)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            if f.readline() != dumps({"fingerprint": self.fingerprint}) + "\n":
                f.close()
                os.unlink(self.path)  # a log of other input or settings: start afresh
                return
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break
                yield entry["key"], entry["records"]

    def add(self, key: str, records: list[dict[str, Any]]) -> None:
        """Record that input `key` produced `records`, durably, before moving on."""
        if self._file is None:
            self._truncate_torn_tail()
            fresh = not os.path.exists(self.path)
            self._file = open(self.path, "a", encoding="utf-8", newline="\n")
            if fresh:
                self._file.write(dumps({"fingerprint": self.fingerprint}) + "\n")
        self._file.write(dumps({"key": key, "records": records}) + "\n")
        self._file.flush()  # in the kernel once write() returns: survives kill -9 (not power loss)
        self.done[key] = records

    def _truncate_torn_tail(self) -> None:
        """Cut a half-written last line so the next append starts on a fresh line."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)

    def finish(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        """Close the log and return all records in the order of `keys` (the input order)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return [r for key in keys for r in self.done.get(key, [])]

    def remove(self) -> None:
        """Delete the log once the stage output has been written."""
        if os.path.exists(self.path):
            os.unlink(self.path)


def fingerprint(cfg: dict[str, Any], in_path: str) -> str:
    """Identifies a stage's input file and settings, so a checkpoint is only reused for the same work."""
    digest = hashlib.sha256(dumps(cfg).encode("utf-8"))
    with open(in_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_resumable(
    items: list[dict[str, Any]],
    work: Callable[[dict[str, Any]], list[dict[str, Any]]],
    out_path: str,
    desc: str,
    key: str = "",
) -> list[dict[str, Any]]:
    """Apply `work` to every item not yet checkpointed, then write all results in input order.

    `work` may return a tombstone `{"dropped": reason}` for an item it rejects: checkpointed like any
    result (so a resume does not ask again), returned to the caller for counting, not written.
    Killing the process at any point and calling this again gives the same output file as an
    uninterrupted run: finished items are read back, unfinished ones are redone, none twice. `key`
    (see `fingerprint`) keeps a checkpoint of other input or settings from being reused.
    """
    checkpoint = Checkpoint(out_path, key)
    keys = [item["id"] for item in items]
    todo = [item for item in items if item["id"] not in checkpoint.done]
    for item in tqdm(todo, desc=desc, unit="rec", initial=len(items) - len(todo), total=len(items)):
        checkpoint.add(item["id"], work(item))
    results = checkpoint.finish(keys)
    write_jsonl(out_path, (r for r in results if "dropped" not in r))
    checkpoint.remove()
    return results

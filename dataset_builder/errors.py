"""One error type that names the stage, the record and the cause, so a failed run says where."""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage failed on a record; the message is `[stage] record: cause`."""

    def __init__(self, stage: str, cause: str, record: str | None = None) -> None:
        self.stage, self.record, self.cause = stage, record, cause
        where = f" {record}:" if record else ""
        super().__init__(f"[{stage}]{where} {cause}")

"""Failures a worker reports. `InputError` is permanent (bad bytes, bad message, bad spec):
retrying cannot help, so the shard fails at once and the message is dead-lettered. Anything
else is treated as transient (crash, out of memory, storage hiccup) and redelivered."""

from __future__ import annotations

from typing import Any


class InputError(Exception):
    """Permanent failure caused by the input; carries where and why."""

    def __init__(
        self, cause: str, *, file: str = "", chunk: tuple[int, int, int] | None = None
    ) -> None:
        self.cause = cause
        self.file = file
        self.chunk = chunk
        super().__init__(self.describe())

    def describe(self) -> str:
        parts = [p for p in (self.file, f"chunk {self.chunk}" if self.chunk else "") if p]
        return ": ".join([*parts, self.cause])

    def as_record(self) -> dict[str, Any]:
        return {
            "kind": "input",
            "file": self.file,
            "chunk": list(self.chunk) if self.chunk else None,
            "cause": self.cause,
        }


class Interrupted(Exception):
    """The worker was asked to stop; nothing of the current shard was committed."""

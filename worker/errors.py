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


class Fenced(Exception):
    """This worker's claim on the shard is no longer current (it was presumed dead and another
    worker took over, or the shard was reset): nothing was committed, nothing is recorded."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT anywhere in the chain: the disk, not the memory tier, is the problem."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "ENOSPC" in text:
            return True  # TensorStore reports it in its own status text
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False

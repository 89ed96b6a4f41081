"""What converting one shard produced, apart from the converters: the worker loop reads it
without importing them (and Numba with them) before its first shard (worker/warm.py)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GZIP_LEVEL = 6  # chunk gzip level (docs/performance.md, "gzip"); --gzip-level


@dataclass
class ShardOutcome:
    status: str  # "done" or "empty"
    chunks_read: int = 0  # records in the source file(s)
    chunks_written: int = 0  # non-empty chunks stored
    chunks_zero: int = 0  # all-background chunks (not stored)
    chunks_outside: int = 0  # exported blocks beyond the volume edge (clipped away entirely)
    bytes_written: int = 0  # shard file size
    encoded_bytes: int = 0  # sum of gzipped chunk sizes
    seconds: float = 0.0
    threads: int = 1

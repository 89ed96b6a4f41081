"""Progress display for long runs: a tqdm bar on a terminal, a line every 10 s elsewhere."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from backends.base import ShardRecord, ShardStatus


class RunProgress:
    def __init__(self, total_shards: int, total_chunks: int, *, enabled: bool = True) -> None:
        self.total_shards = total_shards
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self.bar = None
        if enabled and self.tty:
            self.bar = tqdm(
                total=total_chunks or None,
                unit="chunk",
                unit_scale=True,
                dynamic_ncols=True,
                desc="converting",
                file=sys.stderr,
            )
        self.started = time.monotonic()
        self.last_line = 0.0
        self.done_at_start: int | None = None

    def __call__(self, records: list[ShardRecord]) -> None:
        if not self.enabled:
            return
        finished = sum(1 for r in records if r.status.finished)
        failed = sum(1 for r in records if r.status == ShardStatus.FAILED)
        running = sum(1 for r in records if r.status == ShardStatus.RUNNING)
        chunks = sum(
            r.chunks_done
            for r in records
            if r.status in (ShardStatus.RUNNING, ShardStatus.DONE, ShardStatus.EMPTY)
        )
        if self.done_at_start is None:
            self.done_at_start = chunks
        shards = f"shards {finished}/{self.total_shards} ({running} running, {failed} failed)"
        if self.bar is not None:
            self.bar.n = chunks
            self.bar.set_postfix_str(shards, refresh=False)
            self.bar.refresh()
            return
        now = time.monotonic()
        if now - self.last_line >= 10 or finished + failed == self.total_shards:
            self.last_line = now
            rate = (chunks - self.done_at_start) / max(1e-9, now - self.started)
            print(
                f"progress: {shards}, {chunks:,} chunks, {rate:,.0f} chunks/s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

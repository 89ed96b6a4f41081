"""Progress display for long runs: a tqdm bar on a terminal, a line every 10 s elsewhere."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from dvid2ng.backends.base import ShardRecord, ShardStatus

LINE_EVERY_S = 10.0
_COUNTED = (ShardStatus.RUNNING, ShardStatus.DONE, ShardStatus.EMPTY)


class RunProgress:
    """Called with the run's shard records each time the dispatcher polls the state."""

    def __init__(self, total_shards: int, total_chunks: int, *, enabled: bool = True) -> None:
        self.total_shards = total_shards
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(
                total=total_chunks or None,
                unit="chunk",
                unit_scale=True,
                dynamic_ncols=True,
                desc="converting",
                file=sys.stderr,
            )
        self.started = time.monotonic()
        self.last_line = self.started
        self.chunks_at_start: int | None = None
        self.text = ""
        self.printed = ""

    def __call__(self, records: list[ShardRecord]) -> None:
        if not self.enabled:
            return
        finished = sum(1 for r in records if r.status.finished)
        failed = sum(1 for r in records if r.status == ShardStatus.FAILED)
        running = sum(1 for r in records if r.status == ShardStatus.RUNNING)
        chunks = sum(r.chunks_done for r in records if r.status in _COUNTED)
        if self.chunks_at_start is None:
            self.chunks_at_start = chunks  # shards finished by earlier runs do not count as speed
        shards = f"shards {finished}/{self.total_shards} ({running} running, {failed} failed)"
        if self.bar is not None:
            self.bar.n = chunks
            self.bar.set_postfix_str(shards, refresh=False)
            self.bar.refresh()
            return
        now = time.monotonic()
        rate = (chunks - self.chunks_at_start) / max(1e-9, now - self.started)
        self.text = f"progress: {shards}, {chunks:,} chunks, {rate:,.0f} chunks/s"
        if now - self.last_line >= LINE_EVERY_S:
            self.last_line = now
            self._print()

    def _print(self) -> None:
        if self.text and self.text != self.printed:
            print(self.text, file=sys.stderr, flush=True)
            self.printed = self.text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._print()  # the final state, once

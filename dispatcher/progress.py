"""Progress display for long runs: a tqdm bar on a terminal, a line every 10 s elsewhere.

Fed the run's summary rows (aggregates, never a listing of every shard) each time the
dispatcher polls the state. Speed counts only chunks converted since this display started, so
a resumed run does not claim the earlier run's work as its own.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from dvid2ng.backends.base import ShardStatus, SummaryRow

if TYPE_CHECKING:  # tqdm costs ~0.1 s to import: only a terminal's bar pays it
    from tqdm import tqdm

LINE_EVERY_S = 10.0


class RunProgress:
    def __init__(self, total_shards: int, total_chunks: int, *, enabled: bool = True) -> None:
        self.total_shards = total_shards
        self.enabled = enabled
        self.total_chunks = total_chunks
        self.bar: tqdm | None = None
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last_line = self.started
        self.chunks_at_start: int | None = None
        self.text = ""
        self.printed = ""

    def __call__(self, rows: list[SummaryRow]) -> None:
        if not self.enabled:
            return
        by = {s: 0 for s in ShardStatus}
        for r in rows:
            by[r.status] += r.shards
        finished = by[ShardStatus.DONE] + by[ShardStatus.EMPTY]
        # chunks of finished shards plus the progress of running ones; failed attempts' partial
        # counts are not work done
        chunks = sum(
            r.chunks_done
            for r in rows
            if r.status in (ShardStatus.RUNNING, ShardStatus.DONE, ShardStatus.EMPTY)
        )
        if self.chunks_at_start is None:
            self.chunks_at_start = chunks
            if self.tty:  # earlier runs' work shows as done (initial), not as speed
                from tqdm import tqdm

                self.bar = tqdm(
                    total=self.total_chunks or None,
                    initial=chunks,
                    unit="chunk",
                    unit_scale=True,
                    dynamic_ncols=True,
                    desc="converting",
                    file=sys.stderr,
                )
        shards = (
            f"shards {finished}/{self.total_shards} ({by[ShardStatus.RUNNING]} running, "
            f"{by[ShardStatus.FAILED]} failed)"
        )
        if self.bar is not None:
            self.bar.update(chunks - self.bar.n)
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

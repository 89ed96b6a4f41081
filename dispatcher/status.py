"""`dvid2ng status`: where a conversion stands, from the state's aggregates (never a listing of
every shard), for a person (a table) or a script (`--json`, and an exit code it can trust:
0 every shard finished, 1 some shard failed or unfinished, 2 no such state or run)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from dvid2ng.backends.base import ShardRecord, ShardStatus, StateStore, SummaryRow

RECENT_SECONDS = 600.0  # throughput is measured over the last 10 minutes
IN_FLIGHT_SHOWN = 20
FAILED_SHOWN = 20


@dataclass
class StatusReport:
    run_id: str
    config: dict[str, Any]
    rows: list[SummaryRow]
    in_flight: list[ShardRecord]
    failed: list[ShardRecord]
    recent_shards: int
    recent_chunks: int
    now: float
    stale_after_s: float

    def count(self, *statuses: ShardStatus) -> int:
        return sum(r.shards for r in self.rows if r.status in statuses)

    @property
    def finished(self) -> bool:
        return self.count(ShardStatus.QUEUED, ShardStatus.RUNNING, ShardStatus.FAILED) == 0

    @property
    def chunks_expected(self) -> int:
        return sum(r.chunks_expected for r in self.rows)

    @property
    def chunks_done(self) -> int:
        """Chunks of finished shards plus running progress; failed attempts do not count."""
        done = (ShardStatus.DONE, ShardStatus.EMPTY, ShardStatus.RUNNING)
        return sum(r.chunks_done for r in self.rows if r.status in done)

    @property
    def chunks_per_s(self) -> float:
        return self.recent_chunks / RECENT_SECONDS

    @property
    def eta_seconds(self) -> float | None:
        left = max(0, self.chunks_expected - self.chunks_done)
        if left == 0:
            return 0.0
        return left / self.chunks_per_s if self.chunks_per_s > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "config": self.config,
            "finished": self.finished,
            "counts": {s.value: self.count(s) for s in ShardStatus},
            "chunks_expected": self.chunks_expected,
            "chunks_done": self.chunks_done,
            "bytes_written": sum(r.bytes_written for r in self.rows if r.status.finished),
            "chunks_per_s": round(self.chunks_per_s, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds),
            "by_scale_tier": [
                {
                    "scale": r.scale,
                    "tier": r.tier,
                    "status": r.status.value,
                    "shards": r.shards,
                    "chunks_expected": r.chunks_expected,
                    "chunks_done": r.chunks_done,
                    "bytes_written": r.bytes_written,
                }
                for r in self.rows
            ],
            "in_flight": [self._flight(r) for r in self.in_flight],
            "failed": [{"key": r.key, "tier": r.tier, "error": r.error} for r in self.failed],
            "unplanned_scales": self.config.get("unplanned_scales", []),
        }

    def _flight(self, r: ShardRecord) -> dict[str, Any]:
        age = max(0.0, self.now - r.heartbeat_at)
        return {
            "key": r.key,
            "tier": r.tier,
            "worker": r.worker,
            "attempt": r.attempts,
            "heartbeat_age_s": round(age, 1),
            "stale": age > self.stale_after_s,
            "chunks_done": r.chunks_done,
            "chunks_expected": r.chunks_expected,
            "peak_rss_bytes": r.peak_rss_bytes,
        }


def gather(
    state: StateStore, run_id: str, *, stale_after_s: float, now: float | None = None
) -> StatusReport:
    now = time.time() if now is None else now
    shards, chunks = state.finished_since(run_id, now - RECENT_SECONDS)
    return StatusReport(
        run_id=run_id,
        config=state.get_run(run_id) or {},
        rows=state.summary(run_id),
        in_flight=state.list(run_id, status=ShardStatus.RUNNING, limit=IN_FLIGHT_SHOWN),
        failed=state.list(run_id, status=ShardStatus.FAILED, limit=FAILED_SHOWN),
        recent_shards=shards,
        recent_chunks=chunks,
        now=now,
        stale_after_s=stale_after_s,
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (nothing finished in the last 10 min)"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def render(report: StatusReport) -> str:
    cfg = report.config
    lines = [f"run {report.run_id}: {cfg.get('source', '?')} -> {cfg.get('dest', '?')}"]
    statuses = list(ShardStatus)
    header = f"  {'scale':>5} {'tier':<6} " + " ".join(f"{s.value:>8}" for s in statuses)
    lines.append(header + f" {'chunks done / expected':>26}")
    keys = sorted({(r.scale, r.tier) for r in report.rows})
    for scale, tier in keys:
        rows = [r for r in report.rows if (r.scale, r.tier) == (scale, tier)]
        n = {s: sum(r.shards for r in rows if r.status is s) for s in statuses}
        done = sum(r.chunks_done for r in rows if r.status is not ShardStatus.FAILED)
        expected = sum(r.chunks_expected for r in rows)
        lines.append(
            f"  {scale:>5} {tier:<6} "
            + " ".join(f"{n[s]:>8}" for s in statuses)
            + f" {done:>12,} / {expected:<12,}"
        )
    total = {s: report.count(s) for s in statuses}
    lines.append(
        f"  {'all':>5} {'':<6} "
        + " ".join(f"{total[s]:>8}" for s in statuses)
        + f" {report.chunks_done:>12,} / {report.chunks_expected:<12,}"
    )
    lines.append(
        f"  throughput: {report.chunks_per_s:,.{0 if report.chunks_per_s >= 100 else 1}f} "
        "chunks/s over the last 10 min "
        f"({report.recent_shards} shards); ETA {_duration(report.eta_seconds)}"
    )
    for f in (report._flight(r) for r in report.in_flight):
        mem = f" peak {f['peak_rss_bytes'] / 2**20:,.0f} MiB" if f["peak_rss_bytes"] else ""
        flag = "  STALE (worker died?)" if f["stale"] else ""
        lines.append(
            f"  running {f['key']} on {f['tier']} by {f['worker']} (attempt {f['attempt']}): "
            f"{f['chunks_done']:,}/{f['chunks_expected']:,} chunks, heartbeat "
            f"{f['heartbeat_age_s']:.0f} s ago{mem}{flag}"
        )
    for r in report.failed:
        lines.append(f"  FAILED {r.key} ({r.tier}): {describe_error(r.error)}")
    more = report.count(ShardStatus.FAILED) - len(report.failed)
    if more > 0:
        lines.append(f"  ... and {more} more failed (dvid2ng errors lists them all)")
    unplanned = cfg.get("unplanned_scales") or []
    if unplanned:
        from dvid2ng.dispatcher.plan import format_ranges

        lines.append(
            f"  scales {format_ranges(unplanned)} of the spec have no data yet (not in SOURCE, "
            "not planned)"
        )
    lines.append(
        "  finished: every shard is done or empty"
        if report.finished
        else "  not finished: re-run the conversion to resume / retry"
    )
    return "\n".join(lines)


def describe_error(error: dict[str, Any] | None) -> str:
    err = error or {}
    parts = [
        str(p)
        for p in (
            err.get("file"),
            f"chunk {tuple(err['chunk'])}" if err.get("chunk") else None,
            err.get("cause", "?"),
        )
        if p
    ]
    kind = f"[{err['kind']}] " if err.get("kind") else ""
    return kind + ": ".join(parts)


def exit_code(report: StatusReport) -> int:
    return 0 if report.finished else 1


def show(
    state: StateStore,
    run_id: str,
    *,
    as_json: bool,
    watch: bool,
    stale_after_s: float,
    every_s: float = 5.0,
) -> int:
    while True:
        report = gather(state, run_id, stale_after_s=stale_after_s)
        if as_json:
            print(json.dumps(report.to_json(), indent=2, default=str), flush=True)
        else:
            if watch and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(render(report), flush=True)
        if not watch or report.finished:
            return exit_code(report)
        try:
            time.sleep(every_s)
        except KeyboardInterrupt:
            return exit_code(report)

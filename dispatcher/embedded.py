"""The embedded default: the whole fleet on one machine.

SQLite stands in for Pub/Sub (queue) and Firestore (state); N worker processes run the same
`worker.loop.Worker` the cloud runs. The queue is rebuilt on every invocation from the state
(which is the truth), so re-running a command resumes: finished shards are skipped, failed and
unfinished ones are queued again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dvid2ng.backends import open_embedded
from dvid2ng.backends.base import ShardRecord, ShardStatus
from dvid2ng.backends.sqlite_queue import SqliteQueue
from dvid2ng.dispatcher.plan import Plan, PlanError
from dvid2ng.schemas.tiers import tier_names
from dvid2ng.worker.output import is_local, write_info

EMBEDDED_LEASE_SECONDS = 60.0
EMBEDDED_ATTEMPTS_PER_TIER = 2


def default_state_dir(dest: str) -> Path:
    if is_local(dest):
        return Path(dest.removeprefix("file://")).resolve() / ".dvid2ng"
    safe = dest.replace("://", "_").replace("/", "_")
    return Path.home() / ".cache" / "dvid2ng" / safe


@dataclass
class RunSummary:
    run_id: str
    state_dir: Path
    wall_seconds: float
    counts: dict[ShardStatus, int]
    chunks: int
    chunks_written: int
    bytes_written: int
    failed: list[ShardRecord] = field(default_factory=list)
    interrupted: bool = False
    skipped_finished: int = 0

    @property
    def ok(self) -> bool:
        return (
            not self.failed
            and not self.interrupted
            and self.counts[ShardStatus.QUEUED] == 0
            and self.counts[ShardStatus.RUNNING] == 0
        )

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.ok else 1


def _claim_run(state_dir: Path, plan: Plan) -> None:
    """One conversion per destination: refuse to mix a different run into DEST's state."""
    marker = state_dir / "run.json"
    config = {
        "run_id": plan.run_id,
        "source": str(plan.source.resolve()),
        "label_mode": plan.label_mode,
    }
    if marker.exists():
        old = json.loads(marker.read_text())
        if old.get("run_id") != plan.run_id:
            raise PlanError(
                f"{plan.dest} already holds a different conversion (source {old.get('source')}, "
                f"labels {old.get('label_mode')}); use a new destination or delete it"
            )
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(config, indent=2))


def _worker_main(
    state_dir: str, index: int, stop, gzip_level: int, attempts: int, log_level: str
) -> None:
    """Entry point of one embedded worker process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into `stop`
    from dvid2ng.dispatcher.logs import configure_logging
    from dvid2ng.worker.loop import Worker

    configure_logging(level=log_level, file=Path(state_dir) / "logs" / f"worker-{index}.jsonl")
    queue = SqliteQueue(Path(state_dir) / "queue.sqlite", max_delivery_attempts=attempts)
    _, state = open_embedded(Path(state_dir))
    worker = Worker(
        queue,
        state,
        worker_id=f"local-{index}-{os.getpid()}",
        gzip_level=gzip_level,
        lease_seconds=EMBEDDED_LEASE_SECONDS,
        stale_after_s=EMBEDDED_LEASE_SECONDS,
        should_stop=stop.is_set,
    )
    worker.run(tier_names(), exit_when_idle=True)


def run_embedded(
    plan: Plan,
    *,
    workers: int = 1,
    state_dir: Path | None = None,
    gzip_level: int = 6,
    attempts_per_tier: int = EMBEDDED_ATTEMPTS_PER_TIER,
    progress: Callable[[list[ShardRecord]], None] | None = None,
    log_level: str = "info",
) -> RunSummary:
    started = time.monotonic()
    state_dir = state_dir or default_state_dir(plan.dest)
    write_info(plan.dest, plan.spec.info())
    _claim_run(state_dir, plan)
    with _exclusive(state_dir):
        return _run_locked(
            plan, started, workers, state_dir, gzip_level, attempts_per_tier, progress, log_level
        )


@contextlib.contextmanager
def _exclusive(state_dir: Path):
    """One dispatcher per destination at a time (two would race for the same shards)."""
    with open(state_dir / "run.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PlanError(
                f"another dvid2ng run is converting into {state_dir.parent} right now"
            ) from None
        yield


def _release_orphans(state, run_id: str) -> int:
    """Shards left `running` by a run that was killed outright: no worker of that run can be
    alive (we hold the lock), so give them back now instead of waiting for their leases."""
    orphans = state.list(run_id, status=ShardStatus.RUNNING)
    for r in orphans:
        if state.claim(run_id, r.key, "dispatcher", r.tier, 0.0) is not None:
            state.release(run_id, r.key, "dispatcher")
    return len(orphans)


def _run_locked(
    plan, started, workers, state_dir, gzip_level, attempts_per_tier, progress, log_level
) -> RunSummary:
    queue_path = state_dir / "queue.sqlite"
    for suffix in ("", "-wal", "-shm"):  # the queue is rebuilt from the state on every run
        Path(str(queue_path) + suffix).unlink(missing_ok=True)
    queue = SqliteQueue(queue_path, max_delivery_attempts=attempts_per_tier)
    _, state = open_embedded(state_dir)
    state.put_run(
        plan.run_id, {"source": str(plan.source), "dest": plan.dest, "label_mode": plan.label_mode}
    )
    state.plan(plan.records())
    _release_orphans(state, plan.run_id)
    skipped = 0
    for task in plan.tasks:
        rec = state.get(plan.run_id, task.key)
        if rec is not None and rec.status.finished:
            skipped += 1
            continue
        queue.publish(task.tier, task.to_json(), {"run_id": plan.run_id, "key": task.key})
    queue.close()

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = []
    interrupted = False
    if skipped < len(plan.tasks):

        def spawn(index: int) -> mp.process.BaseProcess:
            args = (str(state_dir), index, stop, gzip_level, attempts_per_tier, log_level)
            proc = ctx.Process(target=_worker_main, args=args, daemon=True)
            proc.start()
            return proc

        procs = [spawn(i) for i in range(workers)]
        interrupted = _supervise(procs, spawn, stop, state, plan, progress)
    records = state.list(plan.run_id)
    counts = state.counts(plan.run_id)
    planned = {t.key for t in plan.tasks}
    mine = [r for r in records if r.key in planned]
    return RunSummary(
        run_id=plan.run_id,
        state_dir=state_dir,
        wall_seconds=time.monotonic() - started,
        counts=counts,
        chunks=sum(r.chunks_done for r in mine if r.status.finished),
        chunks_written=sum(r.chunks_written for r in mine),
        bytes_written=sum(r.bytes_written for r in mine),
        failed=[r for r in mine if r.status == ShardStatus.FAILED],
        interrupted=interrupted,
        skipped_finished=skipped,
    )


def _supervise(procs, spawn, stop, state, plan: Plan, progress) -> bool:
    """Wait for the workers, reporting progress; Ctrl-C stops them cleanly (a second one kills)."""
    interrupted = False
    respawns = 2 * len(procs)
    try:
        while any(p.is_alive() for p in procs):
            if progress is not None:
                progress(state.list(plan.run_id))
            for i, p in enumerate(procs):
                # A worker that died abnormally (killed, segfault) is replaced while work remains;
                # its shard comes back when the lease expires.
                if (
                    not p.is_alive()
                    and p.exitcode not in (0, None)
                    and respawns > 0
                    and not stop.is_set()
                ):
                    respawns -= 1
                    procs[i] = spawn(i)
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        print(
            "\ninterrupted: letting workers drop their current shard (nothing half-written); "
            "Ctrl-C again to kill",
            file=sys.stderr,
        )
        try:
            for p in procs:
                p.join(timeout=60)
        except KeyboardInterrupt:
            for p in procs:
                p.kill()
    for p in procs:
        p.join()
    if progress is not None:
        progress(state.list(plan.run_id))
    return interrupted

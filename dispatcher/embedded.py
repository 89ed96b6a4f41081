"""The embedded default: the whole fleet on one machine.

SQLite stands in for Pub/Sub (queue) and Firestore (state); N worker processes run the same
`dvid2ng.worker.loop.Worker` the cloud runs. The queue is rebuilt on every invocation from the
state (which is the truth) and the files (which are checked before the state is believed), so
re-running a command resumes: finished shards whose output file is intact and whose source is
unchanged are skipped; everything else is queued again.

The supervisor (this process) does what Cloud Run does for the fleet, faster because it knows
its workers: a worker process that dies (the OOM killer's SIGKILL) is noticed at once, its
shard is marked as having died on its tier (so the next attempt goes one tier up) and handed
back without waiting for a lease, and a fresh worker process takes its place. SIGINT and
SIGTERM stop every worker before its next commit; workers never outlive the run (they get
SIGTERM when the supervisor dies, however it dies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dvid2ng.backends import QUEUE_FILE, STATE_FILE
from dvid2ng.backends.base import (
    TERMINAL,
    ShardRecord,
    ShardStatus,
    SummaryRow,
    counts_by_status,
)
from dvid2ng.backends.sqlite_queue import SqliteQueue, StateFileVersionError
from dvid2ng.backends.sqlite_state import SqliteStateStore
from dvid2ng.dispatcher.early_workers import (
    EMBEDDED_ATTEMPTS_PER_TIER,
    EarlyWorkers,
    WorkerSettings,
    die_with_parent,
    worker_environment,
)
from dvid2ng.dispatcher.plan import Plan, PlanError, source_name
from dvid2ng.dispatcher.resume import plan_publish, release_orphans
from dvid2ng.schemas.tiers import tier_names
from dvid2ng.worker.output import OutputError, is_local, write_info
from dvid2ng.worker.policy import KIND_DIED, WorkerTiming

# One machine: heartbeats are cheap, and a dead worker is reported by the supervisor anyway.
EMBEDDED_TIMING = WorkerTiming(
    heartbeat_seconds=1.0,
    lease_seconds=60.0,
    stale_after_s=30.0,
    retry_base_seconds=0.5,
    retry_max_seconds=4.0,
    held_delay_seconds=2.0,
    unsupported_delay_seconds=5.0,
    idle_backoff_seconds=0.2,
    backend_retry_seconds=1.0,
)
STARTUP_DEATHS_ALLOWED = 3  # workers that die holding no shard (broken install): give up after
STOP_GRACE_SECONDS = 60.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def default_state_dir(dest: str) -> Path:
    if dest.startswith("memory://"):
        raise PlanError(
            "memory:// cannot hold a conversion: every worker process would see its own empty "
            "memory; use a folder (or gs://)"
        )
    if is_local(dest):
        return Path(dest.removeprefix("file://")).absolute() / ".dvid2ng"
    safe = dest.replace("://", "_").replace("/", "_")
    return Path.home() / ".cache" / "dvid2ng" / safe


def worker_id(index: int, pid: int) -> str:
    return f"local-{index}-{pid}"


@dataclass
class RunSummary:
    run_id: str
    state_dir: Path
    wall_seconds: float
    counts: dict[ShardStatus, int]
    chunks: int  # chunks of shards finished during this invocation
    chunks_written: int  # stored chunks of every finished shard of the run
    bytes_written: int  # bytes of every finished shard of the run
    failed: list[ShardRecord] = field(default_factory=list)
    interrupted_by: int = 0  # the signal that stopped the run (0: none)
    skipped_finished: int = 0  # finished before this invocation, checked and kept
    reconverted: list[str] = field(default_factory=list)  # finished before, but not trusted
    notes: list[str] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return bool(self.interrupted_by)

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
            return 128 + self.interrupted_by
        return 0 if self.ok else 1


# -- the state folder ----------------------------------------------------------------------------


def prepare_state_dir(dest: str) -> Path:
    """Create DEST/.dvid2ng (or the cache folder of a gs:// DEST), with one clear line for what
    a user can get wrong: DEST is a file, is read-only, the disk is full."""
    state_dir = default_state_dir(dest)
    for parent in (state_dir.parent, *state_dir.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise PlanError(f"DEST {parent} is a file, not a folder; choose a folder")
            break
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise PlanError(f"cannot write the run state to {state_dir}: {_os_cause(e)}") from None
    if (state_dir / "run.json").exists():
        _read_marker(state_dir / "run.json")  # a damaged one is reported before anything runs
    return state_dir


def _read_marker(marker: Path) -> dict:
    try:
        old = json.loads(marker.read_text())
        if not isinstance(old, dict) or not isinstance(old.get("run_id"), str):
            raise ValueError("not a JSON object with a run_id")
    except (ValueError, OSError) as e:
        raise PlanError(
            f"{marker} is damaged ({e}); delete it to start the conversion state over "
            "(finished shard files are checked again, not lost)"
        ) from None
    return old


def _os_cause(e: OSError) -> str:
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{e.strerror} (DEST must be writable)"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{e.strerror} (free some space and re-run)"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{e.strerror} (a file stands where a folder must be)"
    return e.strerror or str(e)


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """One dispatcher per destination at a time (two would race for the same shards)."""
    try:
        lock = open(state_dir / "run.lock", "w")  # noqa: SIM115 - held for the whole run
    except OSError as e:
        raise PlanError(f"cannot create {state_dir / 'run.lock'}: {_os_cause(e)}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PlanError(
                f"another dvid2ng run is converting into {state_dir.parent} right now"
            ) from None
        yield


def _claim_run(state_dir: Path, plan: Plan) -> str:
    """One conversion per destination: refuse to mix a different run into DEST's state.

    Returns the run id to use: the recorded one when DEST holds the same conversion under
    another path (a copied or moved volume: the run id names the destination, but the state
    travels inside it, and `info` was already found equal to the spec)."""
    marker = state_dir / "run.json"
    config = {
        "run_id": plan.run_id,
        "source": source_name(plan.source),
        "label_mode": plan.label_mode,
    }
    if plan.z_compress:  # verify reads it (it changes how file names map to shards)
        config["z_compress"] = plan.z_compress
    if marker.exists():
        old = _read_marker(marker)
        if old.get("run_id") == plan.run_id:
            return plan.run_id
        same = {k: old.get(k) for k in ("source", "label_mode", "z_compress")} == {
            k: config.get(k) for k in ("source", "label_mode", "z_compress")
        }
        if same:
            return str(old["run_id"])
        raise PlanError(
            f"{plan.dest} already holds a different conversion (source {old.get('source')}, "
            f"labels {old.get('label_mode')}, z-compress {old.get('z_compress', 0)}; this run: "
            f"source {config['source']}, labels {plan.label_mode}, z-compress "
            f"{plan.z_compress}); use a new destination or delete it"
        )
    try:
        marker.write_text(json.dumps(config, indent=2))
    except OSError as e:
        raise PlanError(f"cannot write {marker}: {_os_cause(e)}") from None
    return plan.run_id


def open_state(state_dir: Path) -> SqliteStateStore:
    try:
        return SqliteStateStore(state_dir / STATE_FILE)
    except StateFileVersionError as e:
        raise PlanError(str(e)) from None
    except sqlite3.DatabaseError as e:
        raise PlanError(
            f"cannot use the run state {state_dir / STATE_FILE}: {e} (disk full? damaged? "
            "delete it to start over: finished shard files are checked again)"
        ) from None


def read_run_id(state_dir: Path) -> str:
    marker = state_dir / "run.json"
    if not marker.exists():
        raise PlanError(f"no conversion state in {state_dir}")
    return _read_marker(marker)["run_id"]


# -- one run -------------------------------------------------------------------------------------


def run_embedded(
    plan: Plan,
    *,
    workers: int = 1,
    threads: int = 1,
    state_dir: Path | None = None,
    gzip_level: int = 6,
    attempts_per_tier: int = EMBEDDED_ATTEMPTS_PER_TIER,
    progress: Callable[[list[SummaryRow]], None] | None = None,
    log_level: str = "info",
    early: EarlyWorkers | None = None,
) -> RunSummary:
    """Convert `plan` with `workers` worker processes of `threads` converter threads each.
    `early`: worker processes started (and warmed up) before the plan was made, used first."""
    started = time.monotonic()
    settings = WorkerSettings(gzip_level, attempts_per_tier, log_level, threads)
    if state_dir is None:
        state_dir = prepare_state_dir(plan.dest)
    else:
        state_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(state_dir):
        # Under the lock: two runs with different specs cannot both find DEST empty.
        try:
            write_info(plan.dest, plan.spec.info())
        except OutputError as e:
            raise PlanError(str(e)) from None
        except OSError as e:
            raise PlanError(f"cannot write {plan.dest}/info: {_os_cause(e)}") from None
        except ValueError as e:  # TensorStore reports storage failures as ValueError
            raise PlanError(f"cannot write {plan.dest}/info: {e}") from None
        run_id = _claim_run(state_dir, plan)
        if run_id != plan.run_id:  # a copied or moved volume resumes its recorded run
            plan = dataclasses.replace(
                plan,
                run_id=run_id,
                tasks=[dataclasses.replace(t, run_id=run_id) for t in plan.tasks],
            )
        return _run_locked(plan, started, workers, state_dir, settings, progress, early)


def _run_locked(plan, started, workers, state_dir, settings, progress, early) -> RunSummary:
    attempts_per_tier = settings.attempts
    queue_path = state_dir / QUEUE_FILE
    for suffix in ("", "-wal", "-shm"):  # the queue is rebuilt from the state on every run
        Path(str(queue_path) + suffix).unlink(missing_ok=True)
    state = open_state(state_dir)
    queue = SqliteQueue(queue_path, max_delivery_attempts=attempts_per_tier)
    try:
        state.put_run(plan.run_id, plan.run_config())
        state.plan(plan.records())
        release_orphans(state, plan.run_id)  # we hold DEST's lock: no worker of it is alive
        todo = plan_publish(plan, state, queue.tiers, stale_after_s=0.0)
        for tier, messages in todo.by_tier.items():
            queue.publish_many(tier, messages)
    except sqlite3.OperationalError as e:
        raise PlanError(f"cannot use the run state in {state_dir}: {e}") from None
    baseline = _finished_chunks(state.summary(plan.run_id))
    interrupted_by = 0
    if todo.messages:
        interrupted_by = _Supervisor(state_dir, plan, state, queue, workers, settings, early).run(
            progress
        )
    elif progress is not None:
        progress(state.summary(plan.run_id))
    rows = [r for r in state.summary(plan.run_id) if r.scale in plan.scales]  # this plan's
    planned = {t.key for t in plan.tasks}
    failed = [r for r in state.list(plan.run_id, status=ShardStatus.FAILED) if r.key in planned]
    finished = [r for r in rows if r.status.finished]
    summary = RunSummary(
        run_id=plan.run_id,
        state_dir=state_dir,
        wall_seconds=time.monotonic() - started,
        counts=counts_by_status(rows),
        chunks=_finished_chunks(rows) - baseline,
        chunks_written=sum(r.chunks_written for r in finished),
        bytes_written=sum(r.bytes_written for r in finished),
        failed=failed,
        interrupted_by=interrupted_by,
        skipped_finished=todo.kept,
        reconverted=todo.reconverted,
        notes=[n for n in [*plan.notes, plan.missing_scales_note()] if n],
    )
    queue.close()
    state.close()
    return summary


def _finished_chunks(rows: list[SummaryRow]) -> int:
    return sum(r.chunks_done for r in rows if r.status.finished)


# -- the supervisor ------------------------------------------------------------------------------


def embedded_parallelism(
    workers: int | None, threads: int | None, shards: int, cpus: int | None = None
) -> tuple[int, int]:
    """(worker processes, converter threads each) for a run on this machine, so that workers x
    threads ~= the CPUs this process may use and no core converts for two processes:

    * neither given: one worker per CPU, but no more workers than shards; the CPUs left over
      go to the workers as threads (1 shard on 8 CPUs: 1 x 8; 3 shards: 3 x 2; 100: 8 x 1);
    * --workers N: CPUs // N threads each (at least 1);
    * --threads T (or $DVID2NG_THREADS): CPUs // T workers (at least 1, at most one per shard);
    * both: as given (the user may oversubscribe on purpose).
    Processes scale best (no shared GIL), threads keep one big shard from leaving cores idle.
    """
    from dvid2ng.worker.cpus import available_cpus, threads_from_env

    cpus = cpus or available_cpus()
    threads = threads or threads_from_env()
    most = max(1, shards)
    if workers is None:
        workers = max(1, min(most, cpus // threads if threads else cpus))
    if threads is None:
        threads = max(1, cpus // workers)
    return workers, threads


def _worker_main(state_dir: str, index: int, stop, settings: WorkerSettings, parent: int) -> None:
    """Entry point of one embedded worker process (spawned)."""
    from dvid2ng.worker import startup_gc

    startup_gc.pause()  # until its first chunks; a no-op in an early worker, which is warm
    die_with_parent(parent)
    gzip_level, attempts, log_level = settings.gzip_level, settings.attempts, settings.log_level
    local_stop = [False]

    def on_term(signum, frame) -> None:  # the supervisor's death, or `kill`: stop cleanly
        local_stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into `stop`
    from dvid2ng.dispatcher.logs import configure_logging
    from dvid2ng.worker.loop import Worker
    from dvid2ng.worker.memory import memory_budget_bytes

    configure_logging(level=log_level, file=Path(state_dir) / "logs" / f"worker-{index}.jsonl")
    queue = SqliteQueue(Path(state_dir) / QUEUE_FILE, max_delivery_attempts=attempts)
    state = SqliteStateStore(Path(state_dir) / STATE_FILE)

    def should_stop() -> bool:
        return local_stop[0] or stop.is_set() or os.getppid() != parent

    worker = Worker(
        queue,
        state,
        worker_id=worker_id(index, os.getpid()),
        gzip_level=gzip_level,
        threads=settings.threads,
        timing=EMBEDDED_TIMING,
        memory_budget=memory_budget_bytes(),
        should_stop=should_stop,
    )
    worker.run(tier_names())
    queue.close()
    state.close()
    from dvid2ng.worker.exit import exit_now

    exit_now(0)  # without the interpreter's teardown (0.3-0.4 s): the supervisor waits for it


class _Supervisor:
    def __init__(self, state_dir, plan, state, queue, workers, settings, early) -> None:
        self.state_dir, self.plan, self.state, self.queue = state_dir, plan, state, queue
        self.n = workers
        self.settings: WorkerSettings = settings
        self.early: EarlyWorkers | None = early
        self.ctx = mp.get_context("spawn")
        self.stop = early.stop if early is not None else self.ctx.Event()
        self.procs: list[mp.process.BaseProcess] = []
        self.startup_deaths = 0

    def spawn(self, index: int) -> mp.process.BaseProcess:
        if self.early is not None:
            proc = self.early.hand_over(str(self.state_dir), index, self.settings)
            if proc is not None:
                return proc
        args = (str(self.state_dir), index, self.stop, self.settings, os.getpid())
        with worker_environment():
            proc = self.ctx.Process(target=_worker_main, args=args, daemon=True)
            proc.start()
        return proc

    def run(self, progress) -> int:
        """Supervise until the queue is empty; returns the signal that stopped it (0: none)."""
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        interrupted_by = 0
        try:
            self.procs = [self.spawn(i) for i in range(self.n)]
            if self.early is not None:
                self.early.close()  # any left over are not needed
            self._watch(progress)
        except KeyboardInterrupt as e:
            interrupted_by = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
            self._stop_workers(signal.Signals(interrupted_by).name)
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop.set()
            for p in self.procs:  # never leave a worker behind, whatever happened
                p.join(timeout=STOP_GRACE_SECONDS if not interrupted_by else 5)
                if p.is_alive():
                    p.kill()
                    p.join()
            # Every worker is gone: a shard still `running` was held by one we had to kill.
            release_orphans(self.state, self.plan.run_id)
        if progress is not None:
            progress(self.state.summary(self.plan.run_id))
        return interrupted_by

    def _watch(self, progress) -> None:
        started = time.monotonic()
        while True:
            if progress is not None:
                progress(self.state.summary(self.plan.run_id))
            self._replace_dead_workers()
            if all(self.queue.depth(t) == 0 for t in self.queue.tiers):
                return  # every message acked or dead-lettered: all work is settled
            if not any(p.is_alive() for p in self.procs):
                return  # gave up respawning (see _replace_dead_workers)
            # Look often while the run is young (a small run's end is noticed within 0.1 s,
            # not 0.5), then every 0.5 s: the summary query grows with the number of shards.
            time.sleep(0.1 if time.monotonic() - started < 30 else 0.5)

    def _replace_dead_workers(self) -> None:
        for i, p in enumerate(self.procs):
            if p.is_alive() or p.exitcode in (None, 0):
                continue
            held = self._mark_dead(i, p)
            if not held:
                self.startup_deaths += 1
                if self.startup_deaths > STARTUP_DEATHS_ALLOWED:
                    print(
                        f"dvid2ng: worker processes keep dying without taking any work "
                        f"(exit code {p.exitcode}); see {self.state_dir / 'logs'}",
                        file=sys.stderr,
                    )
                    continue
            self.procs[i] = self.spawn(i)

    def _mark_dead(self, index: int, proc: mp.process.BaseProcess) -> int:
        """Record that the shard(s) the dead worker held died on their tier, and hand their
        messages back now. Returns how many it held."""
        wid = worker_id(index, proc.pid or 0)
        code = proc.exitcode or 0
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if code == -signal.SIGKILL:
            how += " (the kernel's out-of-memory killer sends SIGKILL)"
        running = self.state.list(self.plan.run_id, status=ShardStatus.RUNNING)
        held = [r for r in running if r.worker == wid]
        for r in held:
            cause = f"worker process {proc.pid} was {how} while converting this shard on {r.tier}"
            went = self.queue.forward_leased(r.key, cause)
            error = {
                "kind": KIND_DIED,
                "tier": r.tier,
                "attempt": r.attempts,
                "worker": wid,
                "cause": cause,
            }
            up = went if went not in (None, TERMINAL) else None
            self.state.fail(self.plan.run_id, r.key, r.attempts, error, tier=up)
        return len(held)

    def _stop_workers(self, name: str) -> None:
        self.stop.set()
        print(
            f"\n{name}: letting workers drop their current shard (nothing half-written); "
            "Ctrl-C again to kill them",
            file=sys.stderr,
        )
        try:
            for p in self.procs:
                p.join(timeout=STOP_GRACE_SECONDS)
        except KeyboardInterrupt:
            for p in self.procs:
                p.kill()


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


__all__ = [
    "EarlyWorkers",
    "RunSummary",
    "WorkerSettings",
    "default_state_dir",
    "embedded_parallelism",
    "prepare_state_dir",
    "run_embedded",
]

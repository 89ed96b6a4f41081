"""The worker's pull loop: queue.pull -> state.claim -> convert -> state.finish -> ack.

Knows the Queue / StateStore interfaces only, never which backend is plugged in (SQLite on one
machine, Pub/Sub + Firestore in the fleet). The rules that keep the fleet from losing or
duplicating work:
* state is finished BEFORE the message is acked: a crash in between leaves a redelivery that
  finds the shard finished and just acks (no work, no write);
* ownership is fenced: the claim's token goes with every state write, a heartbeat timer keeps
  the claim and the lease alive (also through the commit and the upload), and the token is
  checked right before the shard file is committed: a worker presumed dead never writes;
* bad input (a corrupt block, a poison message) fails the shard and goes to the terminal queue
  at once: retrying cannot help. A full disk likewise: no bigger tier cures it;
* running out of memory, or an earlier attempt on this tier that died without a word (the OOM
  killer), sends the shard to the next tier at once; a worker whose memory budget is below the
  shard's estimate sends it up without trying;
* anything else is transient (storage 5xx, auth refresh, a missing `info`): the shard is
  recorded failed and the message nacked with backoff; the subscription's dead-letter policy
  (the backstop) escalates it after a tier's deliveries, and after the last tier dead-letters;
* a task kind or schema version this worker does not know (a rolling upgrade) is nacked with a
  delay, never dead-lettered;
* asked to stop (SIGTERM, Ctrl-C) a worker abandons its shard before the commit, releases the
  claim and nacks: nothing of the shard is written;
* a failing backend call is logged and retried with backoff; it never ends the loop silently.
"""

from __future__ import annotations

import enum
import gc
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from dvid2ng.backends.base import (
    TERMINAL,
    Claim,
    ClaimStatus,
    Delivery,
    Queue,
    ShardRecord,
    ShardStatus,
    StateStore,
)
from dvid2ng.schemas.spec import VolumeSpec
from dvid2ng.schemas.task import ShardTask, TaskError, UnsupportedTask
from dvid2ng.schemas.tiers import next_tier
from dvid2ng.worker import startup_gc
from dvid2ng.worker.errors import Fenced, InputError, Interrupted, is_disk_full
from dvid2ng.worker.memory import peak_rss_bytes, reset_peak_rss
from dvid2ng.worker.outcome import DEFAULT_GZIP_LEVEL, ShardOutcome
from dvid2ng.worker.output import ScaleStore, io_context, read_info
from dvid2ng.worker.policy import (
    CLOUD_TIMING,
    DEATH_KINDS,
    KIND_DIED,
    KIND_DISK_FULL,
    KIND_INPUT,
    KIND_INTERRUPTED,
    KIND_MEMORY,
    KIND_TOO_BIG,
    KIND_TRANSIENT,
    WorkerTiming,
)
from dvid2ng.worker.sources import task_fingerprint

log = structlog.get_logger("dvid2ng.worker")


class Outcome(enum.StrEnum):
    DONE = "done"
    EMPTY = "empty"
    DUPLICATE = "duplicate"  # already finished: acked, no work
    HELD = "held"  # another live worker has it: nacked with a delay
    FAILED = "failed"  # permanent: recorded and sent to the terminal queue
    RETRY = "retry"  # transient: recorded and nacked with backoff
    ESCALATED = "escalated"  # sent to the next tier (or terminal after the last)
    POISON = "poison"  # not a task: sent to the terminal queue
    DEFERRED = "deferred"  # a task this worker does not understand: nacked for later
    INTERRUPTED = "interrupted"  # stopped before the commit; released and nacked
    FENCED = "fenced"  # lost the claim; nothing written or recorded


def _process_age() -> float | None:
    """Seconds since this process started (Linux), for the start-up figure in the logs."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks = int(fields[19])  # field 22, starttime, in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class _Heartbeat:
    """A timer thread that keeps a claim and its lease alive while the shard converts, commits
    and uploads (heartbeats tied to chunk progress would stop during the commit)."""

    def __init__(
        self,
        queue: Queue,
        state: StateStore,
        delivery: Delivery,
        task: ShardTask,
        token: int,
        timing: WorkerTiming,
        bound: Any,
    ) -> None:
        self.chunks_done = 0
        self.lost = threading.Event()  # the claim is no longer ours: stop, write nothing
        self._stop = threading.Event()
        self._args = (queue, state, delivery, task, token, timing, bound)
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        queue, state, delivery, task, token, timing, bound = self._args
        while not self._stop.wait(timing.heartbeat_seconds):
            try:
                if not state.heartbeat(task.run_id, task.key, token, self.chunks_done):
                    bound.warning("claim_lost", token=token)
                    self.lost.set()
                    return
                queue.extend(delivery, timing.lease_seconds)
            except Exception as e:  # a missed beat is not fatal; many in a row look stale
                bound.warning("heartbeat_failed", cause=f"{type(e).__name__}: {e}")


@dataclass
class Worker:
    queue: Queue
    state: StateStore
    worker_id: str = field(default_factory=default_worker_id)
    gzip_level: int = DEFAULT_GZIP_LEVEL
    threads: int = 1  # converter threads per shard (worker.cpus.default_threads in the CLI)
    timing: WorkerTiming = CLOUD_TIMING
    memory_budget: int | None = None  # bytes this worker may use (None: unknown, no check)
    should_stop: Callable[[], bool] = lambda: False
    sleep: Callable[[float], None] = time.sleep
    _specs: dict[str, VolumeSpec] = field(default_factory=dict)
    _stores: dict[tuple[str, int], ScaleStore] = field(default_factory=dict)
    runs_seen: set[str] = field(default_factory=set)

    # -- the loop ----------------------------------------------------------------------------

    def run(
        self,
        tiers: Sequence[str],
        *,
        exit_when_idle: bool = False,
        idle_seconds: float = 60.0,
    ) -> int:
        """Pull and handle messages until stopped, or (exit_when_idle) until nothing was pulled
        for `idle_seconds` and no shard of a run this worker served is left unfinished. Tiers
        are tried lowest-memory first. Returns the number of messages handled."""
        handled = 0
        last_work = time.monotonic()
        while not self.should_stop():
            try:
                delivery = self._pull_one(tiers)
            except Exception as e:
                log.error("pull_failed", cause=f"{type(e).__name__}: {e}")
                self.sleep(self.timing.backend_retry_seconds)
                continue
            if delivery is None:
                if exit_when_idle and time.monotonic() - last_work >= idle_seconds:
                    if self._runs_finished():
                        break
                    last_work = time.monotonic()  # others are still working: look again later
                self.sleep(self.timing.idle_backoff_seconds)
                continue
            try:
                self.handle(delivery)
            except Exception as e:  # a backend call failed mid-handling: the lease runs out
                log.error(
                    "handle_failed",
                    message_id=delivery.message_id,
                    cause=f"{type(e).__name__}: {e}",
                    traceback=traceback.format_exc(limit=6),
                )
                self._try(lambda d=delivery: self.queue.nack(d, self.timing.retry_delay(1)))
                self.sleep(self.timing.backend_retry_seconds)
            handled += 1
            last_work = time.monotonic()
        return handled

    def _pull_one(self, tiers: Sequence[str]) -> Delivery | None:
        for tier in tiers:
            got = self.queue.pull(tier, max_messages=1, lease_seconds=self.timing.lease_seconds)
            if got:
                return got[0]
        return None

    def _runs_finished(self) -> bool:
        """No shard of the runs this worker has served is queued or running: what Pub/Sub
        cannot tell us (its backlog metric lags), the state can. A worker that has served no
        run yet looks at the newest run of the state instead: started to finish a run whose
        last message is still leased by a worker that was killed (it comes back only when
        that lease runs out), it would otherwise call the run finished and exit first."""
        runs = set(self.runs_seen) or {run_id for run_id, _ in self.state.runs()[:1]}
        for run_id in runs:
            for row in self.state.summary(run_id):
                if row.status in (ShardStatus.QUEUED, ShardStatus.RUNNING) and row.shards:
                    return False
        return True

    @staticmethod
    def _try(fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:
            log.error("backend_call_failed", cause=f"{type(e).__name__}: {e}")

    # -- one delivery ------------------------------------------------------------------------

    def handle(self, delivery: Delivery) -> Outcome:
        """Handle one delivery; returns what happened (for logs and tests)."""
        try:
            task = ShardTask.from_json(delivery.body)
        except UnsupportedTask as e:
            log.warning("unsupported_task", message_id=delivery.message_id, cause=str(e))
            self.queue.nack(delivery, self.timing.unsupported_delay_seconds)
            return Outcome.DEFERRED
        except TaskError as e:
            log.error("poison_message", message_id=delivery.message_id, cause=str(e))
            self.queue.forward(delivery, TERMINAL, f"invalid task message: {e}")
            return Outcome.POISON
        self.runs_seen.add(task.run_id)
        bound = log.bind(
            run=task.run_id, shard=task.key, tier=delivery.tier, attempt=delivery.attempt
        )
        claim = self.state.claim(
            task.run_id, task.key, self.worker_id, delivery.tier, self.timing.stale_after_s
        )
        if claim.status is ClaimStatus.NOT_PLANNED:
            bound.error("unplanned_shard")
            self.queue.forward(
                delivery, TERMINAL, f"shard {task.key} is not planned in run {task.run_id}"
            )
            return Outcome.POISON
        if claim.status is ClaimStatus.FINISHED:
            bound.info("already_finished")
            self.queue.ack(delivery)
            return Outcome.DUPLICATE
        if claim.status is ClaimStatus.HELD:
            holder = claim.record.worker if claim.record else ""
            bound.info("held_by_other_worker", worker=holder)
            self.queue.nack(delivery, self.timing.held_delay_seconds)
            return Outcome.HELD
        death = self._earlier_death(claim, delivery.tier)
        if death:
            return self._escalate(delivery, task, claim.token, death, bound)
        too_big = self._too_big(task)
        if too_big:
            return self._escalate(delivery, task, claim.token, too_big, bound)
        return self._convert(delivery, task, claim.token, bound)

    def _earlier_death(self, claim: Claim, tier: str) -> dict[str, Any] | None:
        """The error to record if an earlier attempt on this tier died (the OOM killer leaves no
        exception: its claim just goes stale), else None."""
        prev: ShardRecord | None = claim.previous
        if prev is None:
            return None
        if prev.status is ShardStatus.RUNNING and prev.tier == tier:
            age = time.time() - prev.heartbeat_at
            return {
                "kind": KIND_DIED,
                "tier": tier,
                "attempt": prev.attempts,
                "worker": prev.worker,
                "cause": f"attempt {prev.attempts} on {tier} ({prev.worker}) stopped sending "
                f"heartbeats {age:.0f} s ago without a word: killed, most likely out of memory",
            }
        err = prev.error or {}
        if err.get("kind") in DEATH_KINDS and err.get("tier") == tier and not prev.status.finished:
            return dict(err)
        return None

    def _too_big(self, task: ShardTask) -> dict[str, Any] | None:
        if not (self.memory_budget and task.memory_bytes > self.memory_budget):
            return None
        return {
            "kind": KIND_TOO_BIG,
            "tier": task.tier,
            "cause": f"needs about {task.memory_bytes / 2**30:.1f} GiB, this worker has "
            f"{self.memory_budget / 2**30:.1f} GiB",
        }

    def _escalate(
        self, delivery: Delivery, task: ShardTask, token: int, error: dict[str, Any], bound: Any
    ) -> Outcome:
        """Send the shard to the next tier (terminal after the last) without converting it."""
        up = next_tier(delivery.tier) if delivery.tier in self.queue.tiers else None
        error = {**error, "tier": error.get("tier") or delivery.tier}
        if up is None:
            bound.error("no_bigger_tier", cause=error["cause"])
            self.state.fail(task.run_id, task.key, token, error)
            self.queue.forward(delivery, TERMINAL, f"{error['cause']}; no bigger tier")
            return Outcome.FAILED
        bound.warning("escalating", to=up, cause=error["cause"])
        self.state.release(task.run_id, task.key, token, error=error, tier=up)
        self.queue.forward(delivery, up, error["cause"])
        return Outcome.ESCALATED

    def _convert(self, delivery: Delivery, task: ShardTask, token: int, bound: Any) -> Outcome:
        reset_peak_rss()
        bound.info("shard_started", source=task.sources[0].arrow if task.sources else "")
        beat = _Heartbeat(self.queue, self.state, delivery, task, token, self.timing, bound)

        def progress(chunks_done: int) -> None:
            if not beat.chunks_done and chunks_done:  # start-up and source latency, once
                startup_gc.resume()  # start-up is over (worker/startup_gc.py)
                bound.info(
                    "first_chunks",
                    chunks=chunks_done,
                    worker_age_s=_process_age(),
                    # garbage collections during the start-up pause (none), and the objects
                    # start-up left out of later ones; None: this process did not pause
                    startup_gc_collections=startup_gc.collections_while_paused(),
                    gc_frozen=gc.get_freeze_count(),
                    # CPU seconds of this process so far: the start-up's work, whatever the
                    # machine's load did to its wall time
                    worker_cpu_s=round(sum(os.times()[:2]), 2),
                )
            beat.chunks_done = chunks_done

        def stop() -> bool:
            return self.should_stop() or beat.lost.is_set()

        def fence() -> bool:
            return not beat.lost.is_set() and self.state.check(task.run_id, task.key, token)

        try:
            with beat:
                outcome = self._run_task(task, progress, stop, fence)
        except BaseException as e:  # every failure is classified and recorded below
            if beat.lost.is_set() and isinstance(e, Interrupted | Fenced):
                e = Fenced(str(e))
            return self._failed(delivery, task, token, e, bound)
        return self._finished(delivery, task, token, outcome, bound)

    def _run_task(self, task, progress, stop, fence) -> ShardOutcome:
        # the converters are imported when needed: until then (the queue, the claim, the
        # destination's info) the worker's main thread never waits for Numba (worker/warm.py)
        if task.kind == "transcode":
            from dvid2ng.worker.transcode import transcode_shard as convert
        elif task.kind == "downsample":
            from dvid2ng.worker.downsample import downsample_task as convert
        else:
            raise InputError(f"task kind {task.kind!r} has no converter in this worker")
        # the transcoder spreads one shard over `threads` threads; downsampling has one
        extra = {"threads": self.threads} if task.kind == "transcode" else {}
        return convert(
            task,
            self._store(task),
            gzip_level=self.gzip_level,
            on_progress=progress,
            should_stop=stop,
            fence=fence,
            **extra,
        )

    def _finished(
        self, delivery: Delivery, task: ShardTask, token: int, out: ShardOutcome, bound: Any
    ) -> Outcome:
        status = ShardStatus.DONE if out.status == "done" else ShardStatus.EMPTY
        recorded = self.state.finish(
            task.run_id,
            task.key,
            token,
            status,
            chunks_done=out.chunks_read,
            chunks_written=out.chunks_written,
            bytes_written=out.bytes_written,
            peak_rss_bytes=peak_rss_bytes(),
            source=task_fingerprint(task),
        )
        if not recorded:  # taken over during the commit: the successor records its own result
            bound.warning("finished_but_fenced", token=token)
        self.queue.ack(delivery)
        bound.info(
            "shard_finished",
            status=status.value,
            chunks=out.chunks_read,
            written=out.chunks_written,
            zero=out.chunks_zero,
            outside=out.chunks_outside,
            bytes=out.bytes_written,
            seconds=round(out.seconds, 3),
            chunks_per_s=round(out.chunks_read / out.seconds, 1) if out.seconds else None,
            peak_rss=peak_rss_bytes(),
        )
        return Outcome(status.value)

    def _failed(
        self, delivery: Delivery, task: ShardTask, token: int, e: BaseException, bound: Any
    ) -> Outcome:
        rss = peak_rss_bytes()
        where = task.sources[0].arrow if task.sources else f"{task.dest}/{task.key}"
        if isinstance(e, Fenced):
            bound.warning("shard_fenced", cause=str(e))
            self.queue.nack(delivery, self.timing.held_delay_seconds)
            return Outcome.FENCED
        if isinstance(e, Interrupted | KeyboardInterrupt):
            bound.warning("shard_interrupted")
            error = {"kind": KIND_INTERRUPTED, "tier": delivery.tier, "cause": "worker stopped"}
            self.state.release(task.run_id, task.key, token, error=error)
            self.queue.nack(delivery)
            if isinstance(e, KeyboardInterrupt):
                raise e
            return Outcome.INTERRUPTED
        if isinstance(e, InputError):
            bound.error("shard_failed", kind=KIND_INPUT, cause=e.describe())
            self.state.fail(
                task.run_id, task.key, token, e.as_record() | {"tier": delivery.tier}, rss
            )
            self.queue.forward(delivery, TERMINAL, e.describe())
            return Outcome.FAILED
        if is_disk_full(e):
            cause = f"no space left on device while writing {task.dest}: {e}"
            bound.error("shard_failed", kind=KIND_DISK_FULL, cause=cause)
            error = {
                "kind": KIND_DISK_FULL,
                "file": task.dest,
                "tier": delivery.tier,
                "cause": cause,
            }
            self.state.fail(task.run_id, task.key, token, error, rss)
            self.queue.forward(delivery, TERMINAL, cause)
            return Outcome.FAILED
        if isinstance(e, MemoryError):
            cause = f"out of memory on {delivery.tier} ({type(e).__name__}: {e})"
            return self._escalate(
                delivery, task, token, {"kind": KIND_MEMORY, "file": where, "cause": cause}, bound
            )
        if not isinstance(e, Exception):
            raise e  # SystemExit and the like: not ours to swallow
        error = {
            "kind": KIND_TRANSIENT,
            "file": where,
            "chunk": None,
            "tier": delivery.tier,
            "cause": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=8),
        }
        bound.error("shard_retry", cause=error["cause"])
        self.state.fail(task.run_id, task.key, token, error, rss)
        self.queue.nack(delivery, self.timing.retry_delay(delivery.attempt))
        return Outcome.RETRY

    def _store(self, task: ShardTask) -> ScaleStore:
        key = (task.dest, task.scale)
        if key not in self._stores:
            if task.dest not in self._specs:
                # A missing or unreadable info is transient (the dispatcher writes it first);
                # a present info that does not parse is the destination's fault: input.
                info = read_info(task.dest)
                try:
                    self._specs[task.dest] = VolumeSpec.from_json(info, source=f"{task.dest}/info")
                except ValueError as e:
                    raise InputError(f"destination info is not usable: {e}") from None
            spec = self._specs[task.dest]
            if task.scale >= len(spec.scales):
                raise InputError(
                    f"scale {task.scale} is not in {task.dest}/info ({len(spec.scales)} scales)"
                )
            self._stores[key] = ScaleStore(task.dest, spec.scales[task.scale], io_context())
        return self._stores[key]


def tiers_from(arg: str, known: Iterable[str]) -> list[str]:
    """`--tier all` or one tier name."""
    known = list(known)
    if arg == "all":
        return known
    if arg not in known:
        raise ValueError(f"unknown tier {arg!r}; choose one of {', '.join(known)} or 'all'")
    return [arg]


__all__ = ["CLOUD_TIMING", "Outcome", "Worker", "WorkerTiming", "tiers_from"]

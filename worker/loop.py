"""The worker's pull loop: queue.pull -> state.claim -> convert -> state.finish -> ack.

Knows the Queue / StateStore interfaces only, never which backend is plugged in. Ordering rules
that keep the fleet from losing or duplicating work:
* state is finished BEFORE the message is acked (a crash in between leaves a redelivery that
  finds the shard done and just acks);
* a permanent input error fails the shard and dead-letters the message at once (never retried);
* anything else fails the shard as transient and nacks: the queue redelivers, escalates to the
  next memory tier after the tier's attempts, and dead-letters after the last tier;
* asked to stop, a worker abandons its shard before committing (nothing written) and releases it.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from dvid2ng.backends.base import Delivery, Queue, ShardStatus, StateStore
from dvid2ng.schemas.spec import VolumeSpec
from dvid2ng.schemas.task import ShardTask, TaskError
from dvid2ng.worker.downsample import downsample_task
from dvid2ng.worker.errors import InputError, Interrupted
from dvid2ng.worker.memory import peak_rss_bytes, reset_peak_rss
from dvid2ng.worker.output import ScaleStore, io_context, read_info
from dvid2ng.worker.transcode import DEFAULT_GZIP_LEVEL, transcode_shard

log = structlog.get_logger("dvid2ng.worker")

LEASE_SECONDS = 600.0
HEARTBEAT_SECONDS = 1.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Worker:
    queue: Queue
    state: StateStore
    worker_id: str = field(default_factory=default_worker_id)
    gzip_level: int = DEFAULT_GZIP_LEVEL
    lease_seconds: float = LEASE_SECONDS
    stale_after_s: float = 2 * LEASE_SECONDS
    should_stop: Callable[[], bool] = lambda: False
    _specs: dict[str, VolumeSpec] = field(default_factory=dict)
    _stores: dict[tuple[str, int], ScaleStore] = field(default_factory=dict)

    def run(
        self, tiers: Sequence[str], *, exit_when_idle: bool = True, poll_seconds: float = 0.2
    ) -> int:
        """Pull and handle messages until stopped (or, with exit_when_idle, until every tier is
        empty). Tiers are tried lowest-memory first. Returns the number of messages handled."""
        handled = 0
        while not self.should_stop():
            delivery = self._pull_one(tiers)
            if delivery is None:
                if exit_when_idle and all(self.queue.depth(t) == 0 for t in tiers):
                    break
                time.sleep(poll_seconds)
                continue
            self.handle(delivery)
            handled += 1
        return handled

    def _pull_one(self, tiers: Sequence[str]) -> Delivery | None:
        for tier in tiers:
            got = self.queue.pull(tier, max_messages=1, lease_seconds=self.lease_seconds)
            if got:
                return got[0]
        return None

    def handle(self, delivery: Delivery) -> str:
        """Handle one delivery; returns what happened (for logs and tests)."""
        try:
            task = ShardTask.from_json(delivery.body)
        except TaskError as e:
            log.error("poison_message", message_id=delivery.message_id, cause=str(e))
            self.queue.dead_letter(delivery, f"invalid task message: {e}")
            return "dead-lettered"
        bound = log.bind(
            run=task.run_id, shard=task.key, tier=delivery.tier, attempt=delivery.attempt
        )
        try:
            record = self.state.claim(
                task.run_id, task.key, self.worker_id, delivery.tier, self.stale_after_s
            )
        except KeyError:
            bound.error("unplanned_shard")
            self.queue.dead_letter(
                delivery, f"shard {task.key} is not planned in run {task.run_id}"
            )
            return "dead-lettered"
        if record is None:
            current = self.state.get(task.run_id, task.key)
            if current is not None and current.status.finished:
                bound.info("already_finished")
                self.queue.ack(delivery)
                return "duplicate"
            bound.info("held_by_other_worker", worker=current.worker if current else "")
            return "skipped"  # leave it leased: redelivered after the lease if the holder dies
        reset_peak_rss()
        last_beat = [time.monotonic()]

        def on_progress(chunks_done: int) -> None:
            now = time.monotonic()
            if now - last_beat[0] >= HEARTBEAT_SECONDS:
                last_beat[0] = now
                self.state.heartbeat(task.run_id, task.key, self.worker_id, chunks_done)
                self.queue.extend_lease(delivery, self.lease_seconds)

        bound.info("shard_started", source=task.sources[0].arrow if task.sources else "")
        try:
            store = self._store(task)
            convert = downsample_task if task.kind == "downsample" else transcode_shard
            outcome = convert(
                task,
                store,
                gzip_level=self.gzip_level,
                on_progress=on_progress,
                should_stop=self.should_stop,
            )
        except Interrupted:
            bound.warning("shard_interrupted")
            self.state.release(task.run_id, task.key, self.worker_id)
            self.queue.nack(delivery)
            return "interrupted"
        except InputError as e:
            bound.error("shard_failed", kind="input", cause=e.describe())
            self.state.fail(task.run_id, task.key, self.worker_id, e.as_record(), peak_rss_bytes())
            self.queue.dead_letter(delivery, e.describe())
            return "failed"
        except Exception as e:  # transient or unknown: let the queue retry / escalate
            error = {
                "kind": "crash",
                "file": task.sources[0].arrow if task.sources else "",
                "chunk": None,
                "cause": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=8),
            }
            bound.error("shard_crashed", cause=error["cause"])
            self.state.fail(task.run_id, task.key, self.worker_id, error, peak_rss_bytes())
            self.queue.nack(delivery)
            return "retry"
        status = ShardStatus.DONE if outcome.status == "done" else ShardStatus.EMPTY
        self.state.finish(
            task.run_id,
            task.key,
            self.worker_id,
            status,
            chunks_done=outcome.chunks_read,
            chunks_written=outcome.chunks_written,
            bytes_written=outcome.bytes_written,
            peak_rss_bytes=peak_rss_bytes(),
        )
        self.queue.ack(delivery)
        bound.info(
            "shard_finished",
            status=status.value,
            chunks=outcome.chunks_read,
            written=outcome.chunks_written,
            zero=outcome.chunks_zero,
            outside=outcome.chunks_outside,
            bytes=outcome.bytes_written,
            seconds=round(outcome.seconds, 3),
            chunks_per_s=round(outcome.chunks_read / outcome.seconds, 1)
            if outcome.seconds
            else None,
        )
        return status.value

    def _store(self, task: ShardTask) -> ScaleStore:
        key = (task.dest, task.scale)
        if key not in self._stores:
            if task.dest not in self._specs:
                self._specs[task.dest] = VolumeSpec.from_json(
                    read_info(task.dest), source=f"{task.dest}/info"
                )
            spec = self._specs[task.dest]
            if task.scale >= len(spec.scales):
                raise InputError(
                    f"scale {task.scale} is not in {task.dest}/info ({len(spec.scales)} scales)"
                )
            self._stores[key] = ScaleStore(task.dest, spec.scales[task.scale], io_context())
        return self._stores[key]

"""What a (re-)published plan still has to do: shared by the embedded run and `dvid2ng publish`.

The state is trusted only as far as the files agree with it: a shard recorded finished is kept
when its output file exists with the recorded size and a readable index (two range reads, not
the whole shard) and its source is unchanged since it was converted; anything else is reset and
published again. A shard in flight (running with a fresh heartbeat) is left to its worker.

With `republish` (the embedded run, whose queue is rebuilt every time) every other unfinished
shard is published, on the tier it was last sent to. Without it (`dvid2ng publish`, whose
queue outlives it) only shards whose message cannot be in the queue are: new to the state, or
reset just now; shards an earlier publish queued are not published twice (their message is in
the queue, or in the dead-letter queue for `dvid2ng dlq replay`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dvid2ng.backends.base import ShardRecord, ShardStatus, StateStore
from dvid2ng.dispatcher.plan import Plan
from dvid2ng.schemas.task import ShardTask
from dvid2ng.worker.output import ScaleStore, io_context
from dvid2ng.worker.sources import task_fingerprint

CHECK_THREADS = 32  # range reads of shard indices in flight (GCS latency, not bandwidth)


@dataclass
class PublishPlan:
    """The messages to publish, by tier, and what was found."""

    by_tier: dict[str, list[tuple[bytes, dict[str, str]]]] = field(default_factory=dict)
    kept: int = 0  # finished earlier, files checked: nothing to do
    reconverted: list[str] = field(default_factory=list)  # finished earlier but not trusted
    in_flight: int = 0  # running under a live worker: left alone
    present: int = 0  # --only-missing: the output file exists, so not published
    queued_before: int = 0  # published by an earlier publish and not finished: left alone

    @property
    def messages(self) -> int:
        return sum(len(m) for m in self.by_tier.values())


def message_attributes(task: ShardTask) -> dict[str, str]:
    """What an operator (and a subscription filter) can see of a message without parsing it."""
    return {
        "run": task.run_id,
        "key": task.key,
        "scale": str(task.scale),
        "shard": task.shard_name,
        "kind": task.kind,
        "tier": task.tier,
    }


def release_orphans(state: StateStore, run_id: str) -> int:
    """Shards left `running` by a run that was killed outright, when the caller knows no worker
    of that run can be alive (the embedded run holds DEST's lock)."""
    orphans = state.list(run_id, status=ShardStatus.RUNNING)
    for r in orphans:
        error = {"kind": "interrupted", "tier": r.tier, "cause": "the previous run was killed"}
        state.release(run_id, r.key, r.attempts, error=error)
    return len(orphans)


def plan_publish(
    plan: Plan,
    state: StateStore,
    tiers: list[str] | tuple[str, ...],
    *,
    stale_after_s: float,
    only_missing: bool = False,
    republish: bool = True,
) -> PublishPlan:
    """Record the plan in the state and work out what to publish (see the module docstring)."""
    known = set(state.get_many(plan.run_id, [t.key for t in plan.tasks]))
    state.plan(plan.records())
    records = state.get_many(plan.run_id, [t.key for t in plan.tasks])
    out = PublishPlan()
    stores: dict[int, ScaleStore] = {}

    def store(task: ShardTask) -> ScaleStore:
        if task.scale not in stores:
            stores[task.scale] = ScaleStore(plan.dest, plan.spec.scales[task.scale], io_context())
        return stores[task.scale]

    for t in plan.tasks:  # open the scale stores here, not in the threads
        store(t)
    finished = [t for t in plan.tasks if records[t.key].status.finished]
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        problems = list(
            pool.map(lambda t: _finished_problem(store(t), t, records[t.key]), finished)
        )
    for task, why in zip(finished, problems, strict=True):
        if why is None:
            out.kept += 1
            continue
        state.reset(plan.run_id, task.key, why)
        out.reconverted.append(f"{task.key}: {why}")
        records[task.key] = state.get(plan.run_id, task.key)  # type: ignore[assignment]
        known.discard(task.key)  # its old message is long gone: publish it
    now = time.time()
    pending = [t for t in plan.tasks if not records[t.key].status.finished]
    if only_missing:
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            exists = list(pool.map(lambda t: store(t).shard_size(t.shard) is not None, pending))
        out.present = sum(exists)
        pending = [t for t, e in zip(pending, exists, strict=True) if not e]
    for task in pending:
        rec = records[task.key]
        if rec.status is ShardStatus.RUNNING and now - rec.heartbeat_at < stale_after_s:
            out.in_flight += 1
            continue
        if not republish and task.key in known:
            out.queued_before += 1
            continue
        tier = rec.tier if rec.tier in tiers else task.tier
        attrs = message_attributes(task) | {"tier": tier}
        out.by_tier.setdefault(tier, []).append((task.to_json(), attrs))
    return out


def _finished_problem(store: ScaleStore, task: ShardTask, rec: ShardRecord) -> str | None:
    now = task_fingerprint(task)
    if rec.source and rec.source != now:
        return f"source {task.sources[0].arrow} changed since it was converted"
    if rec.status is ShardStatus.DONE:
        return store.shard_file_problem(task.shard, rec.bytes_written)
    if store.shard_size(task.shard) is not None:  # EMPTY: no file may exist
        return f"recorded empty, but {store.shard_file(task.shard)} exists"
    return None

"""The pull loop against the real SQLite queue and state store: poison and bad input go to the
terminal queue at once, transient faults are retried and escalate through the backstop, memory
deaths climb a tier at once, duplicates are acked without work, and a worker whose claim was
taken over never writes. The only mocks are injected faults no real part produces on demand
(a commit that raises, a worker that stalls at one exact point)."""

import threading

import numpy as np
import pytest

from dvid2ng.backends.base import ShardStatus
from dvid2ng.backends.sqlite_queue import SqliteQueue
from dvid2ng.backends.sqlite_state import SqliteStateStore
from dvid2ng.dispatcher.plan import plan_transcode
from dvid2ng.schemas.tiers import next_tier, tier_names
from dvid2ng.worker.loop import KIND_DIED, KIND_MEMORY, Outcome, Worker, WorkerTiming
from dvid2ng.worker.output import ScaleStore, ShardWriter, io_context, write_info
from tests.backends.conftest import FakeClock
from tests.exports import make_export, read_scale_tensorstore

FAST = WorkerTiming(
    heartbeat_seconds=1.0,
    lease_seconds=60.0,
    stale_after_s=30.0,
    retry_base_seconds=0.0,
    retry_max_seconds=0.0,
    held_delay_seconds=0.0,
    unsupported_delay_seconds=30.0,
    idle_backoff_seconds=0.01,
)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("loop"), csv_layout="offsets", batch_size=7)


@pytest.fixture()
def setup(export, tmp_path):
    dest = str(tmp_path / "vol")
    plan = plan_transcode(export.source, dest, export.spec, scales=[0])
    write_info(dest, export.spec.info())
    clock = FakeClock()
    queue = SqliteQueue(tmp_path / "q.sqlite", max_delivery_attempts=2)
    state = SqliteStateStore(tmp_path / "s.sqlite", clock=clock)
    state.plan(plan.records())
    for t in plan.tasks:
        queue.publish(t.tier, t.to_json(), {"key": t.key})
    return plan, queue, state, clock


def take(queue, tier: str, key: str):
    """The delivery of shard `key` on `tier`; every other message is given back."""
    mine = None
    for d in queue.pull(tier, 100, lease_seconds=60):
        if d.attributes.get("key") == key and mine is None:
            mine = d
        else:
            queue.nack(d)
    assert mine is not None, f"no message for {key} on {tier}"
    return mine


def drain(queue, state, **kw) -> int:
    worker = Worker(queue, state, worker_id=kw.pop("worker_id", "w1"), timing=FAST, **kw)
    return worker.run(tier_names(), exit_when_idle=True, idle_seconds=0.0)


def test_worker_drains_the_queue(setup, export):
    plan, queue, state, _ = setup
    assert drain(queue, state) == len(plan.tasks)
    assert all(queue.depth(t) == 0 for t in tier_names())
    records = state.list(plan.run_id)
    assert all(r.status.finished for r in records)
    assert all(r.source and r.attempts == 1 for r in records)
    assert np.array_equal(read_scale_tensorstore(plan.dest, 0), export.bodies[0])


def test_a_worker_that_handled_nothing_yet_does_not_call_an_unfinished_run_idle(setup):
    """--exit-when-idle: a worker started while the run's last message waits out the lease of
    a killed worker pulls nothing; that must not read as "the run is finished"."""
    plan, queue, state, _ = setup
    state.put_run(plan.run_id, plan.run_config())  # as `dvid2ng publish` records it
    assert not Worker(queue, state, worker_id="w-new", timing=FAST)._runs_finished()
    drain(queue, state)
    assert Worker(queue, state, worker_id="w-later", timing=FAST)._runs_finished()


def test_poison_message_goes_straight_to_the_terminal_queue(setup):
    _, queue, state, _ = setup
    queue.publish(tier_names()[0], b'{"not": "a task"}')
    drain(queue, state)
    (dead,) = queue.dead_letters()
    assert "invalid task message" in dead.reason
    assert dead.body == b'{"not": "a task"}'


def test_unknown_task_kind_is_deferred_not_dead_lettered(setup):
    """A newer dispatcher's task during a rolling upgrade: another worker may know it."""
    plan, queue, state, _ = setup
    body = plan.tasks[0].to_json().replace(b'"kind":"transcode"', b'"kind":"reticulate"')
    tier = tier_names()[0]
    queue.publish(tier, body)
    worker = Worker(queue, state, worker_id="w1", timing=FAST)
    outcomes = []
    while got := queue.pull(tier, 1):
        outcomes.append(worker.handle(got[0]))
    assert Outcome.DEFERRED in outcomes
    assert queue.dead_letters() == []
    assert queue.depth(tier) == 1  # still there, held back for 30 s


def test_transient_fault_is_retried_then_succeeds(setup, monkeypatch):
    """A storage fault no real part produces on demand: the first commit raises OSError."""
    plan, queue, state, _ = setup
    real = ShardWriter.commit
    calls = {"n": 0}

    def flaky(self, fence=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("injected: connection reset during commit")
        return real(self, fence)

    monkeypatch.setattr(ShardWriter, "commit", flaky)
    drain(queue, state)
    records = state.list(plan.run_id)
    assert all(r.status.finished for r in records)
    retried = [r for r in records if r.attempts == 2]
    assert len(retried) == 1 and retried[0].error is None
    assert queue.dead_letters() == []


def test_persistent_transient_fault_climbs_the_backstop_then_dead_letters(setup, monkeypatch):
    plan, queue, state, _ = setup

    def broken(self, fence=None):
        raise OSError("injected: storage keeps failing")

    monkeypatch.setattr(ShardWriter, "commit", broken)
    drain(queue, state)
    dead = queue.dead_letters()
    failed = state.list(plan.run_id, status=ShardStatus.FAILED)
    assert len(dead) == len(failed) == len(plan.tasks)  # every shard commits (empty ones too)
    assert all(
        f.error["kind"] == "transient" and "storage keeps" in f.error["cause"] for f in failed
    )
    for f in failed:  # 2 deliveries per tier (the embedded backstop), from its own tier up
        first = tier_names().index(next(t.tier for t in plan.tasks if t.key == f.key))
        assert f.attempts == 2 * (len(tier_names()) - first)
    assert all(d.from_tier == tier_names()[-1] for d in dead)


def test_memory_error_climbs_one_tier_per_attempt(setup, monkeypatch):
    plan, queue, state, _ = setup

    def oom(self, fence=None):
        raise MemoryError("injected: cannot allocate")

    monkeypatch.setattr(ShardWriter, "commit", oom)
    drain(queue, state)
    failed = state.list(plan.run_id, status=ShardStatus.FAILED)
    assert len(failed) == len(plan.tasks)
    for f in failed:
        first = tier_names().index(next(t.tier for t in plan.tasks if t.key == f.key))
        assert f.attempts == len(tier_names()) - first  # no repeats on a tier
        assert f.error["kind"] == KIND_MEMORY and f.error["tier"] == tier_names()[-1]
    assert {d.from_tier for d in queue.dead_letters()} == {tier_names()[-1]}


def test_duplicate_delivery_of_a_finished_shard_is_acked_without_work(setup):
    plan, queue, state, _ = setup
    drain(queue, state)
    task = next(t for t in plan.tasks if state.get(plan.run_id, t.key).status is ShardStatus.DONE)
    shard_file = ScaleStore(plan.dest, plan.spec.scales[0], io_context())
    path = f"{plan.dest}/{plan.spec.scales[0].key}/{shard_file.shard_file(task.shard)}"
    import os

    before = os.stat(path)
    queue.publish(task.tier, task.to_json())
    (d,) = queue.pull(task.tier, 1)
    assert Worker(queue, state, worker_id="w2", timing=FAST).handle(d) is Outcome.DUPLICATE
    assert queue.depth(task.tier) == 0
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert state.get(plan.run_id, task.key).attempts == 1


def test_an_attempt_that_died_silently_sends_the_shard_up_a_tier(setup):
    """The OOM killer leaves no exception: the claim just goes stale. The next delivery on that
    tier sees it and forwards the shard to the next tier at once."""
    plan, queue, state, clock = setup
    task = plan.tasks[0]
    tier = task.tier
    assert state.claim(plan.run_id, task.key, "killed-worker", tier, FAST.stale_after_s).ok
    clock.advance(FAST.stale_after_s + 5)
    mine = take(queue, tier, task.key)
    assert Worker(queue, state, worker_id="w1", timing=FAST).handle(mine) is Outcome.ESCALATED
    rec = state.get(plan.run_id, task.key)
    up = next_tier(tier)
    assert rec.status is ShardStatus.QUEUED and rec.tier == up
    assert rec.error["kind"] == KIND_DIED and "killed-worker" in rec.error["cause"]
    forwarded = take(queue, up, task.key)
    assert forwarded.attributes["forwarded_from"] == tier
    assert Worker(queue, state, worker_id="w2", timing=FAST).handle(forwarded).value in (
        "done",
        "empty",
    )
    assert state.get(plan.run_id, task.key).tier == up


def test_a_shard_bigger_than_the_memory_budget_goes_up_without_trying(setup):
    plan, queue, state, _ = setup
    task = max(plan.tasks, key=lambda t: t.memory_bytes)
    d = take(queue, task.tier, task.key)
    small = Worker(queue, state, worker_id="w1", timing=FAST, memory_budget=task.memory_bytes - 1)
    assert small.handle(d) is Outcome.ESCALATED
    rec = state.get(plan.run_id, task.key)
    assert rec.error["kind"] == "too-big" and rec.tier == next_tier(task.tier)
    assert rec.chunks_done == 0 and rec.attempts == 1


def test_a_displaced_worker_never_writes_over_its_successor(setup, export, monkeypatch):
    """Worker A claims a shard and stalls right before its commit, past the staleness limit;
    the shard's redelivery finds A dead and sends it up a tier, where worker B converts it
    (state done). A resumes: its commit is fenced off, the shard file and the state stay B's."""
    plan, queue, state, clock = setup
    slow = WorkerTiming(heartbeat_seconds=200, lease_seconds=600, stale_after_s=450)
    task = max(plan.tasks, key=lambda t: t.chunks_expected)
    store = ScaleStore(plan.dest, plan.spec.scales[0], io_context())
    real = ShardWriter.commit
    a_at_commit, a_may_go = threading.Event(), threading.Event()

    def stalling_commit(self, fence=None):
        if threading.current_thread().name == "A":
            a_at_commit.set()
            assert a_may_go.wait(60)
        return real(self, fence)

    monkeypatch.setattr(ShardWriter, "commit", stalling_commit)
    d_a = take(queue, task.tier, task.key)
    worker_a = Worker(queue, state, worker_id="A", timing=slow)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("a", worker_a.handle(d_a)), name="A")
    thread.start()
    assert a_at_commit.wait(60)
    clock.advance(slow.stale_after_s + 1)  # A looks dead
    queue.publish(task.tier, task.to_json(), {"key": task.key})  # the redelivery B gets
    d_r = take(queue, task.tier, task.key)
    assert Worker(queue, state, worker_id="R", timing=slow).handle(d_r) is Outcome.ESCALATED
    up = next_tier(task.tier)
    d_b = take(queue, up, task.key)
    assert Worker(queue, state, worker_id="B", timing=slow).handle(d_b) is Outcome.DONE
    done = state.get(plan.run_id, task.key)
    size = store.shard_size(task.shard)
    a_may_go.set()
    thread.join(60)
    assert result["a"] is Outcome.FENCED
    assert state.get(plan.run_id, task.key) == done
    assert store.shard_size(task.shard) == size == done.bytes_written
    drain(queue, state)
    assert np.array_equal(read_scale_tensorstore(plan.dest, 0), export.bodies[0])

"""The pull loop against the real SQLite queue and state store: poison messages are
dead-lettered, transient faults are retried (and escalate), duplicates are acked, and the
state is finished before the message is acked."""

import pytest

from dvid2ng.backends.base import ShardStatus
from dvid2ng.backends.sqlite_queue import SqliteQueue
from dvid2ng.backends.sqlite_state import SqliteStateStore
from dvid2ng.dispatcher.plan import plan_transcode
from dvid2ng.schemas.tiers import tier_names
from dvid2ng.worker.loop import Worker
from dvid2ng.worker.output import ShardWriter, write_info
from tests.exports import make_export, read_scale_tensorstore


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("loop"), csv_layout="offsets", batch_size=7)


@pytest.fixture()
def setup(export, tmp_path):
    dest = str(tmp_path / "vol")
    plan = plan_transcode(export.source, dest, export.spec, scales=[0])
    write_info(dest, export.spec.info())
    queue = SqliteQueue(tmp_path / "q.sqlite", max_delivery_attempts=2)
    state = SqliteStateStore(tmp_path / "s.sqlite")
    state.plan(plan.records())
    for t in plan.tasks:
        queue.publish(t.tier, t.to_json())
    return plan, queue, state


def test_worker_drains_the_queue(setup, export):
    plan, queue, state = setup
    handled = Worker(queue, state, worker_id="w1").run(tier_names())
    assert handled == len(plan.tasks)
    assert all(queue.depth(t) == 0 for t in tier_names())
    counts = state.counts(plan.run_id)
    assert counts[ShardStatus.DONE] + counts[ShardStatus.EMPTY] == len(plan.tasks)
    import numpy as np

    assert np.array_equal(read_scale_tensorstore(plan.dest, 0), export.bodies[0])


def test_poison_message_goes_straight_to_dead_letter(setup):
    _, queue, state = setup
    queue.publish(tier_names()[0], b'{"not": "a task"}')
    worker = Worker(queue, state, worker_id="w1")
    outcomes = []
    for _ in range(50):
        got = queue.pull(tier_names()[0], 1)
        if not got:
            break
        outcomes.append(worker.handle(got[0]))
    assert "dead-lettered" in outcomes
    (dead,) = queue.dead_letters()
    assert "invalid task message" in dead.reason
    assert dead.body == b'{"not": "a task"}'


def test_transient_fault_is_retried_then_succeeds(setup, monkeypatch):
    """A storage fault no real part produces on demand: the first commit raises OSError."""
    plan, queue, state = setup
    real = ShardWriter.commit
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("injected: connection reset during commit")
        return real(self)

    monkeypatch.setattr(ShardWriter, "commit", flaky)
    Worker(queue, state, worker_id="w1").run(tier_names())
    records = state.list(plan.run_id)
    assert all(r.status.finished for r in records)
    retried = [r for r in records if r.attempts == 2]
    assert len(retried) == 1 and retried[0].error is None
    assert queue.dead_letters() == []


def test_persistent_fault_escalates_through_tiers_then_dead_letters(setup, monkeypatch):
    plan, queue, state = setup

    def broken(self):
        raise MemoryError("injected: out of memory")

    monkeypatch.setattr(ShardWriter, "commit", broken)
    Worker(queue, state, worker_id="w1").run(tier_names())
    dead = queue.dead_letters()
    done_or_empty = [r for r in state.list(plan.run_id) if r.status.finished]
    failed = state.list(plan.run_id, status=ShardStatus.FAILED)
    assert len(dead) == len(failed) == len(plan.tasks) - len(done_or_empty)
    assert all(f.error["kind"] == "crash" and "MemoryError" in f.error["cause"] for f in failed)
    # every failed shard was tried on every tier from its own up, 2 attempts per tier
    for f in failed:
        first = tier_names().index(next(t.tier for t in plan.tasks if t.key == f.key))
        assert f.attempts == 2 * (len(tier_names()) - first)
    assert all(d.from_tier == tier_names()[-1] for d in dead)


def test_duplicate_delivery_of_a_finished_shard_is_acked_without_work(setup):
    plan, queue, state = setup
    Worker(queue, state, worker_id="w1").run(tier_names())
    task = plan.tasks[0]
    queue.publish(task.tier, task.to_json())
    (d,) = queue.pull(task.tier, 1)
    assert Worker(queue, state, worker_id="w2").handle(d) == "duplicate"
    assert queue.depth(task.tier) == 0

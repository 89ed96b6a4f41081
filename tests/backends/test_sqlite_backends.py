"""Tests specific to the embedded SQLite backends (beyond the shared contract suite)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dvid2ng.backends import QUEUE_FILE, STATE_FILE, open_embedded
from dvid2ng.backends.base import (
    TERMINAL,
    Delivery,
    Queue,
    ShardRecord,
    ShardStatus,
    StateStore,
    counts_by_status,
)
from dvid2ng.backends.sqlite_queue import ESCALATED_FROM, SqliteQueue
from dvid2ng.backends.sqlite_state import SqliteStateStore
from dvid2ng.schemas.tiers import DEAD_LETTER_QUEUE, TIERS, tier_names
from tests.backends import _mp_workers
from tests.backends.conftest import FakeClock

# -- construction ---------------------------------------------------------------------------


def test_defaults_come_from_schemas_tiers(tmp_path: Path):
    with SqliteQueue(tmp_path / "q.sqlite") as q:
        assert q.tiers == tier_names()
        assert q.max_delivery_attempts == {t.name: t.max_delivery_attempts for t in TIERS}
        assert isinstance(q, Queue)


def test_max_delivery_attempts_forms(tmp_path: Path):
    with SqliteQueue(tmp_path / "a.sqlite", max_delivery_attempts=1) as q:
        assert set(q.max_delivery_attempts.values()) == {1}
    first = tier_names()[0]
    with SqliteQueue(tmp_path / "b.sqlite", max_delivery_attempts={first: 2}) as q:
        assert q.max_delivery_attempts[first] == 2
        assert q.max_delivery_attempts[tier_names()[1]] == TIERS[1].max_delivery_attempts
    with SqliteQueue(tmp_path / "c.sqlite", tiers=["x", "y"], max_delivery_attempts=3) as q:
        assert q.max_delivery_attempts == {"x": 3, "y": 3}


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3", {"t2gi": 0}, {"nope": 3}])
def test_invalid_max_delivery_attempts_rejected(tmp_path: Path, bad):
    with pytest.raises(ValueError):
        SqliteQueue(tmp_path / "q.sqlite", max_delivery_attempts=bad)


@pytest.mark.parametrize("tiers", [[], ["a", "a"], ["a", DEAD_LETTER_QUEUE], ["a", ""]])
def test_invalid_tiers_rejected(tmp_path: Path, tiers):
    with pytest.raises(ValueError):
        SqliteQueue(tmp_path / "q.sqlite", tiers=tiers, max_delivery_attempts=1)


def test_custom_tier_without_attempts_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="give its max_delivery_attempts"):
        SqliteQueue(tmp_path / "q.sqlite", tiers=["custom"])


def test_open_embedded_creates_files_and_resumes(tmp_path: Path):
    state_dir = tmp_path / "nested" / "state"
    q, s = open_embedded(state_dir, max_delivery_attempts=3)
    assert (state_dir / QUEUE_FILE).is_file() and (state_dir / STATE_FILE).is_file()
    assert isinstance(q, SqliteQueue) and isinstance(s, SqliteStateStore)
    assert isinstance(s, StateStore)
    tier = q.tiers[0]
    q.publish(tier, b"a")
    q.publish(tier, b"b")
    [d] = q.pull(tier)
    s.plan([ShardRecord("r", "s0/0", 0, 0)])
    assert s.claim("r", "s0/0", "w", tier, 60).ok
    q.close()
    s.close()

    q2, s2 = open_embedded(state_dir)
    assert q2.depth(tier) == 2
    [d2] = q2.pull(tier)
    assert d2.body == b"b"  # "a" is still leased by the earlier handle
    q2.ack(d)  # the earlier lease's ack id stays valid across reopening
    assert q2.depth(tier) == 1
    assert s2.get("r", "s0/0").status is ShardStatus.RUNNING
    q2.close()
    s2.close()


# -- queue details --------------------------------------------------------------------------


def test_argument_validation(tmp_path: Path):
    with SqliteQueue(tmp_path / "q.sqlite", max_delivery_attempts=2) as q:
        tier = q.tiers[0]
        with pytest.raises(TypeError):
            q.publish(tier, "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            q.publish(tier, b"x", {"n": 1})  # type: ignore[dict-item]
        with pytest.raises(ValueError):
            q.pull(tier, max_messages=0)
        with pytest.raises(ValueError):
            q.pull(tier, lease_seconds=0)
        q.publish(tier, bytearray(b"ok"))
        [d] = q.pull(tier)
        assert d.body == b"ok" and type(d.body) is bytes
        with pytest.raises(ValueError):
            q.extend(d, 0)
        bogus = Delivery(d.message_id, tier, b"", "no-separator")
        with pytest.raises(ValueError):
            q.ack(bogus)
        with pytest.raises(ValueError):
            q.depth("nope")


def test_worker_death_on_last_tier_reaches_dead_letters_without_a_pull(tmp_path: Path):
    clock = FakeClock(1000.0)
    q = SqliteQueue(tmp_path / "q.sqlite", tiers=["a", "b"], max_delivery_attempts=1, clock=clock)
    q.publish("a", b"x", {"key": "s0/0"})
    [d] = q.pull("a", lease_seconds=10)
    q.nack(d)
    [d] = q.pull("b", lease_seconds=10)
    assert d.attributes == {"key": "s0/0", ESCALATED_FROM: "a"}
    clock.advance(11)  # the worker died on the last attempt of the last tier
    assert q.depth(DEAD_LETTER_QUEUE) == 1
    assert q.depth("b") == 0
    [dl] = q.dead_letters()
    assert dl.from_tier == "b"
    assert dl.reason == "max delivery attempts (1) exhausted on tier b"
    assert dl.attributes == {"key": "s0/0", ESCALATED_FROM: "a"}
    assert q.sweep() == 0
    q.close()


def test_sweep_moves_expired_exhausted_messages_up_one_tier(tmp_path: Path):
    clock = FakeClock(1000.0)
    q = SqliteQueue(tmp_path / "q.sqlite", tiers=["a", "b"], max_delivery_attempts=1, clock=clock)
    q.publish("a", b"x")
    q.pull("a", lease_seconds=10)
    assert q.sweep() == 0  # still leased
    clock.advance(11)
    assert q.depth("b") == 1 and q.depth("a") == 0
    [d] = q.pull("b")
    assert d.attempt == 1
    q.close()


def test_dead_letter_after_lease_ran_out_but_before_redelivery(tmp_path: Path):
    clock = FakeClock(1000.0)
    q = SqliteQueue(tmp_path / "q.sqlite", tiers=["a", "b"], max_delivery_attempts=5, clock=clock)
    q.publish("a", b"x")
    [d] = q.pull("a", lease_seconds=10)
    clock.advance(11)
    q.forward(d, TERMINAL, "poison")  # nobody else holds it: the verdict still counts
    assert [x.reason for x in q.dead_letters()] == ["poison"]
    assert q.pull("a") == []
    q.close()


def test_pull_escalates_exhausted_messages_and_still_fills_the_batch(tmp_path: Path):
    clock = FakeClock(1000.0)
    q = SqliteQueue(tmp_path / "q.sqlite", tiers=["a", "b"], max_delivery_attempts=1, clock=clock)
    for i in range(4):
        q.publish("a", b"%d" % i)
    q.pull("a", max_messages=2, lease_seconds=10)  # 0 and 1, then their workers die
    clock.advance(11)
    got = q.pull("a", max_messages=2, lease_seconds=10)
    assert [d.body for d in got] == [b"2", b"3"]
    assert [d.body for d in q.pull("b", max_messages=5)] == [b"0", b"1"]
    q.close()


def test_use_after_close_raises(tmp_path: Path):
    q = SqliteQueue(tmp_path / "q.sqlite")
    q.close()
    with pytest.raises(sqlite3.ProgrammingError):
        q.publish(q.tiers[0], b"x")
    s = SqliteStateStore(tmp_path / "s.sqlite")
    s.close()
    with pytest.raises(sqlite3.ProgrammingError):
        s.summary("r")


def test_pickle_round_trip_opens_the_same_file(tmp_path: Path):
    q = SqliteQueue(tmp_path / "q.sqlite", max_delivery_attempts=3)
    q.publish(q.tiers[0], b"x")
    q2 = pickle.loads(pickle.dumps(q))
    assert q2.path == q.path and q2.max_delivery_attempts == q.max_delivery_attempts
    assert q2.depth(q.tiers[0]) == 1
    s = SqliteStateStore(tmp_path / "s.sqlite")
    s.put_run("r", {"a": 1})
    assert pickle.loads(pickle.dumps(s)).get_run("r") == {"a": 1}
    for x in (q, q2, s):
        x.close()


def _forked_child(q: SqliteQueue, s: SqliteStateStore, tier: str) -> None:
    [d] = q.pull(tier)
    q.ack(d)
    q.publish(tier, b"from child")
    s.claim("r", "s0/0", "child", tier, 60)
    os._exit(0)


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork start method"
)
def test_handles_keep_working_across_fork(tmp_path: Path):
    q = SqliteQueue(tmp_path / "q.sqlite", max_delivery_attempts=2)
    s = SqliteStateStore(tmp_path / "s.sqlite")
    tier = q.tiers[0]
    q.publish(tier, b"for child")
    s.plan([ShardRecord("r", "s0/0", 0, 0)])
    p = multiprocessing.get_context("fork").Process(target=_forked_child, args=(q, s, tier))
    p.start()
    p.join(timeout=30)
    assert p.exitcode == 0
    # the parent's own connections are unharmed and see the child's writes
    [d] = q.pull(tier)
    assert d.body == b"from child"
    q.ack(d)
    assert q.depth(tier) == 0
    assert s.get("r", "s0/0").worker == "child"
    q.close()
    s.close()


def test_many_processes_create_the_same_files_at_once(tmp_path: Path):
    n_procs, n = 6, 10
    base = str(tmp_path / "fresh")
    tier = tier_names()[0]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_mp_workers.create_and_publish, args=(base, tier, n, barrier, results))
        for _ in range(n_procs)
    ]
    for p in procs:
        p.start()
    try:
        reports = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
    errors = [err for _, _, err in reports if err]
    assert not errors, "\n".join(errors)
    with SqliteQueue(base + ".queue", max_delivery_attempts=2) as q:
        assert q.depth(tier) == n_procs * n
    with SqliteStateStore(base + ".state") as s:
        assert s.get_run("r") == {"n": n}


def test_lease_heartbeat_from_another_thread(tmp_path: Path):
    q = SqliteQueue(tmp_path / "q.sqlite", max_delivery_attempts=2)
    tier = q.tiers[0]
    for i in range(50):
        q.publish(tier, b"%d" % i)
    [held] = q.pull(tier, lease_seconds=60)
    errors: list[BaseException] = []
    stop = threading.Event()

    def heartbeat() -> None:
        try:
            while not stop.is_set():
                q.extend(held, 60)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=heartbeat)
    t.start()
    try:
        for _ in range(49):
            [d] = q.pull(tier, lease_seconds=60)
            q.ack(d)
    finally:
        stop.set()
        t.join()
    assert not errors
    assert q.depth(tier) == 1
    q.ack(held)
    assert q.depth(tier) == 0
    q.close()


# -- state details --------------------------------------------------------------------------


def test_state_uint64_shard_numbers_round_trip(tmp_path: Path):
    with SqliteStateStore(tmp_path / "s.sqlite") as s:
        shards = [0, 1, 2**63 - 1, 2**63, 2**64 - 1]
        s.plan([ShardRecord("r", f"s0/{x:016x}", 0, x) for x in shards])
        assert [r.shard for r in s.list("r")] == shards
        with pytest.raises(ValueError):
            s.plan([ShardRecord("r", "s0/neg", 0, -1)])
        with pytest.raises(ValueError):
            s.plan([ShardRecord("r", "s0/big", 0, 2**64)])


def test_state_error_with_non_json_values_is_still_recorded(tmp_path: Path):
    with SqliteStateStore(tmp_path / "s.sqlite") as s:
        s.plan([ShardRecord("r", "s0/0", 0, 0)])
        token = s.claim("r", "s0/0", "w", "t2gi", 60).token
        s.fail("r", "s0/0", token, {"cause": ValueError("bad block"), "file": Path("/x/y.arrow")})
        assert s.get("r", "s0/0").error == {"cause": "bad block", "file": "/x/y.arrow"}


def test_state_claim_needs_a_worker_id(tmp_path: Path):
    with SqliteStateStore(tmp_path / "s.sqlite") as s:
        s.plan([ShardRecord("r", "s0/0", 0, 0)])
        with pytest.raises(ValueError):
            s.claim("r", "s0/0", "", "t2gi", 60)


def test_state_plan_accepts_a_generator_and_large_plans(tmp_path: Path):
    with SqliteStateStore(tmp_path / "s.sqlite") as s:
        gen = (ShardRecord("r", f"s0/{i:05x}", 0, i, chunks_expected=i) for i in range(20_000))
        assert s.plan(gen) == 20_000
        assert counts_by_status(s.summary("r"))[ShardStatus.QUEUED] == 20_000
        assert s.get("r", "s0/04e1f").chunks_expected == 0x4E1F


# -- model-based check of the queue ---------------------------------------------------------

MODEL_TIERS = ("a", "b", "c")
MODEL_MAX = {"a": 1, "b": 3, "c": 2}
DLQ = len(MODEL_TIERS)  # model location of a dead-lettered message
ACKED = -1  # model location of an acked message


class QueueMachine(RuleBasedStateMachine):
    """Random publish / pull / ack / nack(delay) / extend / forward / time steps on one queue.

    A small model tracks where every message must be (tier, dead letters, acked), its attempt
    count and its live lease. Checks: a pull returns exactly min(n, deliverable) messages and only
    deliverable ones (never one leased by someone else); attempts count 1..max per tier and tiers
    only move forward; `depth` of every tier and the dead letters match the model exactly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="qmachine-")
        self.clock = FakeClock(1000.0)
        self.q = SqliteQueue(
            Path(self.dir) / "q.sqlite",
            tiers=MODEL_TIERS,
            max_delivery_attempts=MODEL_MAX,
            clock=self.clock,
        )
        self.loc: dict[str, int] = {}  # message id -> tier index | DLQ | ACKED
        self.origin: dict[str, int] = {}  # message id -> index of the tier it was published to
        self.attempt: dict[str, int] = {}  # message id -> deliveries on its current tier
        # message id -> (ack_id of the lease, or None after a delayed nack; invisible until)
        self.lease: dict[str, tuple[str | None, float]] = {}
        self.came_from: dict[str, str | None] = {}  # message id -> expected forwarded_from
        self.explicit_dead: set[str] = set()
        self.deliveries: list[Delivery] = []

    def teardown(self) -> None:
        self.q.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _live(self, d: Delivery) -> bool:
        held = self.lease.get(d.message_id)
        return held is not None and held[0] == d.ack_id and self.clock.now < held[1]

    def _forward(self, mid: str) -> None:
        """The backstop: up one tier (same id) or, from the last, to the dead letters."""
        self.lease.pop(mid, None)
        if self.loc[mid] < DLQ:
            self.came_from[mid] = MODEL_TIERS[self.loc[mid]]
        self.loc[mid] += 1  # the last tier's "next" is DLQ
        self.attempt[mid] = 0

    def _deliverable(self, idx: int) -> set[str]:
        return {
            mid
            for mid, where in self.loc.items()
            if where == idx and (mid not in self.lease or self.lease[mid][1] <= self.clock.now)
        }

    @rule(tier=st.sampled_from(MODEL_TIERS), body=st.binary(max_size=8))
    def publish(self, tier: str, body: bytes) -> None:
        mid = self.q.publish(tier, body)
        assert mid not in self.loc
        self.loc[mid] = self.origin[mid] = MODEL_TIERS.index(tier)
        self.attempt[mid] = 0
        self.came_from[mid] = None

    @rule(
        tier=st.sampled_from(MODEL_TIERS),
        n=st.integers(1, 4),
        lease=st.sampled_from([5.0, 10.0, 20.0]),
    )
    def pull(self, tier: str, n: int, lease: float) -> None:
        idx = MODEL_TIERS.index(tier)
        deliverable = self._deliverable(idx)
        got = self.q.pull(tier, max_messages=n, lease_seconds=lease)
        assert len(got) == min(n, len(deliverable))
        assert len({d.message_id for d in got}) == len(got)
        for d in got:
            mid = d.message_id
            assert mid in deliverable, "delivered a message that is leased, gone or elsewhere"
            assert d.tier == tier
            assert d.attempt == self.attempt[mid] + 1 <= MODEL_MAX[tier]
            assert d.attributes.get(ESCALATED_FROM) == self.came_from[mid]
            self.attempt[mid] = d.attempt
            self.lease[mid] = (d.ack_id, self.clock.now + lease)
            self.deliveries.append(d)

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.deliveries))
        if self._live(d):
            self.loc[d.message_id] = ACKED
            del self.lease[d.message_id]
        self.q.ack(d)

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.0, 7.0, 30.0]))
    def nack(self, data: st.DataObject, delay: float) -> None:
        d = data.draw(st.sampled_from(self.deliveries))
        if self._live(d):
            mid = d.message_id
            del self.lease[mid]
            if self.attempt[mid] >= MODEL_MAX[d.tier]:
                self._forward(mid)
            elif delay:
                self.lease[mid] = (None, self.clock.now + delay)
        self.q.nack(d, delay)

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data(), seconds=st.sampled_from([5.0, 30.0]))
    def extend(self, data: st.DataObject, seconds: float) -> None:
        d = data.draw(st.sampled_from(self.deliveries))
        if self._live(d):
            self.lease[d.message_id] = (d.ack_id, self.clock.now + seconds)
        self.q.extend(d, seconds)

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data(), to=st.sampled_from([*MODEL_TIERS, TERMINAL]))
    def forward(self, data: st.DataObject, to: str) -> None:
        d = data.draw(st.sampled_from(self.deliveries))
        held = self.lease.get(d.message_id)
        ours = held is not None and held[0] == d.ack_id  # nobody re-leased it (expired is fine)
        new_id = self.q.forward(d, to, "poison" if to == TERMINAL else "moved")
        if not ours:
            assert new_id == ""
            return
        mid = d.message_id
        del self.lease[mid]
        if to == TERMINAL:
            self.loc[mid] = DLQ
            self.explicit_dead.add(mid)
            return
        self.loc[mid] = ACKED  # the copy on `to` is a new message
        self.loc[new_id] = self.origin[new_id] = MODEL_TIERS.index(to)
        self.attempt[new_id] = 0
        self.came_from[new_id] = d.tier

    @rule(seconds=st.integers(1, 25))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @invariant()
    def queue_matches_model(self) -> None:
        # depth / dead_letters sweep: expired leases on a tier's last attempt move on
        for mid, (_, expiry) in list(self.lease.items()):
            where = self.loc[mid]
            if expiry <= self.clock.now and self.attempt[mid] >= MODEL_MAX[MODEL_TIERS[where]]:
                self._forward(mid)
            elif expiry <= self.clock.now and self.lease[mid][0] is None:
                del self.lease[mid]  # a delayed nack's wait is over
        for idx, tier in enumerate(MODEL_TIERS):
            assert self.q.depth(tier) == sum(1 for w in self.loc.values() if w == idx), tier
        dead = self.q.dead_letters()
        assert sorted(x.message_id for x in dead) == sorted(
            mid for mid, w in self.loc.items() if w == DLQ
        )
        assert self.q.depth(TERMINAL) == len(dead)
        for x in dead:
            if x.message_id in self.explicit_dead:
                assert x.reason == "poison"
            else:
                assert x.from_tier == "c"
                assert x.reason == "max delivery attempts (2) exhausted on tier c"


TestQueueModel = QueueMachine.TestCase
TestQueueModel.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

"""Fixtures for the backend contract suite: every Queue / StateStore implementation runs it.

`queue_backend` and `state_backend` are parametrized over the factories in `QUEUE_FACTORIES` /
`STATE_FACTORIES`: `(tmp_path, request) -> QueueHarness | StateHarness`, each declaring what its
backend can promise; the contract tests skip (or weaken to what is guaranteed) the checks a
backend cannot honour. The Google factories run against the real emulators (tests/emulators.py)
and skip, naming the missing binary, where those are not installed.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dvid2ng.backends.base import Queue, QueueAdmin, StateStore
from dvid2ng.backends.firestore_state import FirestoreStateStore
from dvid2ng.backends.pubsub_queue import PubSubQueue
from dvid2ng.backends.sqlite_queue import SqliteQueue
from dvid2ng.backends.sqlite_state import SqliteStateStore


class FakeClock:
    """A clock the tests move by hand (picklable; starts at the real time)."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class QueueHarness:
    """A queue backend under test plus the capabilities it declares."""

    name: str
    # open(max_delivery_attempts=None, tiers=None) -> a fresh, empty, isolated queue
    open: Callable[..., Queue]
    # opener(queue) -> picklable zero-argument callable opening another handle on the same queue
    # (used inside spawned processes, which must see the same messages)
    opener: Callable[[Queue], Callable[[], Queue]]
    # advance(seconds): let that much time pass for leases (move a fake clock, or sleep)
    advance: Callable[[float], None]
    controllable_clock: bool = False  # advance() is instant, so lease-heavy tests are cheap
    exact_attempts: bool = False  # attempt counts are exact: escalation after exactly N deliveries
    strict_leases: bool = False  # ack / nack / extend with an expired or superseded ack_id: no-op
    fifo: bool = False  # deliveries come in publish order
    exact_depth: bool = False  # depth() is exact at once (not an eventually consistent metric)
    preserves_message_id: bool = False  # a message keeps its id when it moves to the next tier
    backstop_reason: bool = False  # dead letters of the backstop say why ("max delivery ...")
    attempts: int = 2  # max_delivery_attempts the escalation tests use (Pub/Sub needs >= 5)
    lease_s: float = 30.0  # lease the expiry tests use (Pub/Sub: >= 10 s)
    nack_delay_s: float = 20.0  # delay the delayed-nack test uses
    pull_wait_s: float = 0.0  # how long to keep pulling before concluding nothing is deliverable
    # admin(queue) -> the QueueAdmin for the same queues (the queue itself for SQLite)
    admin: Callable[[Queue], QueueAdmin] = lambda q: q  # type: ignore[assignment,return-value]
    cleanup: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class StateHarness:
    """A state backend under test plus the capabilities it declares."""

    name: str
    open: Callable[[], StateStore]  # a fresh, empty, isolated store
    opener: Callable[[StateStore], Callable[[], StateStore]]  # as QueueHarness.opener
    advance: Callable[[float], None]  # let that much time pass (fake clock or sleep)
    controllable_clock: bool = False
    stale_after_s: float = 60.0  # staleness threshold the takeover tests use
    cleanup: list[Callable[[], None]] = field(default_factory=list)


# -- SQLite ---------------------------------------------------------------------------------


def _sqlite_queue_harness(tmp_path: Path, request: pytest.FixtureRequest) -> QueueHarness:
    clock = FakeClock()
    opened: list[SqliteQueue] = []

    def open_queue(
        max_delivery_attempts: Mapping[str, int] | int | None = None,
        tiers: Sequence[str] | None = None,
    ) -> SqliteQueue:
        path = tmp_path / f"queue-{len(opened)}.sqlite"
        q = SqliteQueue(
            path,
            tiers=tiers,
            max_delivery_attempts=max_delivery_attempts,
            clock=clock,
        )
        opened.append(q)
        return q

    def opener(q: Queue) -> Callable[[], Queue]:
        assert isinstance(q, SqliteQueue)
        # real clock in the child: the fake one starts at the real time and is only moved forward
        # by tests that do not spawn processes
        return functools.partial(
            SqliteQueue, q.path, q.tiers, dict(q.max_delivery_attempts), time.time
        )

    h = QueueHarness(
        name="sqlite",
        open=open_queue,
        opener=opener,
        advance=clock.advance,
        controllable_clock=True,
        exact_attempts=True,
        strict_leases=True,
        fifo=True,
        exact_depth=True,
        preserves_message_id=True,
        backstop_reason=True,
        attempts=2,
        lease_s=30.0,
    )
    h.cleanup.append(lambda: [q.close() for q in opened])
    return h


def _sqlite_state_harness(tmp_path: Path, request: pytest.FixtureRequest) -> StateHarness:
    clock = FakeClock()
    opened: list[SqliteStateStore] = []

    def open_store() -> SqliteStateStore:
        s = SqliteStateStore(tmp_path / f"state-{len(opened)}.sqlite", clock=clock)
        opened.append(s)
        return s

    def opener(s: StateStore) -> Callable[[], StateStore]:
        assert isinstance(s, SqliteStateStore)
        return functools.partial(SqliteStateStore, s.path, time.time)

    h = StateHarness(
        name="sqlite",
        open=open_store,
        opener=opener,
        advance=clock.advance,
        controllable_clock=True,
        stale_after_s=60.0,
    )
    h.cleanup.append(lambda: [s.close() for s in opened])
    return h


# -- Pub/Sub and Firestore (the real emulators) ---------------------------------------------


def reopen(backend: Any) -> Any:
    """Picklable opener: the Google backends pickle as their settings (no channels), so the
    copy a spawned process unpickles is a new handle on the same topics / documents."""
    return backend


def _pubsub_queue_harness(tmp_path: Path, request: pytest.FixtureRequest) -> QueueHarness:
    """Pub/Sub as the emulator runs it. Declared honestly:
    * no controllable clock: leases are real time, and 10 s is the shortest ack deadline a
      subscription takes, so lease tests sleep for real;
    * attempts are Pub/Sub's best-effort `delivery_attempt` (not exact); a message moved to the
      next tier gets a new id; no order; depth unknown (Cloud Monitoring only);
    * ack ids are not fenced: a stale ack / extend may act on a newer lease (strict_leases off);
    * escalation tests use 5 attempts, the fewest a dead-letter policy allows;
    * subscriptions without a retry policy (fleet.json's 10..600 s backoff would make every
      nack wait): what the tests measure is the dead-letter chain, not the backoff."""
    project = request.getfixturevalue("pubsub_project")  # fresh project: the emulator has no reset
    opened: list[PubSubQueue] = []

    def open_queue(
        max_delivery_attempts: Mapping[str, int] | int | None = None,
        tiers: Sequence[str] | None = None,
    ) -> PubSubQueue:
        q = PubSubQueue(
            project,
            f"q{len(opened)}-{uuid.uuid4().hex[:6]}",
            tiers,
            max_delivery_attempts=max_delivery_attempts,
            retry_min_backoff_seconds=0,
            retry_max_backoff_seconds=0,
        )
        opened.append(q)
        q.create()
        return q

    h = QueueHarness(
        name="pubsub",
        open=open_queue,
        opener=lambda q: functools.partial(reopen, q),
        advance=time.sleep,
        controllable_clock=False,
        exact_attempts=False,
        strict_leases=False,
        fifo=False,
        exact_depth=False,
        preserves_message_id=False,
        backstop_reason=True,
        attempts=5,
        lease_s=10.0,
        nack_delay_s=5.0,
        pull_wait_s=1.0,
    )
    h.cleanup.append(lambda: [q.close() for q in opened])
    return h


def _firestore_state_harness(tmp_path: Path, request: pytest.FixtureRequest) -> StateHarness:
    """Firestore as the emulator runs it: server timestamps, so no controllable clock (the
    staleness tests sleep; 4 s is well above the emulator's latency and clock granularity)."""
    project = request.getfixturevalue("firestore_project")
    opened: list[FirestoreStateStore] = []

    def open_store() -> FirestoreStateStore:
        s = FirestoreStateStore(f"{project}-{len(opened)}")  # every store its own project
        opened.append(s)
        return s

    h = StateHarness(
        name="firestore",
        open=open_store,
        opener=lambda s: functools.partial(reopen, s),
        advance=time.sleep,
        controllable_clock=False,
        stale_after_s=4.0,
    )
    h.cleanup.append(lambda: [s.close() for s in opened])
    return h


QUEUE_FACTORIES: list[Callable[..., QueueHarness]] = [
    _sqlite_queue_harness,
    _pubsub_queue_harness,
]
STATE_FACTORIES: list[Callable[..., StateHarness]] = [
    _sqlite_state_harness,
    _firestore_state_harness,
]


def _ids(factories: list[Any]) -> list[str]:
    return [f.__name__.strip("_").removesuffix("_harness") for f in factories]


@pytest.fixture(params=QUEUE_FACTORIES, ids=_ids(QUEUE_FACTORIES))
def queue_backend(request: pytest.FixtureRequest, tmp_path: Path):
    h = request.param(tmp_path, request)
    yield h
    for fn in reversed(h.cleanup):
        fn()


@pytest.fixture(params=STATE_FACTORIES, ids=_ids(STATE_FACTORIES))
def state_backend(request: pytest.FixtureRequest, tmp_path: Path):
    h = request.param(tmp_path, request)
    yield h
    for fn in reversed(h.cleanup):
        fn()


@pytest.fixture
def queue(queue_backend: QueueHarness) -> Queue:
    """A fresh queue with the harness's escalation setting."""
    return queue_backend.open(max_delivery_attempts=queue_backend.attempts)


@pytest.fixture
def state(state_backend: StateHarness) -> StateStore:
    return state_backend.open()

"""Contract tests for `backends.base.Queue` (and `QueueAdmin`): every queue backend passes these.

Checks a backend cannot promise (exact attempt counts, FIFO, strict lease tokens, instant
clocks, exact depth) depend on the capabilities its harness declares in `conftest.py`; a test
that needs one it lacks is skipped with the reason, never silently weakened.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter

import pytest

from dvid2ng.backends.base import (
    FORWARD_REASON,
    FORWARDED_FROM,
    MAX_LEASE_SECONDS,
    TERMINAL,
    Delivery,
    Queue,
)
from tests.backends import _mp_workers
from tests.backends.conftest import QueueHarness

ESCALATED_FROM = FORWARDED_FROM


def pull_one(h: QueueHarness, q: Queue, tier: str, lease_s: float | None = None) -> Delivery | None:
    """One delivery from `tier`, or None when nothing is deliverable (within `h.pull_wait_s`)."""
    deadline = time.monotonic() + h.pull_wait_s
    while True:
        batch = q.pull(tier, max_messages=1, lease_seconds=lease_s or h.lease_s)
        assert len(batch) <= 1
        if batch:
            return batch[0]
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def pull_all(h: QueueHarness, q: Queue, tier: str, lease_s: float | None = None) -> list[Delivery]:
    """Lease everything deliverable on `tier` (one message per pull)."""
    out = []
    while (d := pull_one(h, q, tier, lease_s)) is not None:
        out.append(d)
    return out


def require(flag: bool, what: str) -> None:
    if not flag:
        pytest.skip(f"backend does not promise {what}")


def attempt_is(h: QueueHarness, d: Delivery, n: int) -> bool:
    """`d.attempt` is exactly n where the backend counts exactly, else at least n or unknown."""
    if h.exact_attempts:
        return d.attempt == n
    return d.attempt is None or d.attempt >= n


# -- basics ---------------------------------------------------------------------------------


def test_publish_pull_ack(queue_backend: QueueHarness, queue: Queue):
    tier = queue.tiers[0]
    mid = queue.publish(tier, b"\x00payload\xff", {"key": "s0/1a"})
    assert isinstance(mid, str) and mid

    d = pull_one(queue_backend, queue, tier)
    assert d is not None
    assert d.message_id == mid
    assert d.tier == tier
    assert d.body == b"\x00payload\xff"
    assert attempt_is(queue_backend, d, 1)
    assert d.attributes["key"] == "s0/1a"
    assert d.ack_id

    queue.ack(d)
    assert pull_one(queue_backend, queue, tier) is None
    queue.ack(d)  # acking twice is harmless
    assert queue_backend.admin(queue).dead_letters() == []


def test_publish_many_delivers_each_with_its_attributes(queue_backend: QueueHarness, queue: Queue):
    tier = queue.tiers[0]
    msgs = [(b"m%d" % i, {"key": f"s0/{i:x}", "run": "r"}) for i in range(25)]
    ids = queue.publish_many(tier, msgs)
    assert len(ids) == 25 and len(set(ids)) == 25
    got = pull_all(queue_backend, queue, tier)
    assert sorted((d.body, d.attributes["key"]) for d in got) == sorted(
        (b, a["key"]) for b, a in msgs
    )
    for d in got:
        queue.ack(d)


def test_pull_on_empty_queue_returns_nothing(queue_backend: QueueHarness, queue: Queue):
    for tier in queue.tiers:
        assert queue.pull(tier, max_messages=5, lease_seconds=queue_backend.lease_s) == []


def test_tiers_are_independent(queue_backend: QueueHarness, queue: Queue):
    first, second = queue.tiers[0], queue.tiers[1]
    queue.publish(second, b"big")
    assert pull_one(queue_backend, queue, first) is None
    d = pull_one(queue_backend, queue, second)
    assert d is not None and d.body == b"big" and d.tier == second
    assert attempt_is(queue_backend, d, 1)
    queue.ack(d)


def test_unknown_tier_is_rejected(queue: Queue):
    with pytest.raises(ValueError):
        queue.publish("no-such-tier", b"x")
    with pytest.raises(ValueError):
        queue.pull("no-such-tier")


def test_production_lease_limits_are_enforced(queue_backend: QueueHarness, queue: Queue):
    """Pub/Sub caps an ack deadline at 600 s; the emulator accepts more, so the code checks."""
    tier = queue.tiers[0]
    queue.publish(tier, b"x")
    with pytest.raises(ValueError, match="600"):
        queue.pull(tier, 1, lease_seconds=MAX_LEASE_SECONDS + 1)
    d = pull_one(queue_backend, queue, tier)
    assert d is not None
    for bad in (MAX_LEASE_SECONDS + 1, 0, -5):
        with pytest.raises(ValueError):
            queue.extend(d, bad)
    with pytest.raises(ValueError):
        queue.nack(d, delay_seconds=MAX_LEASE_SECONDS + 1)
    queue.extend(d, MAX_LEASE_SECONDS)  # the cap itself is fine
    queue.ack(d)


def test_messages_are_distinct_and_all_delivered(queue_backend: QueueHarness, queue: Queue):
    tier = queue.tiers[0]
    bodies = [f"m{i}".encode() for i in range(12)]
    ids = [queue.publish(tier, b) for b in bodies]
    assert len(set(ids)) == len(ids)

    got: list[Delivery] = []
    for _ in range(20):
        batch = queue.pull(tier, max_messages=5, lease_seconds=queue_backend.lease_s)
        assert len(batch) <= 5
        got += batch
        if len(got) >= len(bodies):
            break
    assert sorted(d.body for d in got) == sorted(bodies)
    assert {d.message_id for d in got} == set(ids)
    for d in got:
        queue.ack(d)
    assert pull_one(queue_backend, queue, tier) is None


def test_fifo_order(queue_backend: QueueHarness, queue: Queue):
    require(queue_backend.fifo, "FIFO order")
    tier = queue.tiers[0]
    bodies = [f"m{i:02d}".encode() for i in range(10)]
    for b in bodies:
        queue.publish(tier, b)

    batch = queue.pull(tier, max_messages=4, lease_seconds=queue_backend.lease_s)
    assert [d.body for d in batch] == bodies[:4]
    singles = pull_all(queue_backend, queue, tier)
    assert [d.body for d in singles] == bodies[4:]
    # a nacked message goes back to its place at the head of the line
    queue.nack(batch[1])
    d = pull_one(queue_backend, queue, tier)
    assert d is not None and d.body == bodies[1]
    assert attempt_is(queue_backend, d, 2)


def test_leased_message_is_invisible_to_other_pulls(queue_backend: QueueHarness, queue: Queue):
    tier = queue.tiers[0]
    queue.publish(tier, b"one")
    d = pull_one(queue_backend, queue, tier)
    assert d is not None
    assert pull_one(queue_backend, queue, tier) is None
    queue.ack(d)


# -- redelivery -----------------------------------------------------------------------------


def test_lease_expiry_redelivers_with_next_attempt(queue_backend: QueueHarness):
    h = queue_backend
    q = h.open(max_delivery_attempts=max(h.attempts, 5))
    tier = q.tiers[0]
    q.publish(tier, b"slow")
    d1 = pull_one(h, q, tier)
    assert d1 is not None and attempt_is(h, d1, 1)

    h.advance(h.lease_s + 1)  # the worker died: no ack, no heartbeat
    d2 = pull_one(h, q, tier)
    assert d2 is not None
    assert d2.body == b"slow"
    assert d2.tier == tier
    assert attempt_is(h, d2, 2)
    if h.preserves_message_id:
        assert d2.message_id == d1.message_id
    q.ack(d2)
    assert pull_one(h, q, tier) is None


def test_nack_redelivers_immediately(queue_backend: QueueHarness):
    h = queue_backend
    q = h.open(max_delivery_attempts=max(h.attempts, 5))
    tier = q.tiers[0]
    q.publish(tier, b"retry me", {"key": "s1/0"})
    d1 = pull_one(h, q, tier)
    assert d1 is not None
    q.nack(d1)
    d2 = pull_one(h, q, tier)  # no waiting for the lease
    assert d2 is not None
    assert d2.body == b"retry me" and d2.attributes["key"] == "s1/0"
    assert attempt_is(h, d2, 2)
    q.ack(d2)
    assert pull_one(h, q, tier) is None


def test_nack_with_delay_holds_the_message_back(queue_backend: QueueHarness):
    h = queue_backend
    q = h.open(max_delivery_attempts=max(h.attempts, 5))
    tier = q.tiers[0]
    q.publish(tier, b"newer task kind")
    d = pull_one(h, q, tier)
    assert d is not None
    q.nack(d, delay_seconds=h.nack_delay_s)
    assert q.pull(tier, 1, lease_seconds=h.lease_s) == []  # not yet
    h.advance(h.nack_delay_s + 1)
    again = pull_one(h, q, tier)
    assert again is not None and again.body == b"newer task kind"
    q.ack(again)


# -- escalation -----------------------------------------------------------------------------


def test_nack_escalates_through_every_tier_to_dead_letter(queue_backend: QueueHarness):
    h = queue_backend
    n = h.attempts
    q = h.open(max_delivery_attempts=n)
    tiers = list(q.tiers)
    assert len(tiers) >= 2
    mid = q.publish(tiers[0], b"needs memory", {"key": "s0/2b", "run": "r1"})

    for i, tier in enumerate(tiers):
        attempts = []
        d = pull_one(h, q, tier)
        assert d is not None, f"message did not reach tier {tier}"
        while d is not None:
            assert d.tier == tier
            assert d.body == b"needs memory"
            assert d.attributes["key"] == "s0/2b" and d.attributes["run"] == "r1"
            if i > 0:
                assert d.attributes[ESCALATED_FROM] == tiers[i - 1]
            else:
                assert ESCALATED_FROM not in d.attributes
            if h.preserves_message_id:
                assert d.message_id == mid
            attempts.append(d.attempt)
            assert len(attempts) <= 3 * n, "message never escalated"
            q.nack(d)
            d = pull_one(h, q, tier)
        if h.exact_attempts:
            assert attempts == list(range(1, n + 1))
        elif None not in attempts:
            assert attempts == sorted(attempts)
        for earlier in tiers[: i + 1]:
            assert pull_one(h, q, earlier) is None
        if i + 1 < len(tiers):
            assert h.admin(q).dead_letters() == []

    [dl] = h.admin(q).dead_letters()
    assert dl.body == b"needs memory"
    assert dl.from_tier == tiers[-1]
    if h.backstop_reason:
        assert dl.reason == f"max delivery attempts ({n}) exhausted on tier {tiers[-1]}"
    assert dl.attributes["key"] == "s0/2b"
    if h.preserves_message_id:
        assert dl.message_id == mid
    for tier in tiers:
        assert pull_one(h, q, tier) is None


def test_lease_expiry_on_last_attempt_escalates(queue_backend: QueueHarness):
    """A worker that dies on the tier's last attempt (e.g. OOM-killed) sends it up a tier."""
    h = queue_backend
    n = h.attempts
    # real-time backends wait out n leases for real (Pub/Sub: 5 x 11 s), which is worth it
    require(
        h.controllable_clock or n * (h.lease_s + 1) <= 120,
        "a controllable clock or short leases (this test waits for n leases)",
    )
    q = h.open(max_delivery_attempts=n)
    first, second = q.tiers[0], q.tiers[1]
    q.publish(first, b"oom", {"key": "s0/3"})
    for attempt in range(1, n + 1):
        d = pull_one(h, q, first)
        assert d is not None
        assert attempt_is(h, d, attempt)
        h.advance(h.lease_s + 1)
    assert pull_one(h, q, first) is None
    d = pull_one(h, q, second)
    assert d is not None
    assert d.body == b"oom" and attempt_is(h, d, 1)
    assert d.attributes[ESCALATED_FROM] == first and d.attributes["key"] == "s0/3"
    q.ack(d)
    assert h.admin(q).dead_letters() == []


def test_escalated_message_queues_behind_existing_work(queue_backend: QueueHarness):
    h = queue_backend
    require(h.fifo, "FIFO order")
    q = h.open(max_delivery_attempts=h.attempts)
    first, second = q.tiers[0], q.tiers[1]
    q.publish(second, b"already there")
    q.publish(first, b"escalating")
    while (d := pull_one(h, q, first)) is not None:
        q.nack(d)
    assert [x.body for x in pull_all(h, q, second)] == [b"already there", b"escalating"]


# -- dead letters ---------------------------------------------------------------------------


def test_forward_to_terminal_dead_letters_at_once(queue_backend: QueueHarness):
    h = queue_backend
    q = h.open(max_delivery_attempts=max(h.attempts, 5))
    admin = h.admin(q)
    first, second = q.tiers[0], q.tiers[1]
    q.publish(first, b"garbage", {"key": "s0/bad"})
    q.publish(first, b"fine")
    q.publish(second, b"also garbage")

    d = pull_one(h, q, first)
    assert d is not None and d.body == b"garbage"
    q.forward(d, TERMINAL, "poison: task schema_version 99 unsupported")
    d2 = pull_one(h, q, second)
    assert d2 is not None
    q.forward(d2, TERMINAL, "poison: truncated arrow file")

    dls = sorted(admin.dead_letters(), key=lambda x: x.body)
    assert [x.body for x in dls] == [b"also garbage", b"garbage"]
    by_body = {x.body: x for x in dls}
    assert by_body[b"garbage"].from_tier == first
    assert by_body[b"garbage"].reason == "poison: task schema_version 99 unsupported"
    assert by_body[b"garbage"].attributes["key"] == "s0/bad"
    assert by_body[b"also garbage"].from_tier == second
    assert by_body[b"also garbage"].reason == "poison: truncated arrow file"

    # never redelivered on any tier; the other message is untouched
    rest = pull_all(h, q, first)
    assert [x.body for x in rest] == [b"fine"]
    assert attempt_is(h, rest[0], 1)
    q.ack(rest[0])
    for tier in q.tiers:
        assert pull_one(h, q, tier) is None
    assert len(admin.dead_letters()) == 2  # listing does not remove


def test_forward_to_a_tier_carries_reason_and_origin(queue_backend: QueueHarness):
    h = queue_backend
    q = h.open(max_delivery_attempts=max(h.attempts, 5))
    first, third = q.tiers[0], q.tiers[2]
    q.publish(first, b"big shard", {"key": "s0/7", "run": "r9"})
    d = pull_one(h, q, first)
    assert d is not None
    new_id = q.forward(d, third, "attempt 1 on t2gi died (out of memory?)")
    assert new_id
    assert pull_one(h, q, first) is None  # acked where it was
    up = pull_one(h, q, third)
    assert up is not None and up.body == b"big shard" and up.tier == third
    assert up.attributes["key"] == "s0/7" and up.attributes["run"] == "r9"
    assert up.attributes[FORWARDED_FROM] == first
    assert up.attributes[FORWARD_REASON] == "attempt 1 on t2gi died (out of memory?)"
    assert attempt_is(h, up, 1)
    q.ack(up)
    assert h.admin(q).dead_letters() == []


def test_replay_moves_a_dead_letter_back_to_a_tier(queue_backend: QueueHarness):
    h = queue_backend
    q = h.open(max_delivery_attempts=max(h.attempts, 5))
    admin = h.admin(q)
    first, second = q.tiers[0], q.tiers[1]
    q.publish(first, b"fixed now", {"key": "s1/2"})
    d = pull_one(h, q, first)
    assert d is not None
    q.forward(d, TERMINAL, "corrupt block")
    (letter,) = admin.dead_letters()
    admin.replay(letter, second)
    back = pull_one(h, q, second)
    assert back is not None and back.body == b"fixed now" and back.attributes["key"] == "s1/2"
    assert FORWARD_REASON not in back.attributes  # a replay starts clean
    q.ack(back)
    assert admin.dead_letters() == []


# -- leases and stale handles ---------------------------------------------------------------


def test_stale_ack_id_does_not_touch_the_new_lease(queue_backend: QueueHarness):
    h = queue_backend
    require(h.strict_leases, "strict lease tokens")
    q = h.open(max_delivery_attempts=5)
    tier = q.tiers[0]
    q.publish(tier, b"contended")
    old = pull_one(h, q, tier)
    assert old is not None
    h.advance(h.lease_s + 1)
    new = pull_one(h, q, tier)  # another worker takes it over
    assert new is not None and new.body == b"contended"
    assert new.ack_id != old.ack_id

    q.ack(old)
    q.nack(old)
    q.extend(old, min(10 * h.lease_s, MAX_LEASE_SECONDS))
    q.forward(old, TERMINAL, "stale worker thinks it is poison")
    assert pull_one(h, q, tier) is None  # still leased by the new holder
    assert h.admin(q).dead_letters() == []
    if h.exact_depth:
        assert h.admin(q).depth(tier) == 1

    q.ack(new)
    assert pull_one(h, q, tier) is None
    if h.exact_depth:
        assert h.admin(q).depth(tier) == 0


def test_stale_extend_does_not_prolong_the_new_lease(queue_backend: QueueHarness):
    h = queue_backend
    require(h.strict_leases, "strict lease tokens")
    q = h.open(max_delivery_attempts=5)
    tier = q.tiers[0]
    q.publish(tier, b"x")
    old = pull_one(h, q, tier)
    assert old is not None
    h.advance(h.lease_s + 1)
    new = pull_one(h, q, tier)
    assert new is not None
    q.extend(old, min(100 * h.lease_s, MAX_LEASE_SECONDS))
    h.advance(h.lease_s + 1)  # the new lease ran out: the old handle must not have extended it
    third = pull_one(h, q, tier)
    assert third is not None and third.body == b"x"
    assert attempt_is(h, third, 3)
    q.ack(new)  # superseded as well
    assert pull_one(h, q, tier) is None
    q.ack(third)


def test_ack_after_lease_expired_is_a_no_op(queue_backend: QueueHarness):
    h = queue_backend
    require(h.strict_leases, "strict lease tokens")
    q = h.open(max_delivery_attempts=5)
    tier = q.tiers[0]
    q.publish(tier, b"late")
    d = pull_one(h, q, tier)
    assert d is not None
    h.advance(h.lease_s + 1)
    q.ack(d)
    again = pull_one(h, q, tier)
    assert again is not None and again.body == b"late"
    q.ack(again)


def test_extend_lease_keeps_message_invisible(queue_backend: QueueHarness):
    h = queue_backend
    q = h.open(max_delivery_attempts=5)
    tier = q.tiers[0]
    q.publish(tier, b"long shard")
    lease = h.lease_s
    d = pull_one(h, q, tier, lease)
    assert d is not None
    h.advance(0.6 * lease)
    q.extend(d, lease)
    h.advance(0.6 * lease)  # past the original lease, inside the extended one
    assert pull_one(h, q, tier) is None
    q.extend(d, lease)
    h.advance(0.6 * lease)
    assert pull_one(h, q, tier) is None
    h.advance(0.6 * lease)  # heartbeats stopped: the extended lease runs out
    again = pull_one(h, q, tier)
    assert again is not None and again.body == b"long shard"
    assert attempt_is(h, again, 2)  # extending is not a delivery attempt
    q.ack(again)


# -- depth ----------------------------------------------------------------------------------


def test_depth_counts_unacked_messages_per_tier(queue_backend: QueueHarness, queue: Queue):
    h = queue_backend
    require(h.exact_depth, "exact depth")
    admin = h.admin(queue)
    first, second = queue.tiers[0], queue.tiers[1]
    for tier in queue.tiers:
        assert admin.depth(tier) == 0
    for i in range(3):
        queue.publish(first, b"%d" % i)
    queue.publish(second, b"big")
    assert admin.depth(first) == 3
    assert admin.depth(second) == 1

    d = pull_one(h, queue, first)
    assert d is not None
    assert admin.depth(first) == 3  # leased still counts
    queue.ack(d)
    assert admin.depth(first) == 2
    d = pull_one(h, queue, first)
    assert d is not None
    queue.forward(d, TERMINAL, "poison")
    assert admin.depth(first) == 1
    assert admin.depth(second) == 1
    assert admin.depth(TERMINAL) == 1


# -- many processes -------------------------------------------------------------------------


def test_processes_drain_queue_without_double_leases(queue_backend: QueueHarness, queue: Queue):
    h = queue_backend
    tier = queue.tiers[0]
    n_messages, n_procs = 200, 4
    ids = {queue.publish(tier, b"msg-%03d" % i): b"msg-%03d" % i for i in range(n_messages)}

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_mp_workers.drain_queue,
            args=(h.opener(queue), tier, w, barrier, results),
            kwargs={"empty_pulls_to_stop": 3},
        )
        for w in range(n_procs)
    ]
    for p in procs:
        p.start()
    try:
        reports = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    errors = [err for _, _, err in reports if err]
    assert not errors, "\n".join(errors)

    deliveries = [d for _, got, _ in reports for d in got]
    per_id = Counter(mid for mid, _, _ in deliveries)
    doubles = {mid: c for mid, c in per_id.items() if c > 1}
    assert not doubles, f"messages leased more than once: {doubles}"
    assert set(per_id) == set(ids)
    assert all(ids[mid] == body for mid, body, _ in deliveries)
    if h.exact_attempts:
        assert {attempt for _, _, attempt in deliveries} == {1}
    assert pull_one(h, queue, tier) is None
    if h.exact_depth:
        assert h.admin(queue).depth(tier) == 0

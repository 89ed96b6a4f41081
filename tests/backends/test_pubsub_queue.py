"""Pub/Sub beyond the contract: the topology `create()` makes (the dead-letter chain really
forwards, `check()` finds what is wrong), production limits before any RPC, publishing errors,
dead letters. Against the real Pub/Sub emulator (tests/emulators.py)."""

from __future__ import annotations

import os
import pickle
import time
import uuid
from datetime import timedelta

import pytest
from google.cloud import pubsub_v1

from dvid2ng.backends import open_queue
from dvid2ng.backends.base import (
    FORWARD_REASON,
    FORWARDED_FROM,
    TERMINAL,
    Delivery,
    Queue,
    QueueAdmin,
)
from dvid2ng.backends.pubsub_queue import (
    DEAD_LETTER_SOURCE_DELIVERY_COUNT,
    DEAD_LETTER_SOURCE_SUBSCRIPTION,
    EMULATOR_MAX_RETENTION_S,
    PublishError,
    PubSubQueue,
    QueueNotCreated,
)
from dvid2ng.schemas.fleet import fleet_config, subscription_name
from dvid2ng.schemas.tiers import tier_names

TWO = ("t2gi", "t4gi")


def make_queue(project: str, tiers=TWO, create: bool = True, **kw) -> PubSubQueue:
    kw.setdefault("retry_min_backoff_seconds", 0)
    kw.setdefault("retry_max_backoff_seconds", 0)
    q = PubSubQueue(project, f"t{uuid.uuid4().hex[:8]}", tiers, **kw)
    if create:
        q.create()
    return q


def pull_one(
    q: PubSubQueue, tier: str, wait_s: float = 3.0, lease_s: float = 30
) -> Delivery | None:
    deadline = time.monotonic() + wait_s
    while True:
        got = q.pull(tier, 1, lease_s)
        if got or time.monotonic() > deadline:
            return got[0] if got else None


def nack_until_gone(q: PubSubQueue, tier: str) -> list[int | None]:
    attempts = []
    while (d := pull_one(q, tier)) is not None:
        attempts.append(d.attempt)
        assert len(attempts) <= 20, "never dead-lettered"
        q.nack(d)
    return attempts


def test_it_is_a_queue_and_an_admin_and_opens_from_its_url(pubsub_project: str):
    q = open_queue(f"pubsub://{pubsub_project}/dvid2ng")
    assert isinstance(q, PubSubQueue) and isinstance(q, Queue) and isinstance(q, QueueAdmin)
    assert (q.project, q.prefix, q.tiers) == (pubsub_project, "dvid2ng", tier_names())
    assert q.url == f"pubsub://{pubsub_project}/dvid2ng"
    copy = pickle.loads(pickle.dumps(q))  # what a spawned worker receives: settings, no channels
    assert copy.url == q.url and copy.max_delivery_attempts == q.max_delivery_attempts


def test_create_makes_the_fleet_json_topology_and_is_idempotent(pubsub_project: str):
    q = make_queue(pubsub_project, tiers=tier_names(), create=False, retry_max_backoff_seconds=None,
                   retry_min_backoff_seconds=None)  # fmt: skip
    made = q.create()
    assert sum(line.startswith("created topic") for line in made) == len(q.tiers) + 1
    assert sum(line.startswith("created subscription") for line in made) == len(q.tiers) + 1
    assert q.check() == []
    again = q.create()
    assert all(line.startswith("exists:") for line in again), again

    sub = pubsub_v1.SubscriberClient()
    ps = fleet_config()["pubsub"]
    names = list(q.tiers)
    for i, tier in enumerate(names):
        got = sub.get_subscription(request={"subscription": q._subscription_path(tier)})
        assert got.topic == q._topic_path(tier)
        assert got.ack_deadline_seconds == ps["ack_deadline_seconds"]
        assert got.message_retention_duration == timedelta(seconds=ps["message_retention_seconds"])
        assert got.retry_policy.minimum_backoff == timedelta(
            seconds=ps["retry_min_backoff_seconds"]
        )
        assert got.retry_policy.maximum_backoff == timedelta(
            seconds=ps["retry_max_backoff_seconds"]
        )
        target = q._topic_path(names[i + 1]) if i + 1 < len(names) else q._topic_path(TERMINAL)
        assert got.dead_letter_policy.dead_letter_topic == target
        assert got.dead_letter_policy.max_delivery_attempts == 5
        assert "expiration_policy" in got and not got.expiration_policy.ttl  # never expires
    terminal = sub.get_subscription(request={"subscription": q._subscription_path(TERMINAL)})
    assert terminal.topic == q._topic_path(TERMINAL)
    assert not terminal.dead_letter_policy.dead_letter_topic
    # as Terraform makes it: dead letters kept as long as Pub/Sub allows, and no retry policy
    # (one would hide every letter `dlq list` gives back for its backoff)
    # (on the emulator capped to the 7 days it accepts; production takes Terraform's 31)
    assert terminal.message_retention_duration == timedelta(
        seconds=min(ps["terminal_message_retention_seconds"], EMULATOR_MAX_RETENTION_S)
    )
    assert "retry_policy" not in terminal
    sub.close()
    q.close()


def test_dead_letter_chain_forwards_tier_to_tier_and_last_to_terminal(pubsub_project: str):
    """The chain `create()` makes, not `forward`: five nacks on a tier and Pub/Sub itself moves
    the message to the next tier's topic with its CloudPubSubDeadLetterSource attributes; five
    on the last tier and it lands in the terminal subscription."""
    q = make_queue(pubsub_project)
    first_id = q.publish("t2gi", b"grows", {"key": "s0/1f", "run": "r"})
    assert nack_until_gone(q, "t2gi") in ([1, 2, 3, 4, 5], [None] * 5)

    up = pull_one(q, "t4gi")
    assert up is not None and up.body == b"grows"
    assert up.message_id != first_id  # Pub/Sub's copy has a new id: identity is the shard key
    assert up.attributes[DEAD_LETTER_SOURCE_SUBSCRIPTION] == subscription_name(q.prefix, "t2gi")
    assert up.attributes[DEAD_LETTER_SOURCE_DELIVERY_COUNT] == "5"
    assert up.attributes["key"] == "s0/1f" and up.attributes["run"] == "r"
    assert up.attributes[FORWARDED_FROM] == "t2gi"  # the hop, reported like a forward
    assert up.attributes[FORWARD_REASON] == "max delivery attempts (5) exhausted on tier t2gi"
    assert up.attempt == 1
    q.nack(up)
    assert nack_until_gone(q, "t4gi")[-1] in (5, None)

    [letter] = q.dead_letters()
    assert letter.body == b"grows" and letter.attributes["key"] == "s0/1f"
    assert letter.from_tier == "t4gi"
    assert letter.reason == "max delivery attempts (5) exhausted on tier t4gi"
    assert letter.attributes[DEAD_LETTER_SOURCE_SUBSCRIPTION] == subscription_name(q.prefix, "t4gi")
    q.close()


def test_forward_after_a_backstop_hop_reports_the_latest_hop(pubsub_project: str):
    q = make_queue(pubsub_project)
    q.publish("t2gi", b"x", {"key": "s0/2"})
    nack_until_gone(q, "t2gi")
    d = pull_one(q, "t4gi")
    assert d is not None
    q.forward(d, TERMINAL, "corrupt block at chunk (1, 2, 3)")
    [letter] = q.dead_letters()
    assert letter.from_tier == "t4gi"
    assert letter.reason == "corrupt block at chunk (1, 2, 3)"
    assert not any(k.startswith("CloudPubSubDeadLetter") for k in letter.attributes)
    q.close()


def test_check_reports_what_differs_from_the_tier_table(pubsub_project: str):
    q = make_queue(pubsub_project, tiers=("t2gi", "t4gi", "t8gi"))
    assert q.check() == []
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    # someone recreated the t4gi subscription by hand: wrong target, attempts, deadline, filter
    sub.delete_subscription(request={"subscription": q._subscription_path("t4gi")})
    sub.create_subscription(
        request={
            "name": q._subscription_path("t4gi"),
            "topic": q._topic_path("t4gi"),
            "ack_deadline_seconds": 30,
            "filter": 'attributes.scale = "0"',
            "dead_letter_policy": {
                "dead_letter_topic": q._topic_path(TERMINAL),
                "max_delivery_attempts": 7,
            },
        }
    )
    # and the t8gi subscription has no dead-letter policy; the terminal topic is gone
    sub.delete_subscription(request={"subscription": q._subscription_path("t8gi")})
    sub.create_subscription(
        request={"name": q._subscription_path("t8gi"), "topic": q._topic_path("t8gi")}
    )
    pub.delete_topic(request={"topic": q._topic_path(TERMINAL)})

    problems = q.check()
    text = "\n".join(problems)
    t4 = q._subscription_path("t4gi")
    assert f"subscription {t4} dead-letters to {q._topic_path(TERMINAL)}, expected " in text
    assert f"{q._topic_path('t8gi')}" in text
    assert f"subscription {t4} dead-letters after 7 deliveries, expected 5" in text
    assert f"subscription {t4} has ack deadline 30 s, expected 600 s" in text
    assert f"subscription {t4} has the filter" in text
    assert f"subscription {q._subscription_path('t8gi')} has no dead-letter policy" in text
    assert f"missing topic {q._topic_path(TERMINAL)}" in text
    assert not any(q._subscription_path("t2gi") + " " in p for p in problems), problems
    pub.transport.close()
    sub.close()
    q.close()


def test_missing_queues_say_how_to_create_them(pubsub_project: str):
    q = make_queue(pubsub_project, create=False)
    with pytest.raises(QueueNotCreated, match="dvid2ng queues create"):
        q.publish("t2gi", b"x")
    with pytest.raises(QueueNotCreated, match=r"subscription .*t2gi does not exist"):
        q.pull("t2gi")
    assert len(q.check()) == 2 * (len(TWO) + 1)  # every topic and subscription missing
    q.close()


def test_production_limits_are_refused_before_any_rpc(monkeypatch: pytest.MonkeyPatch):
    """Nothing listens on the port: a call that reached the network would hang or fail with a
    connection error. These fail at once with ValueError, and no client was even made."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    q = PubSubQueue("no-such-project", "dvid2ng")
    d = Delivery("1", "t2gi", b"x", "projects/p/subscriptions/s:1")
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="600"):
        q.pull("t2gi", 1, lease_seconds=601)
    with pytest.raises(ValueError, match="600"):
        q.extend(d, 600.5)
    with pytest.raises(ValueError):
        q.extend(d, 0)
    with pytest.raises(ValueError, match="600"):
        q.nack(d, 601)
    with pytest.raises(ValueError):
        q.pull("t2gi", 0)
    with pytest.raises(ValueError, match="unknown tier"):
        q.pull("t64gi")
    with pytest.raises(ValueError, match="1024"):
        q.publish("t2gi", b"x", {"reason": "é" * 600})
    with pytest.raises(ValueError, match="reserved"):
        q.publish("t2gi", b"x", {"googlekey": "v"})
    with pytest.raises(ValueError, match="10000000"):
        q.publish("t2gi", b"x" * 10_000_001)
    with pytest.raises(TypeError):
        q.publish("t2gi", "not bytes")  # type: ignore[arg-type]
    for bad in (4, 101):
        with pytest.raises(ValueError, match=r"5\.\.100"):
            PubSubQueue("p", "dvid2ng", max_delivery_attempts=bad)
    with pytest.raises(ValueError, match="invalid Pub/Sub name"):
        PubSubQueue("p", "9lives")
    assert q._clients is None
    assert time.monotonic() - t0 < 30  # (a hang would have hit the test timeout long before)


def test_publish_many_publishes_all_or_reports_how_many_failed(pubsub_project: str):
    q = make_queue(pubsub_project)
    msgs = [(b"%d" % i, {"key": f"s0/{i:x}", "note": "ünïcode ✓"}) for i in range(300)]
    ids = q.publish_many("t2gi", msgs)
    assert len(ids) == len(set(ids)) == 300
    got = []
    while batch := q.pull("t2gi", 100, 60):
        got += batch
    assert sorted(d.body for d in got) == sorted(b for b, _ in msgs)
    assert {d.attributes["note"] for d in got} == {"ünïcode ✓"}  # attributes as published
    assert all(set(d.attributes) == {"key", "note"} for d in got)
    for d in got:
        q.ack(d)

    # one bad message: nothing is published (checked before the first RPC)
    with pytest.raises(ValueError):
        q.publish_many("t2gi", [(b"ok", {}), (b"bad", {"k": "v" * 2000})])
    assert q.pull("t2gi", 10, 30) == []
    # the topic vanished: every future fails and the error says so
    pubsub_v1.PublisherClient().delete_topic(request={"topic": q._topic_path("t2gi")})
    with pytest.raises((PublishError, QueueNotCreated)):
        q.publish_many("t2gi", [(b"a", {}), (b"b", {})])
    q.close()


def test_dead_letters_stay_leased_for_replay_and_come_back_on_close(pubsub_project: str):
    q = make_queue(pubsub_project, dead_letter_lease_s=60)
    for i in range(3):
        q.publish("t2gi", b"%d" % i, {"key": f"s0/{i}"})
    for _ in range(3):
        d = pull_one(q, "t2gi")
        q.forward(d, TERMINAL, f"bad {d.body.decode()}")
    letters = q.dead_letters()
    assert sorted(x.body for x in letters) == [b"0", b"1", b"2"]
    assert q.dead_letters(max_messages=2) == letters[:2]  # oldest first
    assert len({x.message_id for x in q.dead_letters()}) == 3  # listing again: same, no duplicates

    # another process's view while this one holds them: nothing (they are leased here)
    other = PubSubQueue(q.project, q.prefix, TWO, dead_letter_lease_s=60)
    assert other.dead_letters() == []

    one = next(x for x in letters if x.body == b"1")
    q.replay(one, "t4gi")
    back = pull_one(q, "t4gi")
    assert back is not None and back.body == b"1" and back.attributes == {"key": "s0/1"}
    q.ack(back)
    with pytest.raises(KeyError):
        q.replay(one.__class__(**{**one.__dict__, "handle": ""}), "t4gi")

    q.close()  # gives the two others back at once
    deadline = time.monotonic() + 10
    seen: set[bytes] = set()
    while time.monotonic() < deadline and len(seen) < 2:
        seen |= {x.body for x in other.dead_letters()}
    assert seen == {b"0", b"2"}
    other.close()


def test_emulator_variable_is_what_the_client_uses(pubsub_project: str):
    assert os.environ["PUBSUB_EMULATOR_HOST"].startswith("127.0.0.1:")
    q = make_queue(pubsub_project)
    q.publish("t4gi", b"via the emulator")
    assert pull_one(q, "t4gi").body == b"via the emulator"
    q.close()


def test_replay_can_carry_a_new_body(pubsub_project: str):
    q = make_queue(pubsub_project)
    q.publish("t2gi", b"old task", {"key": "s0/9"})
    q.forward(pull_one(q, "t2gi"), TERMINAL, "source was truncated")
    [letter] = q.dead_letters()
    q.replay(letter, "t2gi", b"task with the re-exported source's generation")
    back = pull_one(q, "t2gi")
    assert back.body == b"task with the re-exported source's generation"
    assert back.attributes == {"key": "s0/9"}
    q.ack(back)
    assert q.dead_letters() == []
    q.close()


def test_a_process_that_lists_dead_letters_and_exits_gives_them_back(pubsub_project: str):
    """`dvid2ng dlq list` exits without close(): the letters it leased must not stay hidden
    from the next command for the rest of the lease."""
    import subprocess
    import sys

    q = make_queue(pubsub_project, dead_letter_lease_s=600)
    q.publish("t2gi", b"poison", {"key": "s0/p"})
    q.forward(pull_one(q, "t2gi"), TERMINAL, "not a task")
    script = (
        "import pickle, sys; q = pickle.loads(sys.stdin.buffer.read()); "
        "print(len(q.dead_letters()))"  # and exit, without close()
    )
    out = subprocess.run(
        [sys.executable, "-c", script], input=pickle.dumps(q), capture_output=True, check=True
    )
    assert out.stdout.strip() == b"1", out.stderr
    [letter] = q.dead_letters()  # at once, not after the child's 600 s lease
    assert letter.body == b"poison"
    q.close()


def test_a_dead_letter_given_back_is_listed_again_at_once_with_the_fleet_settings(
    pubsub_project: str,
):
    """fleet.json's retry policy (10..600 s) is for the tier subscriptions. On the terminal
    one it held back every letter a listing gave back for its backoff, doubling with each
    listing, so `dvid2ng dlq list` followed by `dlq show` or `dlq replay` found nothing."""
    q = make_queue(pubsub_project, retry_min_backoff_seconds=None, retry_max_backoff_seconds=None)
    q.publish("t2gi", b"corrupt task", {"key": "s0/c"})
    q.forward(pull_one(q, "t2gi"), TERMINAL, "palette index out of range")
    for _ in range(3):  # list, show, replay: three commands, three queue objects
        lister = PubSubQueue(q.project, q.prefix, TWO)
        assert [x.body for x in lister.dead_letters()] == [b"corrupt task"]
        lister.close()  # gives it back (ack deadline 0)
    q.close()

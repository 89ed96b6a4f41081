"""Contract tests for `backends.base.StateStore`: every state backend must pass these.

The heart of it is fencing: a claim returns a token, and a write with a token that is no longer
current changes nothing, so a worker presumed dead can never overwrite its successor's record.
"""

from __future__ import annotations

import multiprocessing

import pytest

from dvid2ng.backends.base import (
    ClaimStatus,
    ShardRecord,
    ShardStatus,
    StateStore,
    counts_by_status,
)
from tests.backends import _mp_workers
from tests.backends.conftest import StateHarness

RUN = "run-1"


def rec(key: str, scale: int = 0, shard: int = 0, run_id: str = RUN, **kw) -> ShardRecord:
    return ShardRecord(run_id=run_id, key=key, scale=scale, shard=shard, **kw)


def planned(state: StateStore, *keys: str) -> None:
    state.plan([rec(k, scale=int(k[1]), shard=i, chunks_expected=8) for i, k in enumerate(keys)])


def claim(state: StateStore, key: str, worker: str = "w", tier: str = "t2gi", stale=60.0) -> int:
    c = state.claim(RUN, key, worker, tier, stale)
    assert c.ok, c
    return c.token


def finish_done(state: StateStore, key: str, token: int, **metrics) -> bool:
    m = {"chunks_done": 8, "chunks_written": 6, "bytes_written": 4096, "peak_rss_bytes": 2**30}
    m.update(metrics)
    return state.finish(RUN, key, token, ShardStatus.DONE, **m)


def finish_empty(state: StateStore, key: str, token: int) -> bool:
    return state.finish(
        RUN, key, token, ShardStatus.EMPTY,
        chunks_done=8, chunks_written=0, bytes_written=0, peak_rss_bytes=1,
    )  # fmt: skip


# -- runs -----------------------------------------------------------------------------------


def test_put_run_first_one_wins_and_runs_lists_newest_first(
    state_backend: StateHarness, state: StateStore
):
    assert state.get_run(RUN) is None
    assert state.runs() == []
    config = {"source": "gs://b/export", "scales": [0, 1, 2], "spec": {"chunk": [64, 64, 64]}}
    state.put_run(RUN, config)
    state.put_run(RUN, {"source": "somewhere else"})
    assert state.get_run(RUN) == config
    state_backend.advance(2)
    state.put_run("run-2", {"x": 1})
    assert state.get_run("run-2") == {"x": 1}
    assert state.get_run(RUN) == config
    assert state.runs() == [("run-2", {"x": 1}), (RUN, config)]


# -- plan -----------------------------------------------------------------------------------


def test_plan_inserts_and_round_trips_every_field(state: StateStore):
    big = rec("s2/ffff", scale=2, shard=0xFFFF, tier="t8gi", chunks_expected=512, source="9:77")
    huge = rec("s0/" + "f" * 16, shard=2**64 - 1)
    assert state.plan([big, rec("s0/0", chunks_expected=3), huge]) == 3
    got = state.get(RUN, "s2/ffff")
    assert got == big
    assert got.status is ShardStatus.QUEUED
    assert state.get(RUN, huge.key).shard == 2**64 - 1
    assert state.get(RUN, "s0/missing") is None
    assert state.get("other-run", "s2/ffff") is None


def test_get_many_returns_the_existing_records(state: StateStore):
    keys = [f"s0/{i:03x}" for i in range(1200)]  # more than one batch of any backend
    state.plan([rec(k, shard=i) for i, k in enumerate(keys)])
    state.plan([rec("s0/000", run_id="other-run", chunks_expected=5)])
    got = state.get_many(RUN, [*keys[::7], "s9/missing"])
    assert set(got) == set(keys[::7])
    assert all(got[k] == state.get(RUN, k) for k in keys[::70])
    assert state.get_many(RUN, []) == {}


def test_plan_keeps_existing_records_for_resume(state: StateStore):
    assert state.plan([rec("s0/0"), rec("s0/1"), rec("s0/2")]) == 3
    finish_done(state, "s0/0", claim(state, "s0/0"))
    state.fail(RUN, "s0/1", claim(state, "s0/1"), {"kind": "input", "cause": "bad block"})

    # re-planning the same run (resume) adds only what is missing
    assert state.plan([rec("s0/0"), rec("s0/1"), rec("s0/2"), rec("s0/3"), rec("s1/0", 1)]) == 2
    assert state.plan([rec("s0/0"), rec("s0/3")]) == 0
    assert state.get(RUN, "s0/0").status is ShardStatus.DONE
    assert state.get(RUN, "s0/0").chunks_written == 6
    failed = state.get(RUN, "s0/1")
    assert failed.status is ShardStatus.FAILED
    assert failed.error == {"kind": "input", "cause": "bad block"}
    assert len(state.list(RUN)) == 5
    assert state.plan([]) == 0


# -- claim ----------------------------------------------------------------------------------


def test_claim_marks_running_and_returns_the_attempt_as_token(
    state_backend: StateHarness, state: StateStore
):
    planned(state, "s0/0")
    c = state.claim(RUN, "s0/0", "worker-a", "t4gi", state_backend.stale_after_s)
    assert c.status is ClaimStatus.CLAIMED and c.ok
    got = c.record
    assert c.token == got.attempts == 1
    assert got.status is ShardStatus.RUNNING
    assert got.worker == "worker-a"
    assert got.tier == "t4gi"
    assert got.chunks_done == 0
    assert got.chunks_expected == 8
    assert got.started_at > 0 and got.heartbeat_at > 0
    assert got.error is None
    assert c.previous is not None and c.previous.status is ShardStatus.QUEUED
    assert state.get(RUN, "s0/0") == got
    assert state.check(RUN, "s0/0", c.token)
    assert not state.check(RUN, "s0/0", c.token + 1)


def test_claim_is_exclusive_while_owner_is_fresh(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    planned(state, "s0/0")
    claim(state, "s0/0", "worker-a", "t2gi", stale)
    held = state.claim(RUN, "s0/0", "worker-b", "t4gi", stale)
    assert held.status is ClaimStatus.HELD and not held.ok
    assert held.record.worker == "worker-a"
    # a redelivery to the same worker must not restart a live attempt either
    assert state.claim(RUN, "s0/0", "worker-a", "t4gi", stale).status is ClaimStatus.HELD
    now = state.get(RUN, "s0/0")
    assert now.worker == "worker-a" and now.tier == "t2gi" and now.attempts == 1


def test_claim_of_unplanned_shard(state_backend: StateHarness, state: StateStore):
    c = state.claim(RUN, "s9/dead", "worker-a", "t2gi", state_backend.stale_after_s)
    assert c.status is ClaimStatus.NOT_PLANNED and c.record is None


def test_finished_shards_cannot_be_claimed(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    planned(state, "s0/0", "s0/1")
    assert finish_done(state, "s0/0", claim(state, "s0/0"))
    assert finish_empty(state, "s0/1", claim(state, "s0/1"))
    state_backend.advance(stale * 2)
    for key in ("s0/0", "s0/1"):
        c = state.claim(RUN, key, "w2", "t4gi", stale)
        assert c.status is ClaimStatus.FINISHED and c.record.key == key
    assert state.get(RUN, "s0/0").status is ShardStatus.DONE
    assert state.get(RUN, "s0/1").status is ShardStatus.EMPTY
    assert state.get(RUN, "s0/0").attempts == 1


def test_failed_shard_can_be_claimed_again_and_the_new_owner_sees_why(
    state_backend: StateHarness, state: StateStore
):
    stale = state_backend.stale_after_s
    planned(state, "s0/0")
    t1 = claim(state, "s0/0", "w1", "t2gi", stale)
    assert state.heartbeat(RUN, "s0/0", t1, 5)
    error = {"kind": "memory", "tier": "t2gi", "cause": "MemoryError"}
    assert state.fail(RUN, "s0/0", t1, error, peak_rss_bytes=2**31, tier="t4gi")
    failed = state.get(RUN, "s0/0")
    assert failed.status is ShardStatus.FAILED and failed.tier == "t4gi"
    retry = state.claim(RUN, "s0/0", "w2", "t4gi", stale)
    assert retry.ok and retry.token == 2
    assert retry.record.status is ShardStatus.RUNNING
    assert retry.record.worker == "w2" and retry.record.tier == "t4gi"
    assert retry.record.error == error  # kept for the new owner to read
    assert retry.record.chunks_done == 0 and retry.record.finished_at == 0
    assert retry.previous.status is ShardStatus.FAILED and retry.previous.error == error


def test_stale_claim_is_taken_over_and_previous_shows_the_dead_attempt(
    state_backend: StateHarness, state: StateStore
):
    h = state_backend
    stale = h.stale_after_s
    planned(state, "s0/0")
    first = state.claim(RUN, "s0/0", "worker-a", "t2gi", stale)
    h.advance(stale * 0.5)
    assert state.claim(RUN, "s0/0", "worker-b", "t2gi", stale).status is ClaimStatus.HELD
    h.advance(stale * 0.5 + 1)  # worker-a is silent for longer than stale_after_s (OOM-killed)
    taken = state.claim(RUN, "s0/0", "worker-b", "t4gi", stale)
    assert taken.ok and taken.token == 2
    assert taken.record.worker == "worker-b" and taken.record.tier == "t4gi"
    assert taken.record.started_at >= first.record.started_at
    prev = taken.previous
    assert prev.status is ShardStatus.RUNNING and prev.worker == "worker-a"
    assert prev.tier == "t2gi" and prev.attempts == 1
    assert prev.heartbeat_at == first.record.heartbeat_at


def test_heartbeat_keeps_claim_fresh(state_backend: StateHarness, state: StateStore):
    h = state_backend
    stale = h.stale_after_s
    planned(state, "s0/0")
    token = claim(state, "s0/0", "worker-a", "t2gi", stale)
    for done in (2, 4, 6):
        h.advance(stale * 0.6)
        assert state.heartbeat(RUN, "s0/0", token, done)
        assert state.claim(RUN, "s0/0", "worker-b", "t2gi", stale).status is ClaimStatus.HELD
        assert state.get(RUN, "s0/0").chunks_done == done
    h.advance(stale + 1)  # heartbeats stopped
    assert state.claim(RUN, "s0/0", "worker-b", "t2gi", stale).ok


# -- fencing --------------------------------------------------------------------------------


def test_displaced_worker_cannot_clobber_new_owner(state_backend: StateHarness, state: StateStore):
    h = state_backend
    stale = h.stale_after_s
    planned(state, "s0/0")
    old = claim(state, "s0/0", "old", "t2gi", stale)
    h.advance(stale + 1)
    new = claim(state, "s0/0", "new", "t4gi", stale)
    assert new != old
    assert state.heartbeat(RUN, "s0/0", new, 3)

    assert not state.check(RUN, "s0/0", old)
    assert not state.heartbeat(RUN, "s0/0", old, 7)
    assert not finish_done(state, "s0/0", old)
    assert not state.fail(RUN, "s0/0", old, {"kind": "x"})
    assert not state.release(RUN, "s0/0", old)
    cur = state.get(RUN, "s0/0")
    assert cur.status is ShardStatus.RUNNING
    assert cur.worker == "new" and cur.tier == "t4gi" and cur.attempts == new
    assert cur.chunks_done == 3
    assert cur.error is None and cur.chunks_written == 0

    # the old worker's heartbeat did not refresh the claim; the new owner's own ones do
    h.advance(stale * 0.6)
    assert state.heartbeat(RUN, "s0/0", new, 4)
    h.advance(stale * 0.6)
    assert state.claim(RUN, "s0/0", "third", "t2gi", stale).status is ClaimStatus.HELD


def test_displaced_worker_cannot_undo_a_finished_shard(
    state_backend: StateHarness, state: StateStore
):
    """Worker A stalls past the staleness limit, B converts the shard (done), A resumes: none of
    A's writes may touch the finished record, and A can tell before it commits a file."""
    h = state_backend
    planned(state, "s0/0")
    a = claim(state, "s0/0", "A", "t2gi", h.stale_after_s)
    h.advance(h.stale_after_s + 1)
    b = claim(state, "s0/0", "B", "t2gi", h.stale_after_s)
    assert finish_done(state, "s0/0", b)
    done = state.get(RUN, "s0/0")
    assert not state.check(RUN, "s0/0", a)  # what A asks right before deleting / committing
    assert not state.heartbeat(RUN, "s0/0", a, 1)
    assert not state.fail(RUN, "s0/0", a, {"kind": "crash"})
    assert not state.release(RUN, "s0/0", a)
    assert not finish_empty(state, "s0/0", a)
    assert state.get(RUN, "s0/0") == done


def test_writes_without_a_claim_are_ignored(state: StateStore):
    planned(state, "s0/0")
    for token in (0, 1, 7):
        assert not state.heartbeat(RUN, "s0/0", token, 5)
        assert not finish_done(state, "s0/0", token)
        assert not state.fail(RUN, "s0/0", token, {"kind": "x"})
        assert not state.release(RUN, "s0/0", token)
        assert not state.check(RUN, "s0/0", token)
    assert state.get(RUN, "s0/0") == rec("s0/0", chunks_expected=8)
    assert not state.heartbeat(RUN, "s7/none", 1, 1)


def test_finish_records_metrics_once(state_backend: StateHarness, state: StateStore):
    planned(state, "s0/0")
    token = claim(state, "s0/0")
    state_backend.advance(5)
    assert state.finish(
        RUN, "s0/0", token, ShardStatus.DONE,
        chunks_done=8, chunks_written=7, bytes_written=123_456_789_012, peak_rss_bytes=3 * 2**30,
        source="4096:1700000000000000000",
    )  # fmt: skip
    done = state.get(RUN, "s0/0")
    assert done.status is ShardStatus.DONE
    assert done.worker == "w"
    assert (done.chunks_done, done.chunks_written) == (8, 7)
    assert done.bytes_written == 123_456_789_012
    assert done.peak_rss_bytes == 3 * 2**30
    assert done.source == "4096:1700000000000000000"
    assert done.finished_at >= done.started_at > 0
    if state_backend.controllable_clock:
        assert done.duration_s == pytest.approx(5)
    # finishing twice (a duplicate delivery) changes nothing
    assert not finish_done(state, "s0/0", token, chunks_written=1)
    assert state.get(RUN, "s0/0") == done


def test_finish_rejects_unfinished_status(state: StateStore):
    planned(state, "s0/0")
    token = claim(state, "s0/0")
    for bad in (ShardStatus.FAILED, ShardStatus.QUEUED, ShardStatus.RUNNING):
        with pytest.raises(ValueError):
            state.finish(
                RUN, "s0/0", token, bad,
                chunks_done=0, chunks_written=0, bytes_written=0, peak_rss_bytes=0,
            )  # fmt: skip
    assert state.get(RUN, "s0/0").status is ShardStatus.RUNNING


def test_fail_records_error_json_round_trip(state: StateStore):
    planned(state, "s0/0")
    token = claim(state, "s0/0")
    error = {
        "file": "gs://bucket/export/s0-0001.arrow",
        "chunk": [64, 128, 0],
        "cause": "ValueError: block header says 4 labels, found 3 — ünïcödé",
        "kind": "input",
        "nested": {"row": 17, "offset": 2**40, "ratio": 0.25, "ok": False, "none": None},
    }
    assert state.fail(RUN, "s0/0", token, error, peak_rss_bytes=12345)
    got = state.get(RUN, "s0/0")
    assert got.status is ShardStatus.FAILED
    assert got.error == error
    assert got.peak_rss_bytes == 12345
    assert got.finished_at >= got.started_at > 0
    assert state.list(RUN, status=ShardStatus.FAILED)[0].error == error


def test_release_returns_shard_to_queue_with_the_reason(
    state_backend: StateHarness, state: StateStore
):
    stale = state_backend.stale_after_s
    planned(state, "s0/0")
    t1 = claim(state, "s0/0", "w1", "t2gi", stale)
    assert not state.release(RUN, "s0/0", t1 + 1)  # not the owner's token
    assert state.get(RUN, "s0/0").status is ShardStatus.RUNNING
    why = {"kind": "interrupted", "cause": "SIGTERM", "tier": "t2gi"}
    assert state.release(RUN, "s0/0", t1, error=why, tier="t4gi")
    back = state.get(RUN, "s0/0")
    assert back.status is ShardStatus.QUEUED and back.error == why and back.tier == "t4gi"
    # claimable at once by anyone, without waiting for staleness
    again = state.claim(RUN, "s0/0", "w2", "t4gi", stale)
    assert again.ok and again.record.worker == "w2" and again.token == 2


def test_reset_reopens_a_finished_shard_and_fences_its_holder(
    state_backend: StateHarness, state: StateStore
):
    stale = state_backend.stale_after_s
    planned(state, "s0/0", "s0/1")
    assert finish_done(state, "s0/0", claim(state, "s0/0"), source="1:2")
    assert state.reset(RUN, "s0/0", "output shard file is missing")
    back = state.get(RUN, "s0/0")
    assert back.status is ShardStatus.QUEUED
    assert back.error["kind"] == "reset" and "missing" in back.error["cause"]
    assert back.chunks_done == 0 and back.bytes_written == 0 and back.source == ""
    assert state.claim(RUN, "s0/0", "w2", "t2gi", stale).ok

    holder = claim(state, "s0/1", "slow", "t2gi", stale)
    assert state.reset(RUN, "s0/1", "source changed")
    assert not state.heartbeat(RUN, "s0/1", holder, 3)
    assert not finish_done(state, "s0/1", holder)
    assert state.get(RUN, "s0/1").status is ShardStatus.QUEUED
    assert not state.reset(RUN, "s9/none", "x")


# -- list / summary -------------------------------------------------------------------------


def test_list_filters_order_and_limit(state: StateStore):
    keys = ["s1/0a", "s0/ff", "s0/00", "s2/1", "s1/03", "s0/0b"]
    state.plan([rec(k, scale=int(k[1]), shard=int(k[3:], 16)) for k in keys])
    state.plan([rec("s0/00", run_id="other-run")])
    finish_done(state, "s0/ff", claim(state, "s0/ff"))
    claim(state, "s1/03")

    assert [r.key for r in state.list(RUN)] == sorted(keys)
    assert all(r.run_id == RUN for r in state.list(RUN))
    assert [r.key for r in state.list(RUN, scale=0)] == ["s0/00", "s0/0b", "s0/ff"]
    assert [r.key for r in state.list(RUN, scale=1)] == ["s1/03", "s1/0a"]
    assert [r.key for r in state.list(RUN, status=ShardStatus.QUEUED)] == [
        "s0/00", "s0/0b", "s1/0a", "s2/1",
    ]  # fmt: skip
    assert [r.key for r in state.list(RUN, status=ShardStatus.QUEUED, limit=2)] == [
        "s0/00", "s0/0b",
    ]  # fmt: skip
    assert [r.key for r in state.list(RUN, status=ShardStatus.DONE)] == ["s0/ff"]
    assert [r.key for r in state.list(RUN, status=ShardStatus.RUNNING, scale=1)] == ["s1/03"]
    assert state.list(RUN, status=ShardStatus.RUNNING, scale=0) == []
    assert state.list(RUN, scale=7) == []
    assert [r.key for r in state.list("other-run")] == ["s0/00"]
    assert state.list("no-run") == []
    assert state.list(RUN, scale=0)[2].shard == 0xFF


def test_summary_totals_by_scale_tier_and_status(state: StateStore):
    assert state.summary(RUN) == []
    assert counts_by_status(state.summary(RUN)) == dict.fromkeys(ShardStatus, 0)
    state.plan(
        [rec(f"s0/{i}", shard=i, tier="t2gi", chunks_expected=10) for i in range(6)]
        + [rec("s1/0", scale=1, tier="t8gi", chunks_expected=100)]
    )
    state.plan([rec("s0/0", run_id="other-run", chunks_expected=99)])
    finish_done(state, "s0/0", claim(state, "s0/0"), chunks_done=10, bytes_written=1000)
    finish_done(state, "s0/1", claim(state, "s0/1"), chunks_done=10, bytes_written=500)
    finish_empty(state, "s0/2", claim(state, "s0/2"))
    state.fail(RUN, "s0/3", claim(state, "s0/3"), {"kind": "input"})
    t = claim(state, "s0/4", tier="t4gi")
    state.heartbeat(RUN, "s0/4", t, 3)

    rows = {(r.scale, r.tier, r.status): r for r in state.summary(RUN)}
    assert set(rows) == {
        (0, "t2gi", ShardStatus.DONE),
        (0, "t2gi", ShardStatus.EMPTY),
        (0, "t2gi", ShardStatus.FAILED),
        (0, "t4gi", ShardStatus.RUNNING),
        (0, "t2gi", ShardStatus.QUEUED),
        (1, "t8gi", ShardStatus.QUEUED),
    }
    done = rows[(0, "t2gi", ShardStatus.DONE)]
    assert (done.shards, done.chunks_expected, done.chunks_done) == (2, 20, 20)
    assert (done.chunks_written, done.bytes_written) == (12, 1500)
    assert rows[(0, "t4gi", ShardStatus.RUNNING)].chunks_done == 3
    assert rows[(1, "t8gi", ShardStatus.QUEUED)].chunks_expected == 100
    assert counts_by_status(state.summary(RUN)) == {
        ShardStatus.QUEUED: 2,
        ShardStatus.RUNNING: 1,
        ShardStatus.DONE: 2,
        ShardStatus.EMPTY: 1,
        ShardStatus.FAILED: 1,
    }
    assert counts_by_status(state.summary("other-run"))[ShardStatus.QUEUED] == 1


def test_finished_since_counts_recent_work(state_backend: StateHarness, state: StateStore):
    h = state_backend
    require_clock = h.controllable_clock
    planned(state, "s0/0", "s0/1", "s0/2", "s0/3")
    finish_done(state, "s0/0", claim(state, "s0/0"), chunks_done=8)
    h.advance(100 if require_clock else 1.5)
    mark = state.get(RUN, "s0/0").finished_at + (50 if require_clock else 0.75)
    finish_done(state, "s0/1", claim(state, "s0/1"), chunks_done=5)
    finish_empty(state, "s0/2", claim(state, "s0/2"))
    state.fail(RUN, "s0/3", claim(state, "s0/3"), {"kind": "input"})
    assert state.finished_since(RUN, mark) == (2, 5 + 8)
    assert state.finished_since(RUN, 0) == (3, 8 + 5 + 8)
    assert state.finished_since("other-run", 0) == (0, 0)


# -- many processes -------------------------------------------------------------------------


def test_processes_racing_to_claim_each_shard_exactly_one_wins(
    state_backend: StateHarness, state: StateStore
):
    keys = [f"s0/{i:02x}" for i in range(40)]
    state.plan([rec(k, shard=i) for i, k in enumerate(keys)])
    n_procs = 4
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    results = ctx.Queue()
    opener = state_backend.opener(state)
    procs = [
        ctx.Process(
            target=_mp_workers.race_claims,
            args=(opener, RUN, keys, f"worker-{w}", barrier, results),
        )
        for w in range(n_procs)
    ]
    for p in procs:
        p.start()
    try:
        reports = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    errors = [err for _, _, err in reports if err]
    assert not errors, "\n".join(errors)

    winner_of: dict[str, list[str]] = {k: [] for k in keys}
    for worker, won, _ in reports:
        for key in won:
            winner_of[key].append(worker)
    assert {k: len(w) for k, w in winner_of.items()} == dict.fromkeys(keys, 1)
    for key, [worker] in winner_of.items():
        r = state.get(RUN, key)
        assert r.status is ShardStatus.RUNNING
        assert r.worker == worker
        assert r.attempts == 1

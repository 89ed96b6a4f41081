"""Contract tests for `backends.base.StateStore`: every state backend must pass these."""

from __future__ import annotations

import multiprocessing

import pytest

from dvid2ng.backends.base import ShardRecord, ShardStatus, StateStore
from tests.backends import _mp_workers
from tests.backends.conftest import StateHarness

RUN = "run-1"


def rec(key: str, scale: int = 0, shard: int = 0, run_id: str = RUN, **kw) -> ShardRecord:
    return ShardRecord(run_id=run_id, key=key, scale=scale, shard=shard, **kw)


def planned(state: StateStore, *keys: str) -> None:
    state.plan([rec(k, scale=int(k[1]), shard=i, chunks_expected=8) for i, k in enumerate(keys)])


def finish_done(state: StateStore, key: str, worker: str, **metrics: int) -> None:
    m = {"chunks_done": 8, "chunks_written": 6, "bytes_written": 4096, "peak_rss_bytes": 2**30}
    m.update(metrics)
    state.finish(RUN, key, worker, ShardStatus.DONE, **m)


# -- runs -----------------------------------------------------------------------------------


def test_put_run_first_one_wins(state: StateStore):
    assert state.get_run(RUN) is None
    config = {"source": "gs://b/export", "scales": [0, 1, 2], "spec": {"chunk": [64, 64, 64]}}
    state.put_run(RUN, config)
    state.put_run(RUN, {"source": "somewhere else"})
    assert state.get_run(RUN) == config
    state.put_run("run-2", {"x": 1})
    assert state.get_run("run-2") == {"x": 1}
    assert state.get_run(RUN) == config


# -- plan -----------------------------------------------------------------------------------


def test_plan_inserts_and_round_trips_every_field(state: StateStore):
    big = rec(
        "s2/ffff",
        scale=2,
        shard=0xFFFF,
        tier="t8gi",
        chunks_expected=512,
    )
    assert state.plan([big, rec("s0/0", chunks_expected=3)]) == 2
    got = state.get(RUN, "s2/ffff")
    assert got == big
    assert got.status is ShardStatus.QUEUED
    assert state.get(RUN, "s0/missing") is None
    assert state.get("other-run", "s2/ffff") is None


def test_plan_keeps_existing_records_for_resume(state: StateStore):
    assert state.plan([rec("s0/0"), rec("s0/1"), rec("s0/2")]) == 3
    assert state.claim(RUN, "s0/0", "w1", "t2gi", 60.0) is not None
    finish_done(state, "s0/0", "w1")
    assert state.claim(RUN, "s0/1", "w1", "t2gi", 60.0) is not None
    state.fail(RUN, "s0/1", "w1", {"kind": "decode", "cause": "bad block"})

    # re-planning the same run (resume) adds only what is missing
    assert state.plan([rec("s0/0"), rec("s0/1"), rec("s0/2"), rec("s0/3"), rec("s1/0", 1)]) == 2
    assert state.plan([rec("s0/0"), rec("s0/3")]) == 0
    assert state.get(RUN, "s0/0").status is ShardStatus.DONE
    assert state.get(RUN, "s0/0").chunks_written == 6
    failed = state.get(RUN, "s0/1")
    assert failed.status is ShardStatus.FAILED and failed.error == {
        "kind": "decode",
        "cause": "bad block",
    }
    assert len(state.list(RUN)) == 5
    assert state.plan([]) == 0


# -- claim ----------------------------------------------------------------------------------


def test_claim_marks_running_and_counts_attempt(state_backend: StateHarness, state: StateStore):
    planned(state, "s0/0")
    got = state.claim(RUN, "s0/0", "worker-a", "t4gi", state_backend.stale_after_s)
    assert got is not None
    assert got.status is ShardStatus.RUNNING
    assert got.worker == "worker-a"
    assert got.tier == "t4gi"
    assert got.attempts == 1
    assert got.chunks_done == 0
    assert got.chunks_expected == 8
    assert got.started_at > 0
    assert got.error is None
    assert state.get(RUN, "s0/0") == got


def test_claim_is_exclusive_while_owner_is_fresh(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    planned(state, "s0/0")
    a = state.claim(RUN, "s0/0", "worker-a", "t2gi", stale)
    assert a is not None
    assert state.claim(RUN, "s0/0", "worker-b", "t4gi", stale) is None
    now = state.get(RUN, "s0/0")
    assert now.worker == "worker-a" and now.tier == "t2gi" and now.attempts == 1


def test_same_worker_may_claim_again(state_backend: StateHarness, state: StateStore):
    planned(state, "s0/0")
    assert state.claim(RUN, "s0/0", "worker-a", "t2gi", state_backend.stale_after_s) is not None
    again = state.claim(RUN, "s0/0", "worker-a", "t4gi", state_backend.stale_after_s)
    assert again is not None and again.attempts == 2 and again.tier == "t4gi"


def test_claim_of_unplanned_shard_raises(state_backend: StateHarness, state: StateStore):
    with pytest.raises(KeyError):
        state.claim(RUN, "s9/dead", "worker-a", "t2gi", state_backend.stale_after_s)


def test_finished_shards_cannot_be_claimed(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    planned(state, "s0/0", "s0/1")
    state.claim(RUN, "s0/0", "w", "t2gi", stale)
    finish_done(state, "s0/0", "w")
    state.claim(RUN, "s0/1", "w", "t2gi", stale)
    state.finish(
        RUN, "s0/1", "w", ShardStatus.EMPTY,
        chunks_done=8, chunks_written=0, bytes_written=0, peak_rss_bytes=1,
    )  # fmt: skip
    state_backend.advance(stale * 2)
    for key in ("s0/0", "s0/1"):
        assert state.claim(RUN, key, "w2", "t4gi", stale) is None
        assert state.claim(RUN, key, "w", "t4gi", stale) is None
    assert state.get(RUN, "s0/0").status is ShardStatus.DONE
    assert state.get(RUN, "s0/1").status is ShardStatus.EMPTY
    assert state.get(RUN, "s0/0").attempts == 1


def test_failed_shard_can_be_claimed_again(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    planned(state, "s0/0")
    state.claim(RUN, "s0/0", "w1", "t2gi", stale)
    state.heartbeat(RUN, "s0/0", "w1", 5)
    state.fail(RUN, "s0/0", "w1", {"kind": "oom", "cause": "MemoryError"}, peak_rss_bytes=2**31)
    retry = state.claim(RUN, "s0/0", "w2", "t4gi", stale)
    assert retry is not None
    assert retry.status is ShardStatus.RUNNING
    assert retry.worker == "w2" and retry.tier == "t4gi"
    assert retry.attempts == 2
    assert retry.error is None
    assert retry.chunks_done == 0
    assert retry.finished_at == 0


def test_stale_claim_is_taken_over(state_backend: StateHarness, state: StateStore):
    h = state_backend
    stale = h.stale_after_s
    planned(state, "s0/0")
    first = state.claim(RUN, "s0/0", "worker-a", "t2gi", stale)
    assert first is not None
    h.advance(stale * 0.5)
    assert state.claim(RUN, "s0/0", "worker-b", "t2gi", stale) is None
    h.advance(stale * 0.5 + 1)  # worker-a is silent for longer than stale_after_s
    taken = state.claim(RUN, "s0/0", "worker-b", "t4gi", stale)
    assert taken is not None
    assert taken.worker == "worker-b" and taken.tier == "t4gi" and taken.attempts == 2
    assert taken.started_at >= first.started_at


def test_heartbeat_keeps_claim_fresh(state_backend: StateHarness, state: StateStore):
    h = state_backend
    stale = h.stale_after_s
    planned(state, "s0/0")
    assert state.claim(RUN, "s0/0", "worker-a", "t2gi", stale) is not None
    for done in (2, 4, 6):
        h.advance(stale * 0.6)
        state.heartbeat(RUN, "s0/0", "worker-a", done)
        assert state.claim(RUN, "s0/0", "worker-b", "t2gi", stale) is None
        assert state.get(RUN, "s0/0").chunks_done == done
    h.advance(stale + 1)  # heartbeats stopped
    assert state.claim(RUN, "s0/0", "worker-b", "t2gi", stale) is not None


# -- ownership ------------------------------------------------------------------------------


def test_displaced_worker_cannot_clobber_new_owner(state_backend: StateHarness, state: StateStore):
    h = state_backend
    stale = h.stale_after_s
    planned(state, "s0/0")
    state.claim(RUN, "s0/0", "old", "t2gi", stale)
    h.advance(stale + 1)
    new = state.claim(RUN, "s0/0", "new", "t4gi", stale)
    assert new is not None
    state.heartbeat(RUN, "s0/0", "new", 3)

    state.heartbeat(RUN, "s0/0", "old", 7)
    finish_done(state, "s0/0", "old")
    state.fail(RUN, "s0/0", "old", {"kind": "x"})
    state.release(RUN, "s0/0", "old")
    cur = state.get(RUN, "s0/0")
    assert cur.status is ShardStatus.RUNNING
    assert cur.worker == "new" and cur.tier == "t4gi"
    assert cur.chunks_done == 3
    assert cur.error is None and cur.chunks_written == 0

    # the old worker's heartbeat must not have refreshed the new owner's claim either way;
    # the new owner's own heartbeats still count
    h.advance(stale * 0.6)
    state.heartbeat(RUN, "s0/0", "new", 4)
    h.advance(stale * 0.6)
    assert state.claim(RUN, "s0/0", "third", "t2gi", stale) is None


def test_non_owner_calls_on_unclaimed_shard_are_ignored(state: StateStore):
    planned(state, "s0/0")
    state.heartbeat(RUN, "s0/0", "nobody", 5)
    finish_done(state, "s0/0", "nobody")
    state.fail(RUN, "s0/0", "nobody", {"kind": "x"})
    state.release(RUN, "s0/0", "nobody")
    cur = state.get(RUN, "s0/0")
    assert cur == rec("s0/0", chunks_expected=8)


def test_finish_records_metrics(state_backend: StateHarness, state: StateStore):
    planned(state, "s0/0")
    state.claim(RUN, "s0/0", "w", "t2gi", state_backend.stale_after_s)
    state_backend.advance(5)
    state.finish(
        RUN, "s0/0", "w", ShardStatus.DONE,
        chunks_done=8, chunks_written=7, bytes_written=123_456_789_012, peak_rss_bytes=3 * 2**30,
    )  # fmt: skip
    done = state.get(RUN, "s0/0")
    assert done.status is ShardStatus.DONE
    assert done.worker == "w"
    assert (done.chunks_done, done.chunks_written) == (8, 7)
    assert done.bytes_written == 123_456_789_012
    assert done.peak_rss_bytes == 3 * 2**30
    assert done.finished_at >= done.started_at > 0
    assert done.duration_s >= 0
    if state_backend.controllable_clock:
        assert done.duration_s == pytest.approx(5)
    # finishing twice (a duplicate delivery) changes nothing
    finish_done(state, "s0/0", "w", chunks_written=1)
    assert state.get(RUN, "s0/0") == done


def test_finish_rejects_unfinished_status(state_backend: StateHarness, state: StateStore):
    planned(state, "s0/0")
    state.claim(RUN, "s0/0", "w", "t2gi", state_backend.stale_after_s)
    for bad in (ShardStatus.FAILED, ShardStatus.QUEUED, ShardStatus.RUNNING):
        with pytest.raises(ValueError):
            state.finish(
                RUN, "s0/0", "w", bad,
                chunks_done=0, chunks_written=0, bytes_written=0, peak_rss_bytes=0,
            )  # fmt: skip
    assert state.get(RUN, "s0/0").status is ShardStatus.RUNNING


def test_fail_records_error_json_round_trip(state_backend: StateHarness, state: StateStore):
    planned(state, "s0/0")
    state.claim(RUN, "s0/0", "w", "t2gi", state_backend.stale_after_s)
    error = {
        "file": "gs://bucket/export/s0-0001.arrow",
        "chunk": [64, 128, 0],
        "cause": "ValueError: block header says 4 labels, found 3 — ünïcödé",
        "kind": "decode",
        "nested": {"row": 17, "offset": 2**40, "ratio": 0.25, "ok": False, "none": None},
    }
    state.fail(RUN, "s0/0", "w", error, peak_rss_bytes=12345)
    got = state.get(RUN, "s0/0")
    assert got.status is ShardStatus.FAILED
    assert got.error == error
    assert got.peak_rss_bytes == 12345
    assert got.finished_at >= got.started_at > 0
    assert state.list(RUN, status=ShardStatus.FAILED)[0].error == error


def test_release_returns_shard_to_queue(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    planned(state, "s0/0")
    state.claim(RUN, "s0/0", "w1", "t2gi", stale)
    state.release(RUN, "s0/0", "w2")  # not the owner
    assert state.get(RUN, "s0/0").status is ShardStatus.RUNNING
    state.release(RUN, "s0/0", "w1")
    assert state.get(RUN, "s0/0").status is ShardStatus.QUEUED
    # claimable at once by anyone, without waiting for staleness
    again = state.claim(RUN, "s0/0", "w2", "t2gi", stale)
    assert again is not None and again.worker == "w2" and again.attempts == 2


def test_reopen_requeues_only_finished_shards(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    planned(state, "s1/0", "s1/1", "s1/2")
    state.claim(RUN, "s1/0", "w", "t2gi", stale)
    finish_done(state, "s1/0", "w")
    state.claim(RUN, "s1/1", "w", "t2gi", stale)
    assert not state.reopen(RUN, "s1/1"), "a running shard is not reopened"
    assert not state.reopen(RUN, "s1/2"), "a queued shard is not reopened"
    assert not state.reopen(RUN, "s1/9"), "an unknown shard is not reopened"
    assert state.reopen(RUN, "s1/0")
    got = state.get(RUN, "s1/0")
    assert got.status is ShardStatus.QUEUED and got.chunks_written == 0 and got.bytes_written == 0
    assert state.get(RUN, "s1/1").status is ShardStatus.RUNNING
    again = state.claim(RUN, "s1/0", "w2", "t2gi", stale)
    assert again is not None and again.attempts == 2


# -- list / counts --------------------------------------------------------------------------


def test_list_filters_and_order(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    keys = ["s1/0a", "s0/ff", "s0/00", "s2/1", "s1/03", "s0/0b"]
    state.plan([rec(k, scale=int(k[1]), shard=int(k[3:], 16)) for k in keys])
    state.plan([rec("s0/00", run_id="other-run")])
    state.claim(RUN, "s0/ff", "w", "t2gi", stale)
    finish_done(state, "s0/ff", "w")
    state.claim(RUN, "s1/03", "w", "t2gi", stale)

    assert [r.key for r in state.list(RUN)] == sorted(keys)
    assert all(r.run_id == RUN for r in state.list(RUN))
    assert [r.key for r in state.list(RUN, scale=0)] == ["s0/00", "s0/0b", "s0/ff"]
    assert [r.key for r in state.list(RUN, scale=1)] == ["s1/03", "s1/0a"]
    assert [r.key for r in state.list(RUN, status=ShardStatus.QUEUED)] == [
        "s0/00", "s0/0b", "s1/0a", "s2/1",
    ]  # fmt: skip
    assert [r.key for r in state.list(RUN, status=ShardStatus.DONE)] == ["s0/ff"]
    assert [r.key for r in state.list(RUN, status=ShardStatus.RUNNING, scale=1)] == ["s1/03"]
    assert state.list(RUN, status=ShardStatus.RUNNING, scale=0) == []
    assert state.list(RUN, scale=7) == []
    assert [r.key for r in state.list("other-run")] == ["s0/00"]
    assert state.list("no-run") == []
    assert state.list(RUN, scale=0)[2].shard == 0xFF


def test_counts_cover_every_status(state_backend: StateHarness, state: StateStore):
    stale = state_backend.stale_after_s
    assert state.counts(RUN) == dict.fromkeys(ShardStatus, 0)
    planned(state, *[f"s0/{i}" for i in range(6)])
    state.plan([rec("s0/0", run_id="other-run")])
    state.claim(RUN, "s0/0", "w", "t2gi", stale)
    finish_done(state, "s0/0", "w")
    state.claim(RUN, "s0/1", "w", "t2gi", stale)
    state.finish(
        RUN, "s0/1", "w", ShardStatus.EMPTY,
        chunks_done=8, chunks_written=0, bytes_written=0, peak_rss_bytes=0,
    )  # fmt: skip
    state.claim(RUN, "s0/2", "w", "t2gi", stale)
    state.fail(RUN, "s0/2", "w", {"kind": "io"})
    state.claim(RUN, "s0/3", "w", "t2gi", stale)
    counts = state.counts(RUN)
    assert set(counts) == set(ShardStatus)
    assert counts == {
        ShardStatus.QUEUED: 2,
        ShardStatus.RUNNING: 1,
        ShardStatus.DONE: 1,
        ShardStatus.EMPTY: 1,
        ShardStatus.FAILED: 1,
    }
    assert state.counts("other-run")[ShardStatus.QUEUED] == 1


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
        reports = [results.get(timeout=60) for _ in procs]
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

"""Firestore beyond the contract: document ids, uint64 shards, server-timestamp heartbeats,
batched planning, and a summary of thousands of shards that never lists them. Against the real
Firestore emulator (tests/emulators.py); the two-process claim race and the fenced displaced
worker are in the contract suite (test_contract_state.py), which runs on Firestore too."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from hypothesis import given
from hypothesis import strategies as st

from dvid2ng.backends import open_state
from dvid2ng.backends.base import ShardRecord, ShardStatus, StateStore
from dvid2ng.backends.firestore_state import (
    MAX_ERROR_JSON_BYTES,
    FirestoreStateStore,
    run_doc_id,
    run_id_of,
    shard_doc_id,
    shard_key,
)
from tests.backends.firestore_recorder import QueryRecorder

RUN = "run-7"


def valid_document_id(doc_id: str) -> bool:
    """Firestore's rules for a document id."""
    return (
        bool(doc_id)
        and "/" not in doc_id
        and doc_id not in (".", "..")
        and not (doc_id.startswith("__") and doc_id.endswith("__"))
        and len(doc_id.encode()) <= 1500
    )


@given(st.text(min_size=1, max_size=200))
def test_document_ids_are_valid_and_reversible(name: str):
    for encode, decode in ((shard_doc_id, shard_key), (run_doc_id, run_id_of)):
        doc_id = encode(name)
        assert valid_document_id(doc_id), (name, doc_id)
        assert decode(doc_id) == name


def test_shard_ids_read_as_the_key():
    assert shard_doc_id("s0/061c5") == "s0-061c5"
    assert shard_doc_id("s12/ffffffffffffffff") == "s12-ffffffffffffffff"
    assert shard_doc_id("a-b/c") == "a%2Db-c"  # a "-" in a key cannot be confused with "/"
    assert run_doc_id("2026-12-01-mcns") == "2026-12-01-mcns"
    assert run_doc_id("team/run") == "team%2Frun"
    with pytest.raises(ValueError):
        shard_doc_id("")


def test_opens_from_its_url():
    s = open_state("firestore://my-project/my-db")
    assert isinstance(s, FirestoreStateStore) and isinstance(s, StateStore)
    assert (s.project, s.database, s.url) == ("my-project", "my-db", "firestore://my-project/my-db")
    assert open_state("firestore://p").database == "(default)"


@pytest.fixture
def store(firestore_project: str):
    s = FirestoreStateStore(firestore_project)
    yield s
    s.close()


def raw(store: FirestoreStateStore, key: str, run: str = RUN) -> dict:
    return store._ref(run, key).get().to_dict()


def test_uint64_shards_round_trip(store: FirestoreStateStore):
    values = [0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
    store.plan([ShardRecord(RUN, f"s0/{v:x}", 0, v) for v in values])
    for v in values:
        assert store.get(RUN, f"s0/{v:x}").shard == v
        assert raw(store, f"s0/{v:x}")["shard"] == str(v)  # not an int64 in the document
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="uint64"):
            store.plan([ShardRecord(RUN, "s0/bad", 0, bad)])


def test_heartbeats_are_server_timestamps(store: FirestoreStateStore):
    store.plan([ShardRecord(RUN, "s0/a", 0, 10, chunks_expected=5)])
    planned = raw(store, "s0/a")
    assert planned["heartbeat_at"] is None and planned["started_at"] is None
    claim = store.claim(RUN, "s0/a", "w", "t2gi", 60)
    doc = raw(store, "s0/a")
    assert isinstance(doc["heartbeat_at"], DatetimeWithNanoseconds)  # a Firestore timestamp
    assert claim.record.heartbeat_at == doc["heartbeat_at"].timestamp()
    assert claim.record.started_at == doc["started_at"].timestamp()
    assert abs(claim.record.heartbeat_at - time.time()) < 120  # the emulator's clock is ours

    time.sleep(0.05)
    assert store.heartbeat(RUN, "s0/a", claim.token, 3)
    beat = store.get(RUN, "s0/a")
    assert beat.heartbeat_at > claim.record.heartbeat_at
    assert beat.heartbeat_at == raw(store, "s0/a")["heartbeat_at"].timestamp()
    assert beat.started_at == claim.record.started_at and beat.chunks_done == 3

    assert store.finish(RUN, "s0/a", claim.token, ShardStatus.DONE, chunks_done=5,
                        chunks_written=4, bytes_written=99, peak_rss_bytes=1)  # fmt: skip
    done = raw(store, "s0/a")
    assert isinstance(done["finished_at"], DatetimeWithNanoseconds)
    assert done["finished_at"] >= doc["started_at"]


def test_plan_in_batches_keeps_existing_and_races_safely(store: FirestoreStateStore):
    """1,700 records: four commits of up to 500 creates; a re-plan creates only what is new,
    and two planners racing on the same records create each shard once."""
    recs = [ShardRecord(RUN, f"s0/{i:04x}", 0, i, chunks_expected=i) for i in range(1700)]
    assert store.plan(recs[:1000] + recs[:10]) == 1000  # duplicates inside one call: first wins
    token = store.claim(RUN, "s0/0005", "w", "t2gi", 60).token
    assert store.finish(RUN, "s0/0005", token, ShardStatus.EMPTY, chunks_done=5,
                        chunks_written=0, bytes_written=0, peak_rss_bytes=0)  # fmt: skip
    other = FirestoreStateStore(store.project)
    with ThreadPoolExecutor(2) as pool:
        created = list(pool.map(lambda s: s.plan(recs), [store, other]))
    assert sum(created) == 700
    assert store.get(RUN, "s0/0005").status is ShardStatus.EMPTY  # kept as it was
    assert store.get(RUN, "s0/06a3").chunks_expected == 0x6A3
    counts = {r.status: r.shards for r in store.summary(RUN)}
    assert counts == {ShardStatus.QUEUED: 1699, ShardStatus.EMPTY: 1}
    other.close()


def test_huge_errors_are_kept_short_enough_for_a_document(store: FirestoreStateStore):
    store.plan([ShardRecord(RUN, "s0/e", 0, 14)])
    token = store.claim(RUN, "s0/e", "w", "t2gi", 60).token
    error = {"kind": "transient", "cause": "boom", "traceback": "x" * (2 * MAX_ERROR_JSON_BYTES)}
    assert store.fail(RUN, "s0/e", token, error)
    got = store.get(RUN, "s0/e").error
    assert got["kind"] == "transient" and got["cause"] == "boom" and "truncated" in got
    assert "traceback" not in got


def test_run_ids_with_slashes_round_trip(store: FirestoreStateStore):
    store.put_run("team/2026-12-01", {"scales": [0, 1]})
    store.plan([ShardRecord("team/2026-12-01", "s1/0", 1, 0)])
    assert store.runs() == [("team/2026-12-01", {"scales": [0, 1]})]
    assert store.get("team/2026-12-01", "s1/0").run_id == "team/2026-12-01"


def _random_records(n: int, seed: int = 7) -> list[ShardRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        status = rng.choice(list(ShardStatus))
        finished = status.finished or status is ShardStatus.FAILED
        out.append(
            ShardRecord(
                RUN,
                f"s{i % 3}/{i:05x}",
                scale=i % 3,
                shard=i,
                status=status,
                tier=rng.choice(["t2gi", "t4gi"]),
                attempts=1 if status is not ShardStatus.QUEUED else 0,
                chunks_expected=rng.randint(0, 32768),
                chunks_done=rng.randint(0, 32768) if status is not ShardStatus.QUEUED else 0,
                chunks_written=rng.randint(0, 30000) if status.finished else 0,
                bytes_written=rng.randint(0, 2**31) if status is ShardStatus.DONE else 0,
                started_at=time.time() - 100 if status is not ShardStatus.QUEUED else 0.0,
                finished_at=time.time() - rng.choice([10, 1000]) if finished else 0.0,
                heartbeat_at=time.time() - 50 if status is not ShardStatus.QUEUED else 0.0,
            )
        )
    return out


def test_summary_of_2000_shards_is_exact_and_lists_nothing(store: FirestoreStateStore):
    """The 26,000-shard status screen on a smaller scale: every (scale, tier, status) total
    equals what the records say, and the store read about one document per group (the skip
    scan), never the shards themselves."""
    recs = _random_records(2000)
    assert store.plan(recs) == 2000
    expected: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for r in recs:
        totals = expected[(r.scale, r.tier, r.status)]
        for i, v in enumerate(
            (1, r.chunks_expected, r.chunks_done, r.chunks_written, r.bytes_written)
        ):
            totals[i] += v

    with QueryRecorder(store.client) as rec:
        rows = store.summary(RUN)
        recent = store.finished_since(RUN, time.time() - 500)
    got = {
        (r.scale, r.tier, r.status): [
            r.shards, r.chunks_expected, r.chunks_done, r.chunks_written, r.bytes_written,
        ]
        for r in rows
    }  # fmt: skip
    assert got == dict(expected)
    assert rows == sorted(rows, key=lambda r: (r.scale, r.tier, r.status.value))

    fin = [r for r in recs if r.status.finished and r.finished_at >= time.time() - 500]
    assert recent == (len(fin), sum(r.chunks_done for r in fin))

    groups = len(expected)
    document_queries = [q for q in rec.queries if q.method == "run_query"]
    assert rec.listings == [] and rec.batch_gets <= 1  # (the run document's read time)
    assert all(q.limit == 1 and q.projection == ("scale", "tier") for q in document_queries)
    assert len(document_queries) == groups + len(ShardStatus)  # one probe per group + one more
    assert sum(q.documents_returned for q in document_queries) == groups
    aggregations = [q for q in rec.queries if q.method == "run_aggregation_query"]
    assert len(aggregations) == groups + 1  # one per group, plus finished_since


def test_summary_is_one_snapshot_while_shards_move(store: FirestoreStateStore):
    """Shards finishing while a summary runs never make it count one shard twice or not at
    all: every query of one summary reads at the same read time."""
    n = 120
    store.plan([ShardRecord(RUN, f"s0/{i:03x}", 0, i, tier="t2gi") for i in range(n)])
    tokens = {
        f"s0/{i:03x}": store.claim(RUN, f"s0/{i:03x}", "w", "t2gi", 60).token for i in range(n)
    }

    def finish_all() -> None:
        for key, token in tokens.items():
            store.finish(RUN, key, token, ShardStatus.DONE, chunks_done=1, chunks_written=1,
                         bytes_written=1, peak_rss_bytes=1)  # fmt: skip

    with ThreadPoolExecutor(1) as pool:
        mover = pool.submit(finish_all)
        totals = []
        while not mover.done():
            totals.append(sum(r.shards for r in store.summary(RUN)))
        mover.result()
    assert totals and set(totals) == {n}
    assert {r.status for r in store.summary(RUN)} == {ShardStatus.DONE}

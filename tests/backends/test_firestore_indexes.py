"""Every query the Firestore store sends is served by an index fleet.json declares.

The emulator does not enforce indexes (a query that production would refuse with
FAILED_PRECONDITION "The query requires an index" just works there), so this is checked
statically: the store runs against the emulator with every query it sends recorded
(tests/backends/firestore_recorder.py observes the real calls), and each recorded query is
checked against `firestore.indexes` / `single_field_exemptions` of schemas/json/fleet.json
with Firestore's rules, implemented here independently of the store's own registry:

* a query whose filters, orders and sums all name one field (or none) is served by the
  automatic single-field indexes, unless that field is exempted;
* otherwise it needs a composite index on its collection:
  - a query with an order (or a range filter, which orders by its field) needs one whose
    fields are exactly its equality fields (any order), then its order fields in order with
    their directions (the range field first); `__name__` is implicit at the end;
  - an aggregation without order needs one that starts with its equality fields (any order),
    then its range field, and contains every summed field (sum() reads the index entries).
"""

from __future__ import annotations

import time

import pytest

from dvid2ng.backends.base import ShardRecord, ShardStatus
from dvid2ng.backends.firestore_state import (
    QUERIES,
    FirestoreStateStore,
    QueryShape,
    required_indexes,
)
from dvid2ng.schemas.fleet import fleet_config
from tests.backends.firestore_recorder import QueryRecorder, SentQuery

RUN = "idx-run"


def declared() -> tuple[list[dict], list[dict]]:
    fs = fleet_config()["firestore"]
    return fs["indexes"], fs["single_field_exemptions"]


def _fields(index: dict) -> list[tuple[str, str]]:
    return [(f["field_path"], f["order"]) for f in index["fields"] if f["field_path"] != "__name__"]


def uncovered(q: SentQuery, indexes: list[dict], exemptions: list[dict]) -> str | None:
    """Why Firestore would refuse `q` with these indexes, or None when one serves it."""
    if q.all_descendants:
        return "collection-group queries are not declared"
    exempt = {e["field"] for e in exemptions if e["collection"] == q.collection}
    used = {*q.equality, *q.ranges, *(f for f, _ in q.order), *q.sums}
    if used & exempt:
        return f"uses exempted fields {sorted(used & exempt)}"
    if len(used) <= 1:
        return None  # the automatic single-field indexes
    if len(set(q.ranges)) > 1:
        return "more than one range field"
    order = list(q.order)
    if q.ranges and not order:
        order = [(q.ranges[0], "ASCENDING")]
    if q.ranges and order[0][0] != q.ranges[0]:
        return "the first order must be the range field"
    candidates = [
        _fields(i)
        for i in indexes
        if i["collection"] == q.collection and i["query_scope"] == "COLLECTION"
    ]
    n = len(set(q.equality))
    for fields in candidates:
        if {f for f, _ in fields[:n]} != set(q.equality):
            continue
        rest = fields[n:]
        if q.order:  # ordered results: the index must sort exactly so
            if rest == order:
                return None
            continue
        if q.ranges:
            if not rest or rest[0][0] != q.ranges[0]:
                continue
            rest = rest[1:]
        if set(q.sums) <= {f for f, _ in rest}:
            return None
    return f"no composite index serves {q.signature()}"


def shape_signature(s: QueryShape) -> tuple:
    return (
        s.collection,
        tuple(sorted(s.equality)),
        tuple(sorted([s.range] if s.range else [])),
        s.order,
        tuple(sorted(s.sums)),
    )


# -- the rules themselves (so that the check can fail) --------------------------------------


def _q(**kw) -> SentQuery:
    base = dict(method="run_query", collection="shards", all_descendants=False, equality=(),
                ranges=(), order=(), sums=(), limit=None, projection=None)  # fmt: skip
    return SentQuery(**{**base, **kw})


def test_the_rules_refuse_what_firestore_refuses():
    idx = [{"collection": "shards", "query_scope": "COLLECTION", "fields": [
        {"field_path": "status", "order": "ASCENDING"},
        {"field_path": "key", "order": "ASCENDING"},
    ]}]  # fmt: skip
    ex = [{"collection": "shards", "field": "heartbeat_at"}]
    assert uncovered(_q(equality=("status",)), [], ex) is None
    assert uncovered(_q(order=(("key", "ASCENDING"),)), [], ex) is None
    assert uncovered(_q(equality=("status",), order=(("key", "ASCENDING"),)), idx, ex) is None
    assert uncovered(_q(equality=("status",), order=(("key", "ASCENDING"),)), [], ex)
    assert uncovered(_q(equality=("status",), order=(("key", "DESCENDING"),)), idx, ex)
    assert uncovered(_q(equality=("scale",), order=(("key", "ASCENDING"),)), idx, ex)
    assert uncovered(_q(equality=("status", "tier")), [], ex)  # two fields: composite needed
    assert uncovered(_q(equality=("status",), sums=("key",)), idx, ex) is None
    assert uncovered(_q(equality=("status",), sums=("bytes_written",)), idx, ex)
    assert uncovered(_q(ranges=("heartbeat_at",)), [], ex)  # an exempted field
    assert uncovered(
        _q(collection="other", equality=("status",), order=(("key", "ASCENDING"),)), idx, ex
    )


def test_fleet_json_declares_exactly_the_indexes_the_registry_needs():
    indexes, exemptions = declared()
    canon = sorted(map(repr, required_indexes()))
    assert sorted(map(repr, indexes)) == canon
    assert {e["field"] for e in exemptions} >= {"heartbeat_at"}
    for shape in QUERIES.values():  # no declared query relies on an exempted field
        assert not (shape.fields | set(shape.sums)) & {e["field"] for e in exemptions}


# -- what the store really sends ------------------------------------------------------------


def exercise(store: FirestoreStateStore) -> None:
    """Every public method, every filter combination."""
    store.put_run(RUN, {"x": 1})
    store.plan([ShardRecord(RUN, f"s{i % 2}/{i:x}", i % 2, i, tier="t2gi") for i in range(8)])
    c = store.claim(RUN, "s0/0", "w", "t2gi", 60)
    store.heartbeat(RUN, "s0/0", c.token, 1)
    store.check(RUN, "s0/0", c.token)
    store.finish(RUN, "s0/0", c.token, ShardStatus.DONE, chunks_done=1, chunks_written=1,
                 bytes_written=1, peak_rss_bytes=1)  # fmt: skip
    c = store.claim(RUN, "s1/1", "w", "t2gi", 60)
    store.fail(RUN, "s1/1", c.token, {"kind": "input"}, tier="t4gi")
    c = store.claim(RUN, "s0/2", "w", "t2gi", 60)
    store.release(RUN, "s0/2", c.token, {"kind": "interrupted"}, tier="t4gi")
    store.reset(RUN, "s0/0", "file missing")
    store.get(RUN, "s0/0")
    store.get_run(RUN)
    store.runs()
    for status in (None, ShardStatus.QUEUED):
        for scale in (None, 1):
            for limit in (None, 3):
                store.list(RUN, status=status, scale=scale, limit=limit)
    store.summary(RUN)
    store.finished_since(RUN, time.time() - 60)


@pytest.fixture
def recorded(firestore_project: str) -> list[SentQuery]:
    store = FirestoreStateStore(firestore_project)
    with QueryRecorder(store.client) as rec:
        exercise(store)
    store.close()
    assert not rec.listings, "the store listed documents"
    return rec.queries


def test_every_query_sent_is_served_by_a_declared_index(recorded: list[SentQuery]):
    indexes, exemptions = declared()
    problems = {
        repr(q.signature()): why for q in recorded if (why := uncovered(q, indexes, exemptions))
    }
    assert not problems, problems


def test_every_query_sent_is_declared_in_the_registry_and_every_declared_one_is_used(
    recorded: list[SentQuery],
):
    sent = {q.signature() for q in recorded}
    registry = {shape_signature(s): name for name, s in QUERIES.items()}
    assert sent - set(registry) == set(), "queries the registry does not declare"
    assert set(registry) - sent == set(), f"declared but never sent: {set(registry) - sent}"

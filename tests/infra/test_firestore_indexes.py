"""Every Firestore query the code makes has its index in fleet.json (the emulator never enforces
indexes, so a missing one only fails in the cloud: "The query requires an index")."""

from __future__ import annotations

import copy
import importlib
import pkgutil

import pytest

import dvid2ng.backends
from dvid2ng.schemas import fleet
from dvid2ng.schemas.fleet import (
    CompositeIndex,
    FieldExemption,
    FirestoreQuery,
    IndexField,
    firestore_indexes,
    index_needed,
    index_serves,
    single_field_exemptions,
    uncovered_queries,
)

ASC, DESC = "ASCENDING", "DESCENDING"


def declared_queries() -> list[FirestoreQuery]:
    """FIRESTORE_QUERIES of every dvid2ng.backends module (the state backend declares there
    each query shape it sends, ideally building its queries from these declarations)."""
    found: list[FirestoreQuery] = []
    for m in pkgutil.iter_modules(dvid2ng.backends.__path__):
        module = importlib.import_module(f"dvid2ng.backends.{m.name}")
        found += list(getattr(module, "FIRESTORE_QUERIES", ()))
    return found


def test_every_declared_query_has_its_index():
    queries = declared_queries()
    if not queries:
        pytest.xfail(
            "no dvid2ng.backends module declares FIRESTORE_QUERIES yet (the Firestore state "
            "backend of the fleet issue, #6)"
        )
    assert all(isinstance(q, FirestoreQuery) for q in queries)
    problems = uncovered_queries(queries)
    assert not problems, "\n".join(problems)


def test_fleet_json_indexes_and_exemptions_parse():
    for ix in firestore_indexes():
        assert len(ix.fields) >= 2
    exemptions = single_field_exemptions()
    assert FieldExemption(
        fleet.fleet_config()["firestore"]["shards_collection"], "heartbeat_at"
    ) in (exemptions)


def test_equality_only_and_single_field_queries_need_no_composite_index():
    assert index_needed(FirestoreQuery("by run", "shards", equality=("run",))) is None
    assert index_needed(FirestoreQuery("run+status", "shards", equality=("run", "status"))) is None
    assert index_needed(FirestoreQuery("stale", "shards", range_field="heartbeat")) is None
    assert index_needed(FirestoreQuery("order", "shards", order_by=(("started", ASC),))) is None


def test_equality_with_range_order_or_sum_needs_the_matching_index():
    q = FirestoreQuery(
        "done chunks per scale",
        "shards",
        equality=("status", "run"),
        aggregate_fields=("chunks",),
    )
    need = index_needed(q)
    assert need == CompositeIndex(
        "shards",
        (IndexField("run", ASC), IndexField("status", ASC), IndexField("chunks", ASC)),
    )
    assert index_serves(need, q)
    # equality fields may come in any order; the aggregated field must come after them
    swapped = CompositeIndex(
        "shards", (IndexField("status", ASC), IndexField("run", ASC), IndexField("chunks", DESC))
    )
    assert index_serves(swapped, q)
    wrong = CompositeIndex(
        "shards", (IndexField("chunks", ASC), IndexField("run", ASC), IndexField("status", ASC))
    )
    assert not index_serves(wrong, q)
    other_collection = CompositeIndex("runs", need.fields)
    assert not index_serves(other_collection, q)

    ordered = FirestoreQuery(
        "running oldest first", "shards", equality=("status",), order_by=(("heartbeat", ASC),)
    )
    asc = CompositeIndex("shards", (IndexField("status", ASC), IndexField("heartbeat", ASC)))
    desc = CompositeIndex("shards", (IndexField("status", ASC), IndexField("heartbeat", DESC)))
    assert index_serves(asc, ordered) and not index_serves(desc, ordered)
    group = FirestoreQuery(
        "all runs", "shards", equality=("status",), range_field="scale", collection_group=True
    )
    assert index_needed(group).query_scope == "COLLECTION_GROUP"


def test_uncovered_queries_say_what_to_add_to_fleet_json():
    q = FirestoreQuery(
        "failed by tier", "shards", equality=("run", "status"), order_by=(("tier", ASC),)
    )
    (problem,) = uncovered_queries([q], indexes=(), exemptions=())
    assert problem.startswith("failed by tier: no index")
    assert '"field_path": "tier", "order": "ASCENDING"' in problem
    assert uncovered_queries([q], indexes=(index_needed(q),), exemptions=()) == []
    # a query on an exempted field alone loses its automatic index
    stale = FirestoreQuery("stale", "shards", range_field="heartbeat")
    assert uncovered_queries(
        [stale], indexes=(), exemptions=(FieldExemption("shards", "heartbeat"),)
    )
    assert not uncovered_queries([stale], indexes=(), exemptions=())


def test_bad_index_entries_are_refused(monkeypatch):
    def with_indexes(indexes):
        cfg = copy.deepcopy(fleet.fleet_config())
        cfg["firestore"]["indexes"] = indexes
        monkeypatch.setattr(fleet, "fleet_config", lambda: cfg)

    with_indexes(
        [
            {
                "collection": "shards",
                "fields": [{"field_path": "run", "order": "UP"}, {"field_path": "x", "order": ASC}],
            }
        ]
    )
    with pytest.raises(ValueError, match="order must be one of"):
        firestore_indexes()
    with_indexes([{"collection": "shards", "fields": [{"field_path": "run", "order": ASC}]}])
    with pytest.raises(ValueError, match="at least two fields"):
        firestore_indexes()
    two = [{"field_path": "run", "order": ASC}, {"field_path": "x", "order": ASC}]
    with_indexes([{"collection": "shards", "fields": two}] * 2)
    with pytest.raises(ValueError, match="twice"):
        firestore_indexes()

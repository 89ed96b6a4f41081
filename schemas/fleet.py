"""Names the Python code shares with the infrastructure: tiers, Pub/Sub topics and
subscriptions, Firestore collections and indexes, the environment the worker reads.

They live in `schemas/json/fleet.json`, which Terraform reads too (`jsondecode(file(...))`), so
there is exactly one place to change a name; tests check that both sides agree.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLEET_JSON = Path(__file__).parent / "json" / "fleet.json"

# Cloud Run's rule for memory per vCPU (instance size limits): the least vCPU a memory size needs.
CLOUD_RUN_MIN_VCPU_FOR_GIB = ((4, 1), (8, 2), (16, 4), (24, 6), (32, 8))
CLOUD_RUN_VCPU_CHOICES = (1, 2, 4, 6, 8)


@functools.cache
def fleet_config() -> dict[str, Any]:
    return json.loads(FLEET_JSON.read_text())


def min_vcpu_for(memory_gib: float) -> int:
    """The fewest vCPUs Cloud Run allows with `memory_gib` of memory."""
    for limit, vcpu in CLOUD_RUN_MIN_VCPU_FOR_GIB:
        if memory_gib <= limit:
            return vcpu
    raise ValueError(f"Cloud Run instances have at most 32 GiB, not {memory_gib}")


def cloud_run_size_problem(memory_gib: float, vcpu: int) -> str | None:
    """Why (memory, vCPU) is not an instance size Cloud Run accepts, or None."""
    if vcpu not in CLOUD_RUN_VCPU_CHOICES:
        return f"{vcpu} vCPU is not one of Cloud Run's {CLOUD_RUN_VCPU_CHOICES}"
    try:
        need = min_vcpu_for(memory_gib)
    except ValueError as e:
        return str(e)
    if vcpu < need:
        return f"{memory_gib} GiB needs at least {need} vCPU on Cloud Run, not {vcpu}"
    return None


def topic_name(prefix: str, tier: str) -> str:
    return fleet_config()["pubsub"]["topic"].format(prefix=prefix, tier=tier)


def subscription_name(prefix: str, tier: str) -> str:
    return fleet_config()["pubsub"]["subscription"].format(prefix=prefix, tier=tier)


def terminal_topic_name(prefix: str) -> str:
    return fleet_config()["pubsub"]["terminal_topic"].format(prefix=prefix)


def terminal_subscription_name(prefix: str) -> str:
    return fleet_config()["pubsub"]["terminal_subscription"].format(prefix=prefix)


def env_name(what: str) -> str:
    """The environment variable for `what` (a key of fleet.json's "env")."""
    return fleet_config()["env"][what]


# --- Firestore indexes ------------------------------------------------------------------------
# fleet.json "firestore.indexes" lists the composite indexes; Terraform creates one
# google_firestore_index per entry (terraform/firestore.tf). Each entry:
#   {"collection": "shards", "query_scope": "COLLECTION",            # or "COLLECTION_GROUP"
#    "fields": [{"field_path": "run", "order": "ASCENDING"},          # equality fields first,
#               {"field_path": "status", "order": "ASCENDING"},       # then the range / order-by /
#               {"field_path": "chunks", "order": "ASCENDING"}]}      # aggregated field(s)
# (a field may have "array_config": "CONTAINS" instead of "order"; Firestore appends __name__).
# "firestore.single_field_exemptions": [{"collection": "shards", "field": "heartbeat"}] turns off
# the automatic single-field indexes of a field (google_firestore_field, empty index_config).
# The emulator never enforces indexes, so a query without its index only fails in the cloud
# ("The query requires an index"): the state backend declares every query shape it sends as a
# FirestoreQuery in a module-level FIRESTORE_QUERIES of its dvid2ng.backends module, and
# tests/infra/test_firestore_indexes.py checks each has its index here (uncovered_queries prints
# the entry to add).

ORDERS = ("ASCENDING", "DESCENDING")
QUERY_SCOPES = ("COLLECTION", "COLLECTION_GROUP")


@dataclass(frozen=True)
class IndexField:
    field_path: str
    order: str | None = None  # "ASCENDING" | "DESCENDING"
    array_config: str | None = None  # "CONTAINS"

    @property
    def mode(self) -> str:
        return self.order or self.array_config or ""


@dataclass(frozen=True)
class CompositeIndex:
    collection: str
    fields: tuple[IndexField, ...]
    query_scope: str = "COLLECTION"

    @property
    def key(self) -> str:
        """Stable id; terraform/firestore.tf builds the same string as its for_each key."""
        fields = ",".join(f"{f.field_path}:{f.mode}" for f in self.fields)
        return f"{self.collection}:{self.query_scope}:{fields}"


@dataclass(frozen=True)
class FieldExemption:
    collection: str
    field: str


@dataclass(frozen=True)
class FirestoreQuery:
    """One query shape the code sends to Firestore, declared so tests can check its index.

    equality: fields filtered with == or in; array_contains: a field filtered with
    array-contains; range_field: the field filtered with <, <=, >, >=, != or not-in;
    order_by: (field, "ASCENDING"|"DESCENDING") in order; aggregate_fields: fields summed or
    averaged (count() needs none)."""

    name: str
    collection: str
    equality: tuple[str, ...] = ()
    array_contains: str | None = None
    range_field: str | None = None
    order_by: tuple[tuple[str, str], ...] = ()
    aggregate_fields: tuple[str, ...] = ()
    collection_group: bool = False

    def _tail(self) -> list[tuple[str, str | None]]:
        """The non-equality fields in index order: (field, direction or None for "either")."""
        tail: list[tuple[str, str | None]] = []
        if self.range_field and not (self.order_by and self.order_by[0][0] == self.range_field):
            tail.append((self.range_field, None))
        tail += [(f, d) for f, d in self.order_by]
        tail += [(f, None) for f in self.aggregate_fields if f not in {t[0] for t in tail}]
        return tail


def _parse_index(raw: dict[str, Any]) -> CompositeIndex:
    scope = raw.get("query_scope", "COLLECTION")
    if scope not in QUERY_SCOPES:
        raise ValueError(f"fleet.json index on {raw.get('collection')!r}: query_scope {scope!r}")
    fields = []
    for f in raw["fields"]:
        field = IndexField(f["field_path"], f.get("order"), f.get("array_config"))
        if (field.order is None) == (field.array_config is None):
            raise ValueError(f"fleet.json index field {f}: give exactly one of order, array_config")
        if field.order is not None and field.order not in ORDERS:
            raise ValueError(f"fleet.json index field {f}: order must be one of {ORDERS}")
        if field.array_config not in (None, "CONTAINS"):
            raise ValueError(f"fleet.json index field {f}: array_config must be CONTAINS")
        fields.append(field)
    if len(fields) < 2:
        raise ValueError(f"fleet.json index {raw}: a composite index has at least two fields")
    return CompositeIndex(raw["collection"], tuple(fields), scope)


def firestore_indexes() -> tuple[CompositeIndex, ...]:
    indexes = tuple(_parse_index(raw) for raw in fleet_config()["firestore"]["indexes"])
    keys = [ix.key for ix in indexes]
    if len(set(keys)) != len(keys):
        raise ValueError("fleet.json firestore.indexes lists an index twice")
    return indexes


def single_field_exemptions() -> tuple[FieldExemption, ...]:
    return tuple(
        FieldExemption(e["collection"], e["field"])
        for e in fleet_config()["firestore"]["single_field_exemptions"]
    )


def index_needed(q: FirestoreQuery) -> CompositeIndex | None:
    """The composite index Firestore needs for `q`, or None when automatic single-field
    indexes serve it (equality filters only, merged; or one field in all).

    This is a model of Firestore's documented rules, on the strict side: an index must match
    the query's fields exactly (equality fields in any order first, then the rest in order)."""
    tail = q._tail()
    fields_used = set(q.equality) | {f for f, _ in tail}
    if q.array_contains:
        fields_used.add(q.array_contains)
    if not tail or len(fields_used) <= 1:
        return None
    scope = "COLLECTION_GROUP" if q.collection_group else "COLLECTION"
    fields = [IndexField(f, "ASCENDING") for f in sorted(q.equality)]
    if q.array_contains:
        fields.append(IndexField(q.array_contains, array_config="CONTAINS"))
    fields += [IndexField(f, d or "ASCENDING") for f, d in tail]
    return CompositeIndex(q.collection, tuple(fields), scope)


def index_serves(ix: CompositeIndex, q: FirestoreQuery) -> bool:
    """Whether composite index `ix` serves query `q` (see index_needed)."""
    need = index_needed(q)
    if need is None or ix.collection != need.collection or ix.query_scope != need.query_scope:
        return False
    if len(ix.fields) != len(need.fields):
        return False
    n_eq = len(q.equality) + (1 if q.array_contains else 0)
    head, rest = ix.fields[:n_eq], ix.fields[n_eq:]
    if {(f.field_path, f.array_config) for f in head} != {
        (f.field_path, f.array_config) for f in need.fields[:n_eq]
    }:
        return False
    for have, (field, direction) in zip(rest, q._tail(), strict=True):
        if have.field_path != field or have.order is None:
            return False
        if direction is not None and have.order != direction:
            return False
    return True


def uncovered_queries(
    queries: list[FirestoreQuery] | tuple[FirestoreQuery, ...],
    indexes: tuple[CompositeIndex, ...] | None = None,
    exemptions: tuple[FieldExemption, ...] | None = None,
) -> list[str]:
    """Why each query in `queries` would fail in the cloud (empty: all are served)."""
    indexes = firestore_indexes() if indexes is None else indexes
    exemptions = single_field_exemptions() if exemptions is None else exemptions
    exempt = {(e.collection, e.field) for e in exemptions}
    problems = []
    for q in queries:
        need = index_needed(q)
        if need is None:
            single = (set(q.equality) | {f for f, _ in q._tail()}) & {
                f for c, f in exempt if c == q.collection
            }
            if single:
                problems.append(
                    f"{q.name}: uses {sorted(single)}, which fleet.json exempts from single-field "
                    "indexing; add a composite index or drop the exemption"
                )
        elif not any(index_serves(ix, q) for ix in indexes):
            fields = [
                {"field_path": f.field_path, "array_config": f.array_config}
                if f.array_config
                else {"field_path": f.field_path, "order": f.order}
                for f in need.fields
            ]
            problems.append(
                f"{q.name}: no index in fleet.json firestore.indexes; add "
                + json.dumps(
                    {
                        "collection": need.collection,
                        "query_scope": need.query_scope,
                        "fields": fields,
                    }
                )
            )
    return problems

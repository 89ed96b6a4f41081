"""Record every query a Firestore client sends (observing the real calls, not replacing them).

Wraps the GAPIC methods of one `google.cloud.firestore.Client` (`run_query`,
`run_aggregation_query`, `list_documents`, `batch_get_documents`): each call goes through
unchanged, and its request is kept as a `SentQuery` with the shape an index must serve.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

EQUALITY_OPS = {"EQUAL", "IN", "ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY"}
RANGE_OPS = {
    "LESS_THAN",
    "LESS_THAN_OR_EQUAL",
    "GREATER_THAN",
    "GREATER_THAN_OR_EQUAL",
    "NOT_EQUAL",
    "NOT_IN",
}


@dataclass
class SentQuery:
    method: str  # run_query / run_aggregation_query
    collection: str
    all_descendants: bool
    equality: tuple[str, ...]
    ranges: tuple[str, ...]
    order: tuple[tuple[str, str], ...]  # __name__ left out (implicit in every index)
    sums: tuple[str, ...]
    limit: int | None
    projection: tuple[str, ...] | None
    documents_returned: int = 0

    def signature(self) -> tuple:
        return (
            self.collection,
            tuple(sorted(self.equality)),
            tuple(sorted(self.ranges)),
            self.order,
            tuple(sorted(self.sums)),
        )


def _filters(f: Any, equality: list[str], ranges: list[str]) -> None:
    if f is None:
        return
    kind = f._pb.WhichOneof("filter_type") if hasattr(f, "_pb") else f.WhichOneof("filter_type")
    if kind == "composite_filter":
        for sub in f.composite_filter.filters:
            _filters(sub, equality, ranges)
    elif kind == "field_filter":
        op = type(f.field_filter.op)(f.field_filter.op).name
        path = f.field_filter.field.field_path
        (equality if op in EQUALITY_OPS else ranges).append(path)
        if op not in EQUALITY_OPS | RANGE_OPS:
            raise AssertionError(f"unknown filter operator {op}")
    elif kind == "unary_filter":  # IS_NULL / IS_NAN: equality-like
        equality.append(f.unary_filter.field.field_path)


def parse_structured_query(method: str, sq: Any, sums: tuple[str, ...] = ()) -> SentQuery:
    equality: list[str] = []
    ranges: list[str] = []
    if "where" in sq:
        _filters(sq.where, equality, ranges)
    order = tuple(
        (
            o.field.field_path,
            type(o.direction)(o.direction).name.replace("DIRECTION_UNSPECIFIED", "ASCENDING"),
        )
        for o in sq.order_by
        if o.field.field_path != "__name__"
    )
    limit = None
    if "limit" in sq:  # an Int32Value: proto-plus gives an int
        limit = int(getattr(sq.limit, "value", sq.limit))
    projection = tuple(f.field_path for f in sq.select.fields) if "select" in sq else None
    [source] = sq.from_
    return SentQuery(
        method=method,
        collection=source.collection_id,
        all_descendants=bool(source.all_descendants),
        equality=tuple(equality),
        ranges=tuple(ranges),
        order=order,
        sums=sums,
        limit=limit,
        projection=projection,
    )


@dataclass
class QueryRecorder:
    client: Any
    queries: list[SentQuery] = field(default_factory=list)
    listings: list[str] = field(default_factory=list)  # list_documents calls
    batch_gets: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _originals: dict[str, Any] = field(default_factory=dict)

    def __enter__(self) -> QueryRecorder:
        api = self.client._firestore_api
        for name in ("run_query", "run_aggregation_query", "list_documents", "batch_get_documents"):
            self._originals[name] = getattr(api, name)
            setattr(api, name, self._wrap(name, self._originals[name]))
        return self

    def __exit__(self, *exc: object) -> None:
        api = self.client._firestore_api
        for name, original in self._originals.items():
            setattr(api, name, original)

    def clear(self) -> None:
        with self._lock:
            self.queries.clear()
            self.listings.clear()
            self.batch_gets = 0

    def _wrap(self, name: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("request", args[0] if args else None)
            if name == "list_documents":
                with self._lock:
                    self.listings.append(str(request))
                return original(*args, **kwargs)
            if name == "batch_get_documents":
                with self._lock:
                    self.batch_gets += 1
                return original(*args, **kwargs)
            if name == "run_query":
                sent = parse_structured_query(name, request["structured_query"])
            else:
                saq = request["structured_aggregation_query"]
                sums = tuple(
                    a.sum.field.field_path for a in saq.aggregations if "sum" in a
                ) + tuple(a.avg.field.field_path for a in saq.aggregations if "avg" in a)
                sent = parse_structured_query(name, saq.structured_query, sums)
            with self._lock:
                self.queries.append(sent)
            return self._counting(sent, original(*args, **kwargs))

        return call

    def _counting(self, sent: SentQuery, stream: Any) -> Any:
        for response in stream:
            if sent.method == "run_query" and "document" in response:
                sent.documents_returned += 1
            yield response

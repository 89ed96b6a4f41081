"""Shard state in Cloud Firestore (native mode): `firestore://PROJECT[/DATABASE]`.

Data model (collection names from `schemas/json/fleet.json`, `firestore` section):
* `{runs_collection}/{run}`: one document per run: `run_id`, `config` (the run's configuration
  as JSON text, so any JSON round-trips exactly), `created_at` (server timestamp).
* `{runs_collection}/{run}/{shards_collection}/{shard}`: one document per shard with every
  `ShardRecord` field: `run_id`, `key`, `scale`, `shard` (decimal string: a uint64 does not fit
  Firestore's int64), `status`, `tier`, `attempts` (also the claim token), `worker`, the chunk
  and byte counters, `started_at` / `finished_at` / `heartbeat_at` (timestamps, null when
  unset), `error` (JSON text or null) and `source`.
* Document ids are the run id and shard key made valid for Firestore, reversibly: a shard key
  "s0/061c5" becomes "s0-061c5" (`shard_doc_id`), see `run_doc_id` for run ids.

Transitions are transactions on the one shard document (a claim reads and writes in one, so
two workers can never both win it; a fenced write checks `status == running` and
`attempts == token` inside its transaction and changes nothing otherwise). Timestamps are
Firestore server timestamps: a claim decides staleness from the heartbeat's age at the
transaction's read time, so no worker clock matters. There is no counter document anywhere
(contended documents take about 1 write/s, and about 2 s per conflict in the emulator).

Progress never lists shards: `summary()` finds the (scale, tier) groups of each status with
one-document "skip scans" (`order_by(scale, tier).start_after(last group).limit(1)`, so one
read per group) and totals each group with one aggregation query (count + four sums), all
at the same read time and concurrently. `finished_since()` is one aggregation.

Every query this module sends is declared in `QUERIES`; `required_indexes()` derives the
composite indexes they need, which `schemas/json/fleet.json` lists for Terraform
(`firestore.indexes`), together with the single-field index exemptions
(`firestore.single_field_exemptions`: the heartbeat timestamp, written often and never
queried). tests/backends/test_firestore_indexes.py records every query the code really sends
to the emulator (which does not enforce indexes) and checks each against that list.

The client library honours `FIRESTORE_EMULATOR_HOST`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dvid2ng.backends.base import Claim, ClaimStatus, ShardRecord, ShardStatus, SummaryRow
from dvid2ng.schemas.fleet import FirestoreQuery, fleet_config

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
MAX_BATCH_WRITES = 500  # Firestore's limit of writes in one commit
MAX_ERROR_JSON_BYTES = 200_000  # a document holds at most 1 MiB
SUMMARY_THREADS = 8
GET_MANY_BATCH = 300
TRANSACTION_ATTEMPTS = 10

_INT_FIELDS = (
    "attempts",
    "chunks_expected",
    "chunks_done",
    "chunks_written",
    "bytes_written",
    "peak_rss_bytes",
)
_SUMMED = ("chunks_expected", "chunks_done", "chunks_written", "bytes_written")


def runs_collection() -> str:
    return fleet_config()["firestore"]["runs_collection"]


def shards_collection() -> str:
    return fleet_config()["firestore"]["shards_collection"]


class TransactionContention(RuntimeError):
    """A transaction kept aborting because others held the same document."""


# -- document ids ---------------------------------------------------------------------------


def _escape_reserved(doc_id: str) -> str:
    """Firestore forbids the ids "." and ".." and ids matching __.*__."""
    if doc_id in (".", ".."):
        return doc_id.replace(".", "%2E")
    if doc_id.startswith("__") and doc_id.endswith("__"):
        return "%5F" + doc_id[1:]
    return doc_id


def _check_id(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")


def shard_doc_id(key: str) -> str:
    """The document id of shard `key`: "/" becomes "-" ("s0/061c5" -> "s0-061c5"); "%" and
    "-" are percent-escaped first, so the mapping is reversible (`shard_key`)."""
    _check_id(key, "shard key")
    doc_id = key.replace("%", "%25").replace("-", "%2D").replace("/", "-")
    doc_id = _escape_reserved(doc_id)
    if len(doc_id.encode()) > 1500:
        raise ValueError(f"shard key is too long for a Firestore document id: {key[:60]!r}...")
    return doc_id


def shard_key(doc_id: str) -> str:
    return urllib.parse.unquote(doc_id.replace("-", "/"))


def run_doc_id(run_id: str) -> str:
    """The document id of run `run_id`: "/" and "%" are percent-escaped (run ids usually
    have neither, so they read as themselves); reversible (`run_id_of`)."""
    _check_id(run_id, "run id")
    doc_id = _escape_reserved(run_id.replace("%", "%25").replace("/", "%2F"))
    if len(doc_id.encode()) > 1500:
        raise ValueError(f"run id is too long for a Firestore document id: {run_id[:60]!r}...")
    return doc_id


def run_id_of(doc_id: str) -> str:
    return urllib.parse.unquote(doc_id)


# -- the queries this module sends ----------------------------------------------------------


@dataclass(frozen=True)
class QueryShape:
    """One kind of query the store sends: what an index must serve.

    `equality`: fields compared with == or `in`; `range`: the field with an inequality;
    `order`: order_by fields with direction ("ASCENDING" / "DESCENDING"); `sums`: fields
    summed by an aggregation. `collection`: the collection id ("shards" is every run's
    subcollection, query scope COLLECTION)."""

    name: str
    collection: str
    equality: tuple[str, ...] = ()
    range: str | None = None
    order: tuple[tuple[str, str], ...] = ()
    sums: tuple[str, ...] = ()
    purpose: str = ""

    @property
    def fields(self) -> set[str]:
        return {*self.equality, *([self.range] if self.range else []), *(f for f, _ in self.order)}


def _shapes() -> dict[str, QueryShape]:
    runs, shards = runs_collection(), shards_collection()
    asc = "ASCENDING"
    shapes = [
        QueryShape("runs", runs, purpose="runs(): every run document (sorted here)"),
        QueryShape("list", shards, order=(("key", asc),), purpose="list(run)"),
        QueryShape(
            "list_status", shards, ("status",), order=(("key", asc),), purpose="list(status=)"
        ),
        QueryShape("list_scale", shards, ("scale",), order=(("key", asc),), purpose="list(scale=)"),
        QueryShape(
            "list_status_scale",
            shards,
            ("status", "scale"),
            order=(("key", asc),),
            purpose="list(status=, scale=)",
        ),
        QueryShape(
            "summary_groups",
            shards,
            ("status",),
            order=(("scale", asc), ("tier", asc)),
            purpose="summary(): the next (scale, tier) group of a status, one document",
        ),
        QueryShape(
            "summary_totals",
            shards,
            ("status", "scale", "tier"),
            sums=_SUMMED,
            purpose="summary(): count and sums of one (status, scale, tier) group",
        ),
        QueryShape(
            "finished_since",
            shards,
            ("status",),
            range="finished_at",
            sums=("chunks_done",),
            purpose="finished_since(): status in (done, empty), finished_at >= since",
        ),
    ]
    return {s.name: s for s in shapes}


QUERIES: dict[str, QueryShape] = _shapes()

# The same shapes in the project-wide declaration form (tests/infra/test_firestore_indexes.py
# checks each against fleet.json with an index model written apart from required_index()).
FIRESTORE_QUERIES: tuple[FirestoreQuery, ...] = tuple(
    FirestoreQuery(
        s.name,
        s.collection,
        equality=s.equality,
        range_field=s.range,
        order_by=s.order,
        aggregate_fields=s.sums,
    )
    for s in QUERIES.values()
)


def required_index(shape: QueryShape) -> dict[str, Any] | None:
    """The composite index `shape` needs, in fleet.json's format, or None when Firestore's
    automatic single-field indexes serve it (every filter, order and sum on one field; an
    order on `__name__` only is implicit)."""
    fields = shape.fields | set(shape.sums)
    if len(fields) <= 1:
        return None
    order = [(f, "ASCENDING") for f in shape.equality]
    if shape.range and not any(f == shape.range for f, _ in shape.order):
        order.append((shape.range, "ASCENDING"))
    order += [o for o in shape.order if o[0] not in shape.equality]
    order += [(f, "ASCENDING") for f in shape.sums if f not in {f for f, _ in order}]
    return {
        "collection": shape.collection,
        "query_scope": "COLLECTION",
        "fields": [{"field_path": f, "order": d} for f, d in order],
    }


def required_indexes() -> list[dict[str, Any]]:
    """Every composite index the queries in `QUERIES` need (what fleet.json must list)."""
    out: list[dict[str, Any]] = []
    for shape in QUERIES.values():
        index = required_index(shape)
        if index is not None and index not in out:
            out.append(index)
    return out


# -- encoding -------------------------------------------------------------------------------


def _timestamp(seconds: float) -> datetime | None:
    return datetime.fromtimestamp(seconds, tz=UTC) if seconds else None


def _seconds(value: Any) -> float:
    return 0.0 if value is None else float(value.timestamp())


def _error_text(error: Mapping[str, Any] | None) -> str | None:
    if error is None:
        return None
    # default=str: recording a failure must never fail because a value is not JSON-friendly
    text = json.dumps(dict(error), default=str)
    if len(text.encode()) > MAX_ERROR_JSON_BYTES:  # e.g. a huge traceback: keep the essentials
        short = {k: str(v)[:2000] for k, v in dict(error).items() if k != "traceback"}
        short["truncated"] = f"the error record was {len(text)} characters"
        text = json.dumps(short, default=str)
    return text


def _int64(value: Any, name: str) -> int:
    n = int(value)
    if not -_I64_MAX - 1 <= n <= _I64_MAX:
        raise ValueError(f"{name} = {n} does not fit Firestore's int64")
    return n


def _encode(r: ShardRecord) -> dict[str, Any]:
    if not r.run_id or not r.key:
        raise ValueError(f"a shard record needs a run_id and a key: {r!r}")
    shard = int(r.shard)
    if not 0 <= shard < _U64:
        raise ValueError(f"shard number must be a uint64, got {shard}")
    doc = {
        "run_id": r.run_id,
        "key": r.key,
        "scale": _int64(r.scale, "scale"),
        "shard": str(shard),
        "status": ShardStatus(r.status).value,
        "tier": str(r.tier),
        "worker": str(r.worker),
        "started_at": _timestamp(r.started_at),
        "finished_at": _timestamp(r.finished_at),
        "heartbeat_at": _timestamp(r.heartbeat_at),
        "error": _error_text(r.error),
        "source": str(r.source),
    }
    for name in _INT_FIELDS:
        doc[name] = _int64(getattr(r, name), name)
    return doc


def _decode(doc: Mapping[str, Any]) -> ShardRecord:
    error = doc.get("error")
    return ShardRecord(
        run_id=doc["run_id"],
        key=doc["key"],
        scale=int(doc["scale"]),
        shard=int(doc["shard"]),
        status=ShardStatus(doc["status"]),
        tier=doc.get("tier", ""),
        attempts=int(doc.get("attempts", 0)),
        worker=doc.get("worker", ""),
        chunks_expected=int(doc.get("chunks_expected", 0)),
        chunks_done=int(doc.get("chunks_done", 0)),
        chunks_written=int(doc.get("chunks_written", 0)),
        bytes_written=int(doc.get("bytes_written", 0)),
        peak_rss_bytes=int(doc.get("peak_rss_bytes", 0)),
        started_at=_seconds(doc.get("started_at")),
        finished_at=_seconds(doc.get("finished_at")),
        heartbeat_at=_seconds(doc.get("heartbeat_at")),
        error=None if error is None else json.loads(error),
        source=doc.get("source", ""),
    )


class FirestoreStateStore:
    """`backends.base.StateStore` on Firestore (see the module docstring)."""

    def __init__(self, project: str, database: str | None = None):
        if not project or "/" in project:
            raise ValueError(f"a Google Cloud project id is needed, got {project!r}")
        self.project = project
        self.database = database or "(default)"
        self._clients: tuple[int, Any] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if self.database == "(default)":
            return f"firestore://{self.project}"
        return f"firestore://{self.project}/{self.database}"

    def __repr__(self) -> str:
        return f"FirestoreStateStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"project": self.project, "database": self.database}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["project"], state["database"])  # type: ignore[misc]

    def __enter__(self) -> FirestoreStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Any:
        """The google.cloud.firestore.Client of this process (gRPC does not survive fork)."""
        from google.cloud import firestore

        with self._lock:
            pid = os.getpid()
            if self._clients is None or self._clients[0] != pid:
                self._clients = (
                    pid,
                    firestore.Client(project=self.project, database=self.database),
                )
            return self._clients[1]

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is not None and clients[0] == os.getpid():
            with contextlib.suppress(Exception):  # closing is best effort
                clients[1].close()

    # -- references -------------------------------------------------------------------------

    def _run_ref(self, run_id: str) -> Any:
        return self.client.collection(runs_collection()).document(run_doc_id(run_id))

    def _shards(self, run_id: str) -> Any:
        return self._run_ref(run_id).collection(shards_collection())

    def _ref(self, run_id: str, key: str) -> Any:
        return self._shards(run_id).document(shard_doc_id(key))

    def _transact(self, fn: Any) -> tuple[Any, Any]:
        """Run `fn`, a `@firestore.transactional` function, until it commits: (its result,
        the committed transaction). Aborted attempts (contention) are retried after a random
        pause that doubles each time, so racing workers fall out of step instead of aborting
        each other again (the emulator has no wound-wait: two transactions that read the
        same document and both write it deadlock until its lock timeout)."""
        from google.api_core import exceptions as gexc

        pause = 0.05
        for _ in range(TRANSACTION_ATTEMPTS):
            tx = self.client.transaction(max_attempts=1)
            try:
                return fn(tx), tx
            except gexc.Aborted:
                pass
            except ValueError as e:  # the client's "failed to commit in 1 attempts"
                if not isinstance(e.__cause__, gexc.Aborted):
                    raise
            time.sleep(random.uniform(0.5, 1.0) * pause)
            pause = min(2 * pause, 5.0)
        raise TransactionContention(
            f"a Firestore transaction aborted {TRANSACTION_ATTEMPTS} times in a row "
            "(contention on one document); try again"
        )

    # -- runs -------------------------------------------------------------------------------

    def put_run(self, run_id: str, config: Mapping[str, Any]) -> None:
        from google.cloud import firestore

        text = json.dumps(dict(config))
        ref = self._run_ref(run_id)

        @firestore.transactional
        def put(tx: Any) -> None:
            snap = ref.get(transaction=tx)
            if snap.exists and snap.get("config") is not None:
                return  # the first one wins
            tx.set(
                ref,
                {"run_id": run_id, "config": text, "created_at": firestore.SERVER_TIMESTAMP},
                merge=True,
            )

        self._transact(put)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        snap = self._run_ref(run_id).get()
        if not snap.exists:
            return None
        config = snap.to_dict().get("config")
        return None if config is None else json.loads(config)

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        # QUERIES["runs"]: the run documents are few; sorted here, newest first
        found = []
        for snap in self.client.collection(runs_collection()).stream():
            doc = snap.to_dict()
            if doc.get("config") is None:
                continue
            created = _seconds(doc.get("created_at"))
            found.append((-created, doc.get("run_id") or run_id_of(snap.id), doc["config"]))
        found.sort()
        return [(run_id, json.loads(config)) for _, run_id, config in found]

    # -- shards -----------------------------------------------------------------------------

    def plan(self, records: Iterable[ShardRecord]) -> int:
        """Create the shard documents that do not exist yet (others are kept as they are).
        Batches of 500 creates are committed concurrently; a batch that meets an existing
        document is split: existing ones are looked up and only the missing ones created."""
        by_run: dict[tuple[str, str], dict[str, Any]] = {}
        for r in records:
            by_run.setdefault((r.run_id, r.key), _encode(r))  # the first of duplicates wins
        if not by_run:
            return 0
        items = list(by_run.items())
        chunks = [items[i : i + MAX_BATCH_WRITES] for i in range(0, len(items), MAX_BATCH_WRITES)]
        if len(chunks) == 1:
            return self._create_missing(chunks[0])
        with ThreadPoolExecutor(max_workers=min(8, len(chunks))) as pool:
            return sum(pool.map(self._create_missing, chunks))

    def _create_missing(self, items: list[tuple[tuple[str, str], dict[str, Any]]]) -> int:
        from google.api_core import exceptions as gexc

        for _ in range(TRANSACTION_ATTEMPTS):
            if not items:
                return 0
            batch = self.client.batch()
            for (run_id, key), doc in items:
                batch.create(self._ref(run_id, key), doc)
            try:
                batch.commit()
                return len(items)
            except gexc.AlreadyExists:
                refs = [self._ref(run_id, key) for (run_id, key), _ in items]
                existing = {
                    s.reference.path
                    for s in self.client.get_all(refs, field_paths=["key"])
                    if s.exists
                }
                items = [
                    it for it, ref in zip(items, refs, strict=True) if ref.path not in existing
                ]
        raise RuntimeError("planning shards kept colliding with concurrent planners; try again")

    def get(self, run_id: str, key: str) -> ShardRecord | None:
        snap = self._ref(run_id, key).get()
        return _decode(snap.to_dict()) if snap.exists else None

    def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, ShardRecord]:
        """Batched reads (`get_all`, 300 documents a call, 8 calls at once): no query, so no
        index; a document read each."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        chunks = [wanted[i : i + GET_MANY_BATCH] for i in range(0, len(wanted), GET_MANY_BATCH)]

        def read(part: list[str]) -> list[ShardRecord]:
            refs = [self._ref(run_id, k) for k in part]
            return [_decode(s.to_dict()) for s in self.client.get_all(refs) if s.exists]

        with ThreadPoolExecutor(max_workers=min(8, len(chunks))) as pool:
            return {r.key: r for part in pool.map(read, chunks) for r in part}

    def claim(self, run_id: str, key: str, worker: str, tier: str, stale_after_s: float) -> Claim:
        """See `StateStore.claim`. The heartbeat's age is measured at the transaction's read
        time (the server's clock), against the server timestamp of the last heartbeat."""
        from google.cloud import firestore

        if not worker:
            raise ValueError("worker must be a non-empty id")
        ref = self._ref(run_id, key)

        def unclaimable(snap: Any) -> tuple[ClaimStatus, ShardRecord | None] | None:
            if not snap.exists:
                return ClaimStatus.NOT_PLANNED, None
            before = _decode(snap.to_dict())
            if before.status.finished:
                return ClaimStatus.FINISHED, before
            if before.status is ShardStatus.RUNNING:
                age = snap.read_time.timestamp() - before.heartbeat_at
                if age < stale_after_s:
                    return ClaimStatus.HELD, before
            return None

        # A plain read first: a duplicate delivery of a finished or live shard (the common
        # case when many workers see one message) answers without a transaction, so only
        # real contenders lock the document.
        answer = unclaimable(ref.get())
        if answer is not None:
            return Claim(*answer)

        @firestore.transactional
        def claim(tx: Any) -> tuple[ClaimStatus, ShardRecord | None]:
            snap = ref.get(transaction=tx)
            answer = unclaimable(snap)
            if answer is not None:
                return answer
            before = _decode(snap.to_dict())
            tx.update(
                ref,
                {
                    "status": ShardStatus.RUNNING.value,
                    "worker": worker,
                    "tier": tier,
                    "attempts": before.attempts + 1,
                    "started_at": firestore.SERVER_TIMESTAMP,
                    "heartbeat_at": firestore.SERVER_TIMESTAMP,
                    "finished_at": None,
                    "chunks_done": 0,
                    "chunks_written": 0,
                    "bytes_written": 0,
                    "peak_rss_bytes": 0,
                },
            )
            return ClaimStatus.CLAIMED, before

        (status, before), tx = self._transact(claim)
        if status is not ClaimStatus.CLAIMED:
            return Claim(status, before)
        assert before is not None
        now = self._server_time(tx)
        after = ShardRecord(
            **{
                **before.__dict__,
                "status": ShardStatus.RUNNING,
                "worker": worker,
                "tier": tier,
                "attempts": before.attempts + 1,
                "started_at": now,
                "heartbeat_at": now,
                "finished_at": 0.0,
                "chunks_done": 0,
                "chunks_written": 0,
                "bytes_written": 0,
                "peak_rss_bytes": 0,
            }
        )
        return Claim(ClaimStatus.CLAIMED, after, after.attempts, before)

    def _server_time(self, tx: Any) -> float:
        """The server timestamp the transaction's SERVER_TIMESTAMP fields received (the same
        value for every field of one commit), as unix seconds."""
        from google.cloud.firestore_v1 import _helpers

        for result in tx.write_results or ():
            for value in result.transform_results:
                return _seconds(_helpers.decode_value(value, self.client))
        return _seconds(tx.commit_time)

    def _update_owned(self, run_id: str, key: str, token: int, updates: dict[str, Any]) -> bool:
        """Apply `updates` only while the shard runs under claim `token` (one transaction)."""
        from google.cloud import firestore

        ref = self._ref(run_id, key)

        @firestore.transactional
        def update(tx: Any) -> bool:
            snap = ref.get(transaction=tx, field_paths=["status", "attempts"])
            if not snap.exists:
                return False
            doc = snap.to_dict()
            if doc.get("status") != ShardStatus.RUNNING.value or doc.get("attempts") != int(token):
                return False
            tx.update(ref, updates)
            return True

        return self._transact(update)[0]

    def heartbeat(self, run_id: str, key: str, token: int, chunks_done: int) -> bool:
        from google.cloud import firestore

        return self._update_owned(
            run_id,
            key,
            token,
            {
                "chunks_done": _int64(chunks_done, "chunks_done"),
                "heartbeat_at": firestore.SERVER_TIMESTAMP,
            },
        )

    def check(self, run_id: str, key: str, token: int) -> bool:
        snap = self._ref(run_id, key).get(field_paths=["status", "attempts"])
        if not snap.exists:
            return False
        doc = snap.to_dict()
        return doc.get("status") == ShardStatus.RUNNING.value and doc.get("attempts") == int(token)

    def finish(
        self,
        run_id: str,
        key: str,
        token: int,
        status: ShardStatus,
        *,
        chunks_done: int,
        chunks_written: int,
        bytes_written: int,
        peak_rss_bytes: int,
        source: str = "",
    ) -> bool:
        from google.cloud import firestore

        status = ShardStatus(status)
        if not status.finished:
            raise ValueError(f"finish takes done or empty, got {status.value!r}")
        return self._update_owned(
            run_id,
            key,
            token,
            {
                "status": status.value,
                "chunks_done": _int64(chunks_done, "chunks_done"),
                "chunks_written": _int64(chunks_written, "chunks_written"),
                "bytes_written": _int64(bytes_written, "bytes_written"),
                "peak_rss_bytes": _int64(peak_rss_bytes, "peak_rss_bytes"),
                "finished_at": firestore.SERVER_TIMESTAMP,
                "heartbeat_at": firestore.SERVER_TIMESTAMP,
                "error": None,
                "source": str(source),
            },
        )

    def fail(
        self,
        run_id: str,
        key: str,
        token: int,
        error: Mapping[str, Any],
        peak_rss_bytes: int = 0,
        tier: str | None = None,
    ) -> bool:
        from google.cloud import firestore

        updates: dict[str, Any] = {
            "status": ShardStatus.FAILED.value,
            "error": _error_text(error),
            "peak_rss_bytes": _int64(peak_rss_bytes, "peak_rss_bytes"),
            "finished_at": firestore.SERVER_TIMESTAMP,
        }
        if tier is not None:
            updates["tier"] = tier
        return self._update_owned(run_id, key, token, updates)

    def release(
        self,
        run_id: str,
        key: str,
        token: int,
        error: Mapping[str, Any] | None = None,
        tier: str | None = None,
    ) -> bool:
        updates: dict[str, Any] = {"status": ShardStatus.QUEUED.value, "worker": ""}
        if error is not None:
            updates["error"] = _error_text(error)
        if tier is not None:
            updates["tier"] = tier
        return self._update_owned(run_id, key, token, updates)

    def reset(self, run_id: str, key: str, reason: str) -> bool:
        from google.cloud import firestore

        ref = self._ref(run_id, key)
        error = _error_text({"kind": "reset", "cause": str(reason)})

        @firestore.transactional
        def reset(tx: Any) -> bool:
            if not ref.get(transaction=tx, field_paths=["status"]).exists:
                return False
            tx.update(
                ref,
                {
                    "status": ShardStatus.QUEUED.value,
                    "worker": "",
                    "error": error,
                    "chunks_done": 0,
                    "chunks_written": 0,
                    "bytes_written": 0,
                    "finished_at": None,
                    "source": "",
                },
            )
            return True

        return self._transact(reset)[0]

    # -- queries ----------------------------------------------------------------------------

    def list(
        self,
        run_id: str,
        status: ShardStatus | None = None,
        scale: int | None = None,
        limit: int | None = None,
    ) -> list[ShardRecord]:
        """QUERIES["list" / "list_status" / "list_scale" / "list_status_scale"]."""
        from google.cloud.firestore import FieldFilter

        query = self._shards(run_id)
        if status is not None:
            query = query.where(filter=FieldFilter("status", "==", ShardStatus(status).value))
        if scale is not None:
            query = query.where(filter=FieldFilter("scale", "==", int(scale)))
        query = query.order_by("key")
        if limit is not None:
            if limit < 1:
                return []
            query = query.limit(int(limit))
        return [_decode(s.to_dict()) for s in query.stream()]

    def finished_since(self, run_id: str, since: float) -> tuple[int, int]:
        """QUERIES["finished_since"]: one aggregation query."""
        from google.cloud.firestore import FieldFilter
        from google.cloud.firestore_v1.aggregation import AggregationQuery

        finished = [ShardStatus.DONE.value, ShardStatus.EMPTY.value]
        query = (
            self._shards(run_id)
            .where(filter=FieldFilter("status", "in", finished))
            .where(filter=FieldFilter("finished_at", ">=", datetime.fromtimestamp(since, tz=UTC)))
        )
        agg = AggregationQuery(query)
        agg.count(alias="shards")
        agg.sum("chunks_done", alias="chunks")
        values = _aggregates(agg.get())
        return int(values["shards"]), int(values["chunks"])

    def summary(self, run_id: str) -> list[SummaryRow]:
        """Totals per (scale, tier, status) from aggregation queries at one read time.

        Per status, the groups are found one document at a time (QUERIES["summary_groups"]:
        the first document after the previous group in (scale, tier) order, projected to
        those two fields), and each group is totalled as soon as it is found
        (QUERIES["summary_totals"]). Queries: 5 + 2 x groups; reads: about one per group and
        one per 1000 shards counted. Nothing lists the shards."""
        read_time = self._run_ref(run_id).get(field_paths=["run_id"]).read_time
        shards = self._shards(run_id)
        with ThreadPoolExecutor(max_workers=SUMMARY_THREADS) as pool:
            scans = [
                pool.submit(self._scan_groups, pool, shards, status, read_time)
                for status in ShardStatus
            ]
            totals = [t for scan in scans for t in scan.result()]
            rows = [t.result() for t in totals]
        rows = [
            r for r in rows if r.shards
        ]  # a group that emptied meanwhile (never at one read time)
        return sorted(rows, key=lambda r: (r.scale, r.tier, r.status.value))

    def _scan_groups(
        self, pool: ThreadPoolExecutor, shards: Any, status: ShardStatus, read_time: datetime
    ) -> list[Future[SummaryRow]]:
        from google.cloud.firestore import FieldFilter

        base = (
            shards.where(filter=FieldFilter("status", "==", status.value))
            .order_by("scale")
            .order_by("tier")
            .select(["scale", "tier"])
            .limit(1)
        )
        found: list[Future[SummaryRow]] = []
        after: dict[str, Any] | None = None
        while True:
            query = base if after is None else base.start_after(after)
            docs = list(query.stream(read_time=read_time))
            if not docs:
                return found
            doc = docs[0].to_dict()
            scale, tier = doc["scale"], doc["tier"]
            found.append(pool.submit(self._group_totals, shards, status, scale, tier, read_time))
            after = {"scale": scale, "tier": tier}

    def _group_totals(
        self, shards: Any, status: ShardStatus, scale: int, tier: str, read_time: datetime
    ) -> SummaryRow:
        from google.cloud.firestore import FieldFilter
        from google.cloud.firestore_v1.aggregation import AggregationQuery

        query = (
            shards.where(filter=FieldFilter("status", "==", status.value))
            .where(filter=FieldFilter("scale", "==", scale))
            .where(filter=FieldFilter("tier", "==", tier))
        )
        agg = AggregationQuery(query)
        agg.count(alias="shards")
        for name in _SUMMED:
            agg.sum(name, alias=name)
        v = _aggregates(agg.get(read_time=read_time))
        return SummaryRow(
            scale=int(scale),
            tier=tier,
            status=status,
            shards=int(v["shards"]),
            chunks_expected=int(v["chunks_expected"]),
            chunks_done=int(v["chunks_done"]),
            chunks_written=int(v["chunks_written"]),
            bytes_written=int(v["bytes_written"]),
        )


def _aggregates(results: Any) -> dict[str, float]:
    """{alias: value} of an aggregation query's one result row."""
    out: dict[str, float] = {}
    for row in results:
        for item in row:
            out[item.alias] = item.value if item.value is not None else 0
    return out

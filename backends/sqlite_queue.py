"""Embedded tiered work queue: one SQLite file, safe for many processes on one machine.

Same semantics as the Pub/Sub setup (see `backends.base`): one queue per memory tier, leases
(at most 600 s per pull or extend, as Pub/Sub), delayed nacks, `forward` to another tier or the
terminal queue, a 1-based (here exact) attempt count per tier, the dead-letter backstop after
`max_delivery_attempts` deliveries on a tier, and the terminal `dead_letters` table. It is both
the `Queue` and the `QueueAdmin`.

Concurrency: every process opens its own connection lazily (and again after `fork`), the file
runs in WAL mode with a busy timeout, and every change is one short `BEGIN IMMEDIATE`
transaction, so selecting and leasing a message is atomic across processes. Each lease gets a
fresh random token that is part of the `ack_id`: an ack / nack / extend whose lease expired (and
was possibly re-leased by another worker) cannot touch the new lease.

Escalation of a message whose last lease expired (the worker died) happens lazily: when a pull
on that tier reaches it, or on `sweep()` (which `depth()` and `dead_letters()` run first).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dvid2ng.backends.base import (
    FORWARD_REASON,
    FORWARDED_FROM,
    MAX_LEASE_SECONDS,
    TERMINAL,
    DeadLetter,
    Delivery,
    check_lease_seconds,
    check_nack_delay,
    delivery_attempts_by_tier,
)
from dvid2ng.schemas.tiers import tier_names

ESCALATED_FROM = FORWARDED_FROM  # the backstop marks the tier it moved a message from, too

# Connections inherited through fork(): never used or closed in the child (closing could
# checkpoint or unlock on behalf of the parent); kept referenced so the GC does not close them.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


class StateFileVersionError(RuntimeError):
    """An embedded queue or state file from an incompatible dvid2ng version."""


class SqliteDatabase:
    """One SQLite file shared by many processes: a lazily opened connection per process.

    Shared by `SqliteQueue` and `SqliteStateStore`. Thread-safe within a process (one lock
    around the connection), fork-safe (a child opens its own connection), WAL mode.
    """

    def __init__(
        self,
        path: str | Path,
        schema: Sequence[str],
        busy_timeout_s: float = 30.0,
        version: int = 0,
    ):
        if busy_timeout_s <= 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s}")
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self._schema = tuple(schema)
        self._version = version
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._lock = threading.RLock()
        self._lock_pid = os.getpid()
        self._closed = False

    # -- connection management -------------------------------------------------------------

    def _process_lock(self) -> threading.RLock:
        pid = os.getpid()
        if self._lock_pid != pid:  # forked: the parent's lock may be held by a thread not copied
            self._lock = threading.RLock()
            self._lock_pid = pid
        return self._lock

    def _connection(self) -> sqlite3.Connection:
        """The connection of this process (call with the lock held)."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path} is closed")
        pid = os.getpid()
        if self._conn is not None and self._pid == pid:
            return self._conn
        if self._conn is not None:
            _INHERITED_CONNECTIONS.append(self._conn)
            self._conn = None
        self._conn = self._open()
        self._pid = pid
        return self._conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path),
            timeout=self.busy_timeout_s,
            isolation_level=None,  # explicit transactions only
            check_same_thread=False,  # guarded by our lock (heartbeat threads)
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_version(conn)
                for statement in self._schema:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(self._version)}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_version(self, conn: sqlite3.Connection) -> None:
        """A file written by another version of dvid2ng is refused, not misread."""
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()
        if tables[0] and found != self._version:
            raise StateFileVersionError(
                f"{self.path.resolve()} was written by another dvid2ng version (format "
                f"{found}, this one reads {self._version}); delete it to start over (a re-run "
                "checks every shard file it finds)"
            )

    def _retry_locked(self, fn: Callable[[], Any]) -> Any:
        """Retry `fn` while the file is locked (switching to WAL ignores the busy handler)."""
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                msg = str(e).lower()
                if ("locked" not in msg and "busy" not in msg) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def connect(self) -> None:
        """Open (and create) the file now rather than on first use."""
        with self._process_lock():
            self._connection()

    def close(self) -> None:
        with self._process_lock():
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short `BEGIN IMMEDIATE` transaction (holds the file's write lock throughout)."""
        with self._process_lock():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several statements."""
        with self._process_lock():
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")


_QUEUE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- enqueue order on the current tier (FIFO)
        message_id TEXT NOT NULL UNIQUE,
        tier TEXT NOT NULL,
        body BLOB NOT NULL,
        attributes TEXT NOT NULL,               -- JSON object of str -> str
        attempt INTEGER NOT NULL DEFAULT 0,     -- deliveries so far on this tier
        lease_token TEXT,                       -- token of the current / last lease
        visible_at REAL NOT NULL DEFAULT 0,     -- deliverable when <= now (lease expiry)
        published_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS messages_tier_seq ON messages (tier, seq)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        from_tier TEXT NOT NULL,
        reason TEXT NOT NULL,
        attributes TEXT NOT NULL,
        dead_at REAL NOT NULL
    )""",
)

_INSERT_DEAD = (
    "INSERT INTO dead_letters (message_id, body, from_tier, reason, attributes, dead_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def _exhausted_reason(limit: int, tier: str) -> str:
    return f"max delivery attempts ({limit}) exhausted on tier {tier}"


def _parse_ack_id(ack_id: str) -> tuple[str, str]:
    message_id, sep, token = ack_id.rpartition(":")
    if not sep or not message_id or not token:
        raise ValueError(f"malformed ack_id {ack_id!r}")
    return message_id, token


QUEUE_FORMAT = 2  # PRAGMA user_version of queue files this code writes


class SqliteQueue:
    """`backends.base.Queue` and `QueueAdmin` on one SQLite file (see the module docstring).

    `max_delivery_attempts`: one int for every tier, a mapping tier -> int (tiers left out use
    the `schemas.tiers` value), or None for the `schemas.tiers` values. Any value >= 1 is
    accepted here (Pub/Sub needs 5..100), so tests can escalate after one or two deliveries.
    """

    def __init__(
        self,
        path: str | Path,
        tiers: Sequence[str] | None = None,
        max_delivery_attempts: Mapping[str, int] | int | None = None,
        clock: Callable[[], float] = time.time,
        *,
        busy_timeout_s: float = 30.0,
    ):
        if isinstance(tiers, str):
            raise TypeError("tiers must be a sequence of tier names, not one string")
        tiers = tuple(tier_names() if tiers is None else tiers)
        if not tiers:
            raise ValueError("a queue needs at least one tier")
        if len(set(tiers)) != len(tiers):
            raise ValueError(f"duplicate tier names in {tiers}")
        for t in tiers:
            if not isinstance(t, str) or not t:
                raise ValueError(f"tier names must be non-empty strings, got {t!r}")
            if t == TERMINAL:
                raise ValueError(f"{TERMINAL!r} is the terminal queue, not a tier")
        self.tiers: tuple[str, ...] = tiers
        self.max_delivery_attempts: dict[str, int] = self._resolve_attempts(max_delivery_attempts)
        self._next: dict[str, str | None] = {
            t: (tiers[i + 1] if i + 1 < len(tiers) else None) for i, t in enumerate(tiers)
        }
        self._clock = clock
        self._db = SqliteDatabase(path, _QUEUE_SCHEMA, busy_timeout_s, version=QUEUE_FORMAT)
        self._db.connect()  # create the file and tables now (before any fork / spawn)

    def _resolve_attempts(self, value: Mapping[str, int] | int | None) -> dict[str, int]:
        out: dict[str, int] = {}
        for t, n in delivery_attempts_by_tier(self.tiers, value).items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(
                    f"max_delivery_attempts for tier {t!r} must be an int >= 1, got {n!r}"
                )
            out[t] = n
        return out

    @property
    def path(self) -> Path:
        return self._db.path

    def __repr__(self) -> str:
        return f"SqliteQueue({str(self.path)!r}, tiers={self.tiers!r})"

    # Picklable (e.g. handed to a spawned worker process): the connection is not carried along.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self._db.path,
            "tiers": self.tiers,
            "max_delivery_attempts": self.max_delivery_attempts,
            "clock": self._clock,
            "busy_timeout_s": self._db.busy_timeout_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            state["tiers"],
            state["max_delivery_attempts"],
            state["clock"],
            busy_timeout_s=state["busy_timeout_s"],
        )

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- helpers ---------------------------------------------------------------------------

    def _check_tier(self, tier: str) -> None:
        if tier not in self._next:
            raise ValueError(f"unknown tier {tier!r}; this queue has tiers {', '.join(self.tiers)}")

    def _insert(
        self, conn: sqlite3.Connection, tier: str, body: bytes, attributes: str, now: float
    ) -> str:
        message_id = uuid.uuid4().hex
        conn.execute(
            "INSERT INTO messages (message_id, tier, body, attributes, published_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (message_id, tier, bytes(body), attributes, now),
        )
        return message_id

    def _escalate(
        self,
        conn: sqlite3.Connection,
        seq: int,
        message_id: str,
        tier: str,
        body: bytes,
        attributes: str,
        now: float,
    ) -> None:
        """The backstop: move an exhausted message to the next tier (attempt 0, same id) or to
        the dead letters."""
        conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        nxt = self._next[tier]
        if nxt is not None:
            attrs = json.loads(attributes)
            attrs[ESCALATED_FROM] = tier
            conn.execute(
                "INSERT INTO messages (message_id, tier, body, attributes, published_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (message_id, nxt, body, json.dumps(attrs), now),
            )
        else:
            reason = _exhausted_reason(self.max_delivery_attempts[tier], tier)
            conn.execute(_INSERT_DEAD, (message_id, body, tier, reason, attributes, now))

    def _leased_row(self, conn: sqlite3.Connection, delivery: Delivery, now: float, live: bool):
        message_id, token = _parse_ack_id(delivery.ack_id)
        sql = (
            "SELECT seq, message_id, tier, body, attributes, attempt FROM messages"
            " WHERE message_id = ? AND lease_token = ?"
        )
        if live:
            sql += " AND visible_at > ?"
            return conn.execute(sql, (message_id, token, now)).fetchone()
        return conn.execute(sql, (message_id, token)).fetchone()

    # -- Queue -----------------------------------------------------------------------------

    def publish(self, tier: str, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        return self.publish_many(tier, [(body, attributes or {})])[0]

    def publish_many(
        self, tier: str, messages: Iterable[tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        self._check_tier(tier)
        rows = [(_check_body(body), _attributes_json(attrs)) for body, attrs in messages]
        with self._db.write() as conn:
            now = self._clock()
            return [self._insert(conn, tier, body, attrs, now) for body, attrs in rows]

    def pull(
        self, tier: str, max_messages: int = 1, lease_seconds: float = MAX_LEASE_SECONDS
    ) -> list[Delivery]:
        self._check_tier(tier)
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        lease_seconds = check_lease_seconds(lease_seconds)
        limit = self.max_delivery_attempts[tier]
        out: list[Delivery] = []
        with self._db.write() as conn:
            now = self._clock()
            last_seq = 0
            while len(out) < max_messages:
                rows = conn.execute(
                    "SELECT seq, message_id, body, attributes, attempt FROM messages"
                    " WHERE tier = ? AND seq > ? AND visible_at <= ? ORDER BY seq LIMIT ?",
                    (tier, last_seq, now, max_messages - len(out)),
                ).fetchall()
                if not rows:
                    break
                for seq, message_id, body, attributes, attempt in rows:
                    last_seq = seq
                    if attempt >= limit:  # its last lease expired: the worker died
                        self._escalate(conn, seq, message_id, tier, body, attributes, now)
                        continue
                    token = uuid.uuid4().hex
                    conn.execute(
                        "UPDATE messages SET attempt = attempt + 1, lease_token = ?, visible_at = ?"
                        " WHERE seq = ?",
                        (token, now + lease_seconds, seq),
                    )
                    out.append(
                        Delivery(
                            message_id=message_id,
                            tier=tier,
                            body=bytes(body),
                            ack_id=f"{message_id}:{token}",
                            attributes=json.loads(attributes),
                            attempt=attempt + 1,
                        )
                    )
        return out

    def ack(self, delivery: Delivery) -> None:
        message_id, token = _parse_ack_id(delivery.ack_id)
        with self._db.write() as conn:
            conn.execute(
                "DELETE FROM messages WHERE message_id = ? AND lease_token = ? AND visible_at > ?",
                (message_id, token, self._clock()),
            )

    def nack(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        delay_seconds = check_nack_delay(delay_seconds)
        with self._db.write() as conn:
            now = self._clock()
            row = self._leased_row(conn, delivery, now, live=True)
            if row is None:  # expired (maybe re-leased): nothing of ours to give back
                return
            seq, message_id, tier, body, attributes, attempt = row
            if attempt >= self.max_delivery_attempts[tier]:
                self._escalate(conn, seq, message_id, tier, body, attributes, now)
            else:
                conn.execute(
                    "UPDATE messages SET lease_token = NULL, visible_at = ? WHERE seq = ?",
                    (now + delay_seconds, seq),
                )

    def extend(self, delivery: Delivery, seconds: float) -> None:
        seconds = check_lease_seconds(seconds, "extend")
        message_id, token = _parse_ack_id(delivery.ack_id)
        with self._db.write() as conn:
            now = self._clock()
            conn.execute(
                "UPDATE messages SET visible_at = ?"
                " WHERE message_id = ? AND lease_token = ? AND visible_at > ?",
                (now + seconds, message_id, token, now),
            )

    def forward(self, delivery: Delivery, to: str, reason: str) -> str:
        if to != TERMINAL:
            self._check_tier(to)
        with self._db.write() as conn:
            now = self._clock()
            # The lease may have run out, but as long as nobody re-leased it, it is still ours.
            row = self._leased_row(conn, delivery, now, live=False)
            if row is None:
                return ""
            seq, message_id, tier, body, attributes, _ = row
            conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))
            attrs = json.loads(attributes)
            attrs.update({FORWARDED_FROM: tier, FORWARD_REASON: str(reason)[:1000]})
            if to == TERMINAL:
                conn.execute(
                    _INSERT_DEAD, (message_id, body, tier, str(reason), json.dumps(attrs), now)
                )
                return message_id
            return self._insert(conn, to, body, json.dumps(attrs), now)

    # -- QueueAdmin ------------------------------------------------------------------------

    def sweep(self) -> int:
        """Apply the backstop to every message whose lease expired after its last allowed
        attempt.

        Pulls do this for the messages they reach; `depth` and `dead_letters` call it so that a
        message whose worker died on its last attempt shows up where it belongs. Returns the
        number of messages moved.
        """
        now = self._clock()
        query = (
            "SELECT seq, message_id, body, attributes FROM messages"
            " WHERE tier = ? AND attempt >= ? AND visible_at <= ? ORDER BY seq"
        )
        with self._db.read() as conn:
            if not any(
                conn.execute(query + " LIMIT 1", (t, n, now)).fetchone()
                for t, n in self.max_delivery_attempts.items()
            ):
                return 0
        moved = 0
        with self._db.write() as conn:
            now = self._clock()
            for tier in self.tiers:  # in order: escalated messages start at attempt 0
                rows = conn.execute(query, (tier, self.max_delivery_attempts[tier], now)).fetchall()
                for seq, message_id, body, attributes in rows:
                    self._escalate(conn, seq, message_id, tier, body, attributes, now)
                    moved += 1
        return moved

    def dead_letters(self, max_messages: int = 1000) -> list[DeadLetter]:
        self.sweep()
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT seq, message_id, body, from_tier, reason, attributes"
                " FROM dead_letters ORDER BY seq LIMIT ?",
                (int(max_messages),),
            ).fetchall()
        return [
            DeadLetter(
                message_id=message_id,
                body=bytes(body),
                from_tier=from_tier,
                reason=reason,
                attributes=json.loads(attributes),
                handle=str(seq),
            )
            for seq, message_id, body, from_tier, reason, attributes in rows
        ]

    def replay(self, letter: DeadLetter, to_tier: str, body: bytes | None = None) -> str:
        self._check_tier(to_tier)
        attrs = {
            k: v for k, v in letter.attributes.items() if k not in (FORWARDED_FROM, FORWARD_REASON)
        }
        with self._db.write() as conn:
            cur = conn.execute("DELETE FROM dead_letters WHERE seq = ?", (int(letter.handle),))
            if cur.rowcount != 1:
                raise KeyError(f"dead letter {letter.message_id} is no longer in {self.path}")
            new_body = letter.body if body is None else _check_body(body)
            return self._insert(conn, to_tier, new_body, json.dumps(attrs), self._clock())

    def depth(self, tier: str) -> int:
        """Messages on `tier` not yet acked; `depth(TERMINAL)` counts dead letters."""
        if tier != TERMINAL:
            self._check_tier(tier)
        self.sweep()
        with self._db.read() as conn:
            if tier == TERMINAL:
                return conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
            return conn.execute("SELECT COUNT(*) FROM messages WHERE tier = ?", (tier,)).fetchone()[
                0
            ]

    # -- embedded only ---------------------------------------------------------------------

    def forward_leased(self, key: str, reason: str) -> str | None:
        """Move the leased message(s) of shard `key` to the next tier (terminal after the last),
        deliverable now. The embedded supervisor calls it when the worker process holding them
        died (the OOM killer): nobody will ack them, and the next attempt belongs a tier up,
        without waiting out the lease as Pub/Sub would. Returns the tier they went to, or None
        when no leased message of `key` was found."""
        with self._db.write() as conn:
            now = self._clock()
            rows = conn.execute(
                "SELECT seq, message_id, tier, body, attributes FROM messages"
                " WHERE json_extract(attributes, '$.key') = ? AND visible_at > ?"
                " AND lease_token IS NOT NULL",
                (key, now),
            ).fetchall()
            went = None
            for seq, message_id, tier, body, attributes in rows:
                conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))
                attrs = json.loads(attributes)
                attrs.update({FORWARDED_FROM: tier, FORWARD_REASON: str(reason)[:1000]})
                nxt = self._next.get(tier)
                if nxt is None:
                    conn.execute(
                        _INSERT_DEAD, (message_id, body, tier, str(reason), json.dumps(attrs), now)
                    )
                    went = TERMINAL
                else:
                    self._insert(conn, nxt, body, json.dumps(attrs), now)
                    went = nxt
            return went


def _check_body(body: Any) -> bytes:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, got {type(body).__name__}")
    return bytes(body)


def _attributes_json(attributes: Mapping[str, str] | None) -> str:
    attrs = dict(attributes or {})
    for k, v in attrs.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"attributes must map str -> str, got {k!r}: {v!r}")
    return json.dumps(attrs)

"""Embedded shard state store: one SQLite file, safe for many processes on one machine.

One row per (run_id, shard key) with a column for every `ShardRecord` field (the error as JSON
text). Same multi-process rules as `backends.sqlite_queue`: a connection per process, WAL, short
`BEGIN IMMEDIATE` transactions (a claim reads and writes in one of them, so two processes can
never both win it).

Fencing: the token a claim returns is the new `attempts` value. Heartbeat, finish, fail and
release change the row only while it is running with that token; otherwise they return False.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dvid2ng.backends.base import Claim, ClaimStatus, ShardRecord, ShardStatus, SummaryRow
from dvid2ng.backends.sqlite_queue import SqliteDatabase

_STATE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        config TEXT NOT NULL,          -- JSON
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS shards (
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        scale INTEGER NOT NULL,
        shard INTEGER NOT NULL,        -- uint64 stored as int64 (two's complement)
        status TEXT NOT NULL,
        tier TEXT NOT NULL,
        attempts INTEGER NOT NULL,     -- also the token of the current claim
        worker TEXT NOT NULL,
        chunks_expected INTEGER NOT NULL,
        chunks_done INTEGER NOT NULL,
        chunks_written INTEGER NOT NULL,
        bytes_written INTEGER NOT NULL,
        peak_rss_bytes INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        error TEXT,                    -- JSON object or NULL
        source TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS shards_status ON shards (run_id, status, key)",
    "CREATE INDEX IF NOT EXISTS shards_scale ON shards (run_id, scale, key)",
)

STATE_FORMAT = 2  # PRAGMA user_version of state files this code writes

_FIELDS = (
    "run_id",
    "key",
    "scale",
    "shard",
    "status",
    "tier",
    "attempts",
    "worker",
    "chunks_expected",
    "chunks_done",
    "chunks_written",
    "bytes_written",
    "peak_rss_bytes",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "error",
    "source",
)
_COLUMNS = ", ".join(_FIELDS)
_NOW = object()  # placeholder for the transaction's clock reading in `_update_owned` params
_U64 = 1 << 64
_I64 = 1 << 63


def _shard_to_db(shard: int) -> int:
    if not 0 <= shard < _U64:
        raise ValueError(f"shard number must be a uint64, got {shard}")
    return shard - _U64 if shard >= _I64 else shard


def _shard_from_db(value: int) -> int:
    return value + _U64 if value < 0 else value


def _error_to_db(error: Mapping[str, Any] | None) -> str | None:
    # default=str: recording a failure must never fail because a value is not JSON-friendly.
    return None if error is None else json.dumps(dict(error), default=str)


def _record(row: tuple[Any, ...]) -> ShardRecord:
    values = dict(zip(_FIELDS, row, strict=True))
    values["status"] = ShardStatus(values["status"])
    values["shard"] = _shard_from_db(values["shard"])
    values["error"] = None if values["error"] is None else json.loads(values["error"])
    return ShardRecord(**values)


def _row(r: ShardRecord) -> tuple[Any, ...]:
    if not r.run_id or not r.key:
        raise ValueError(f"a shard record needs a run_id and a key: {r!r}")
    return (
        r.run_id,
        r.key,
        int(r.scale),
        _shard_to_db(int(r.shard)),
        ShardStatus(r.status).value,
        r.tier,
        int(r.attempts),
        r.worker,
        int(r.chunks_expected),
        int(r.chunks_done),
        int(r.chunks_written),
        int(r.bytes_written),
        int(r.peak_rss_bytes),
        float(r.started_at),
        float(r.finished_at),
        float(r.heartbeat_at),
        _error_to_db(r.error),
        str(r.source),
    )


class SqliteStateStore:
    """`backends.base.StateStore` on one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        clock: Callable[[], float] = time.time,
        *,
        busy_timeout_s: float = 30.0,
    ):
        self._clock = clock
        self._db = SqliteDatabase(path, _STATE_SCHEMA, busy_timeout_s, version=STATE_FORMAT)
        self._db.connect()  # create the file and tables now (before any fork / spawn)

    @property
    def path(self) -> Path:
        return self._db.path

    def __repr__(self) -> str:
        return f"SqliteStateStore({str(self.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self._db.path,
            "clock": self._clock,
            "busy_timeout_s": self._db.busy_timeout_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["clock"], busy_timeout_s=state["busy_timeout_s"])  # type: ignore[misc]

    def __enter__(self) -> SqliteStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- runs ------------------------------------------------------------------------------

    def put_run(self, run_id: str, config: Mapping[str, Any]) -> None:
        text = json.dumps(dict(config))
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO runs (run_id, config, created_at) VALUES (?, ?, ?)",
                (run_id, text, self._clock()),
            )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._db.read() as conn:
            row = conn.execute("SELECT config FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT run_id, config FROM runs ORDER BY created_at DESC, run_id"
            ).fetchall()
        return [(run_id, json.loads(config)) for run_id, config in rows]

    # -- shards ----------------------------------------------------------------------------

    def plan(self, records: Iterable[ShardRecord]) -> int:
        rows = [_row(r) for r in records]
        if not rows:
            return 0
        with self._db.write() as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO shards ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))})",
                rows,
            )
            return conn.total_changes - before

    def claim(self, run_id: str, key: str, worker: str, tier: str, stale_after_s: float) -> Claim:
        """See `StateStore.claim`. A claim resets chunks_done, chunks_written, bytes_written,
        peak_rss_bytes and finished_at; `error` keeps the last failure."""
        if not worker:
            raise ValueError("worker must be a non-empty id")
        with self._db.write() as conn:
            now = self._clock()
            before = self._get(conn, run_id, key)
            if before is None:
                return Claim(ClaimStatus.NOT_PLANNED)
            if before.status.finished:
                return Claim(ClaimStatus.FINISHED, before)
            if before.status is ShardStatus.RUNNING and before.heartbeat_at > now - stale_after_s:
                return Claim(ClaimStatus.HELD, before)
            conn.execute(
                "UPDATE shards SET status = ?, worker = ?, tier = ?, attempts = attempts + 1,"
                " started_at = ?, heartbeat_at = ?, finished_at = 0, chunks_done = 0,"
                " chunks_written = 0, bytes_written = 0, peak_rss_bytes = 0"
                " WHERE run_id = ? AND key = ?",
                (ShardStatus.RUNNING.value, worker, tier, now, now, run_id, key),
            )
            after = self._get(conn, run_id, key)
            assert after is not None
            return Claim(ClaimStatus.CLAIMED, after, after.attempts, before)

    def _update_owned(
        self, run_id: str, key: str, token: int, assignments: str, params: tuple
    ) -> bool:
        with self._db.write() as conn:
            now = self._clock()
            values = tuple(now if p is _NOW else p for p in params)
            cur = conn.execute(
                f"UPDATE shards SET {assignments}"
                " WHERE run_id = ? AND key = ? AND attempts = ? AND status = ?",
                (*values, run_id, key, int(token), ShardStatus.RUNNING.value),
            )
            return cur.rowcount == 1

    def heartbeat(self, run_id: str, key: str, token: int, chunks_done: int) -> bool:
        return self._update_owned(
            run_id, key, token, "chunks_done = ?, heartbeat_at = ?", (int(chunks_done), _NOW)
        )

    def check(self, run_id: str, key: str, token: int) -> bool:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM shards WHERE run_id = ? AND key = ? AND attempts = ? AND status = ?",
                (run_id, key, int(token), ShardStatus.RUNNING.value),
            ).fetchone()
        return row is not None

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
        status = ShardStatus(status)
        if not status.finished:
            raise ValueError(f"finish takes done or empty, got {status.value!r}")
        return self._update_owned(
            run_id,
            key,
            token,
            "status = ?, chunks_done = ?, chunks_written = ?, bytes_written = ?,"
            " peak_rss_bytes = ?, finished_at = ?, heartbeat_at = ?, error = NULL, source = ?",
            (
                status.value,
                int(chunks_done),
                int(chunks_written),
                int(bytes_written),
                int(peak_rss_bytes),
                _NOW,
                _NOW,
                str(source),
            ),
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
        sets = "status = ?, error = ?, peak_rss_bytes = ?, finished_at = ?"
        params: tuple = (
            ShardStatus.FAILED.value,
            _error_to_db(error),
            int(peak_rss_bytes),
            _NOW,
        )
        if tier is not None:
            sets, params = sets + ", tier = ?", (*params, tier)
        return self._update_owned(run_id, key, token, sets, params)

    def release(
        self,
        run_id: str,
        key: str,
        token: int,
        error: Mapping[str, Any] | None = None,
        tier: str | None = None,
    ) -> bool:
        sets = "status = ?, worker = ''"
        params: tuple = (ShardStatus.QUEUED.value,)
        if error is not None:
            sets, params = sets + ", error = ?", (*params, _error_to_db(error))
        if tier is not None:
            sets, params = sets + ", tier = ?", (*params, tier)
        return self._update_owned(run_id, key, token, sets, params)

    def reset(self, run_id: str, key: str, reason: str) -> bool:
        error = {"kind": "reset", "cause": str(reason)}
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE shards SET status = ?, worker = '', error = ?, chunks_done = 0,"
                " chunks_written = 0, bytes_written = 0, finished_at = 0, source = ''"
                " WHERE run_id = ? AND key = ?",
                (ShardStatus.QUEUED.value, _error_to_db(error), run_id, key),
            )
            return cur.rowcount == 1

    def _get(self, conn: Any, run_id: str, key: str) -> ShardRecord | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM shards WHERE run_id = ? AND key = ?", (run_id, key)
        ).fetchone()
        return None if row is None else _record(row)

    def get(self, run_id: str, key: str) -> ShardRecord | None:
        with self._db.read() as conn:
            return self._get(conn, run_id, key)

    def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, ShardRecord]:
        wanted = list(keys)
        out: dict[str, ShardRecord] = {}
        with self._db.read() as conn:
            for i in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                part = wanted[i : i + 500]
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM shards WHERE run_id = ? AND key IN"
                    f" ({', '.join('?' * len(part))})",
                    (run_id, *part),
                ).fetchall()
                out.update((r.key, r) for r in map(_record, rows))
        return out

    def list(
        self,
        run_id: str,
        status: ShardStatus | None = None,
        scale: int | None = None,
        limit: int | None = None,
    ) -> list[ShardRecord]:
        sql = f"SELECT {_COLUMNS} FROM shards WHERE run_id = ?"
        params: list[Any] = [run_id]
        if status is not None:
            sql += " AND status = ?"
            params.append(ShardStatus(status).value)
        if scale is not None:
            sql += " AND scale = ?"
            params.append(int(scale))
        sql += " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._db.read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_record(r) for r in rows]

    def finished_since(self, run_id: str, since: float) -> tuple[int, int]:
        with self._db.read() as conn:
            n, chunks = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(chunks_done), 0) FROM shards WHERE run_id = ?"
                " AND status IN (?, ?) AND finished_at >= ?",
                (run_id, ShardStatus.DONE.value, ShardStatus.EMPTY.value, float(since)),
            ).fetchone()
        return int(n), int(chunks)

    def summary(self, run_id: str) -> list[SummaryRow]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT scale, tier, status, COUNT(*), SUM(chunks_expected), SUM(chunks_done),"
                " SUM(chunks_written), SUM(bytes_written) FROM shards WHERE run_id = ?"
                " GROUP BY scale, tier, status ORDER BY scale, tier, status",
                (run_id,),
            ).fetchall()
        return [
            SummaryRow(scale, tier, ShardStatus(status), n, int(ce), int(cd), int(cw), int(bw))
            for scale, tier, status, n, ce, cd, cw, bw in rows
        ]

"""Embedded shard state store: one SQLite file, safe for many processes on one machine.

One row per (run_id, shard key) with a column for every `ShardRecord` field (the error as JSON
text) plus `updated_at`, the time of the owner's last claim / heartbeat. Same multi-process rules
as `backends.sqlite_queue`: a connection per process, WAL, short `BEGIN IMMEDIATE` transactions
(a claim reads and writes in one of them, so two processes can never both win it).

Ownership: heartbeat, finish, fail and release only act while the record is running under the
calling worker. A worker whose claim was taken over (it looked stale) cannot clobber the new
owner's record; its calls are silently ignored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dvid2ng.backends.base import ShardRecord, ShardStatus
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
        attempts INTEGER NOT NULL,
        worker TEXT NOT NULL,
        chunks_expected INTEGER NOT NULL,
        chunks_done INTEGER NOT NULL,
        chunks_written INTEGER NOT NULL,
        bytes_written INTEGER NOT NULL,
        peak_rss_bytes INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        error TEXT,                    -- JSON object or NULL
        updated_at REAL NOT NULL,      -- last claim / heartbeat / change
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS shards_status ON shards (run_id, status, key)",
    "CREATE INDEX IF NOT EXISTS shards_scale ON shards (run_id, scale, key)",
)

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
    "error",
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
        self._db = SqliteDatabase(path, _STATE_SCHEMA, busy_timeout_s)
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

    # -- shards ----------------------------------------------------------------------------

    def plan(self, records: Iterable[ShardRecord]) -> int:
        rows = []
        for r in records:
            if not r.run_id or not r.key:
                raise ValueError(f"a shard record needs a run_id and a key: {r!r}")
            rows.append(
                (
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
                    _error_to_db(r.error),
                )
            )
        if not rows:
            return 0
        with self._db.write() as conn:
            before = conn.total_changes
            now = self._clock()
            conn.executemany(
                f"INSERT OR IGNORE INTO shards ({_COLUMNS}, updated_at)"
                f" VALUES ({', '.join('?' * (len(_FIELDS) + 1))})",
                [(*row, now) for row in rows],
            )
            return conn.total_changes - before

    def claim(
        self, run_id: str, key: str, worker: str, tier: str, stale_after_s: float
    ) -> ShardRecord | None:
        """See `StateStore.claim`. Raises KeyError for a shard that was never planned.

        A claim resets the per-attempt fields: chunks_done, chunks_written, bytes_written,
        peak_rss_bytes, finished_at and error.
        """
        if not worker:
            raise ValueError("worker must be a non-empty id")
        with self._db.write() as conn:
            now = self._clock()
            row = conn.execute(
                "SELECT status, worker, updated_at FROM shards WHERE run_id = ? AND key = ?",
                (run_id, key),
            ).fetchone()
            if row is None:
                raise KeyError(f"shard {key!r} is not planned in run {run_id!r}")
            status, owner, updated_at = ShardStatus(row[0]), row[1], row[2]
            if status.finished:
                return None
            if (
                status is ShardStatus.RUNNING
                and owner != worker
                and updated_at > now - stale_after_s
            ):
                return None
            conn.execute(
                "UPDATE shards SET status = ?, worker = ?, tier = ?, attempts = attempts + 1,"
                " started_at = ?, updated_at = ?, finished_at = 0, error = NULL, chunks_done = 0,"
                " chunks_written = 0, bytes_written = 0, peak_rss_bytes = 0"
                " WHERE run_id = ? AND key = ?",
                (ShardStatus.RUNNING.value, worker, tier, now, now, run_id, key),
            )
            return self._get(conn, run_id, key)

    def _update_owned(
        self, run_id: str, key: str, worker: str, assignments: str, params: tuple
    ) -> None:
        with self._db.write() as conn:
            now = self._clock()
            values = tuple(now if p is _NOW else p for p in params)
            conn.execute(
                f"UPDATE shards SET {assignments}, updated_at = ?"
                " WHERE run_id = ? AND key = ? AND worker = ? AND status = ?",
                (*values, now, run_id, key, worker, ShardStatus.RUNNING.value),
            )

    def heartbeat(self, run_id: str, key: str, worker: str, chunks_done: int) -> None:
        self._update_owned(run_id, key, worker, "chunks_done = ?", (int(chunks_done),))

    def finish(
        self,
        run_id: str,
        key: str,
        worker: str,
        status: ShardStatus,
        *,
        chunks_done: int,
        chunks_written: int,
        bytes_written: int,
        peak_rss_bytes: int,
    ) -> None:
        status = ShardStatus(status)
        if not status.finished:
            raise ValueError(f"finish takes done or empty, got {status.value!r}")
        self._update_owned(
            run_id,
            key,
            worker,
            "status = ?, chunks_done = ?, chunks_written = ?, bytes_written = ?,"
            " peak_rss_bytes = ?, finished_at = ?, error = NULL",
            (
                status.value,
                int(chunks_done),
                int(chunks_written),
                int(bytes_written),
                int(peak_rss_bytes),
                _NOW,
            ),
        )

    def fail(
        self, run_id: str, key: str, worker: str, error: Mapping[str, Any], peak_rss_bytes: int = 0
    ) -> None:
        self._update_owned(
            run_id,
            key,
            worker,
            "status = ?, error = ?, peak_rss_bytes = ?, finished_at = ?",
            (ShardStatus.FAILED.value, _error_to_db(error), int(peak_rss_bytes), _NOW),
        )

    def release(self, run_id: str, key: str, worker: str) -> None:
        self._update_owned(
            run_id, key, worker, "status = ?, worker = ''", (ShardStatus.QUEUED.value,)
        )

    def reopen(self, run_id: str, key: str) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE shards SET status = ?, worker = '', finished_at = 0, error = NULL,"
                " chunks_done = 0, chunks_written = 0, bytes_written = 0, updated_at = ?"
                " WHERE run_id = ? AND key = ? AND status IN (?, ?)",
                (
                    ShardStatus.QUEUED.value,
                    self._clock(),
                    run_id,
                    key,
                    ShardStatus.DONE.value,
                    ShardStatus.EMPTY.value,
                ),
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

    def list(
        self, run_id: str, status: ShardStatus | None = None, scale: int | None = None
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
        with self._db.read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_record(r) for r in rows]

    def counts(self, run_id: str) -> dict[ShardStatus, int]:
        out = dict.fromkeys(ShardStatus, 0)
        with self._db.read() as conn:
            for status, n in conn.execute(
                "SELECT status, COUNT(*) FROM shards WHERE run_id = ? GROUP BY status", (run_id,)
            ):
                out[ShardStatus(status)] = n
        return out

"""The two small interfaces every backend implements: a tiered work queue and a shard state store.

Implementations: `backends.sqlite_queue` / `backends.sqlite_state` (embedded default, one machine)
and, in a later issue, Pub/Sub and Firestore. All of them pass `tests/backends/test_contract_*.py`.

Queue semantics (modelled on Pub/Sub with dead-letter policies):
* one queue per memory tier (names from `schemas.tiers`), plus a terminal dead-letter queue;
* `pull` leases messages; a lease that expires without `ack` makes the message deliverable again;
* every delivery carries a 1-based `attempt` count for its current tier;
* `nack` (or lease expiry) after `max_delivery_attempts` deliveries on a tier forwards the message
  to the next tier (attempt restarts at 1), and from the last tier to the dead-letter queue;
* `dead_letter` sends a message straight to the dead-letter queue (poison input: retrying cannot help).
Handlers must be idempotent: delivery is at-least-once.

State semantics: one record per (run, shard key). Status moves
queued -> running -> done | empty | failed; a failed or stale running shard may be claimed again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Delivery:
    """One leased delivery of a queued message."""

    message_id: str
    tier: str
    body: bytes
    attempt: int  # 1-based delivery attempt on this tier
    ack_id: str  # opaque handle for ack / nack / extend_lease / dead_letter
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    body: bytes
    from_tier: str
    reason: str
    attributes: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Queue(Protocol):
    tiers: Sequence[str]

    def publish(self, tier: str, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Enqueue one message on a tier; returns its message id."""

    def pull(
        self, tier: str, max_messages: int = 1, lease_seconds: float = 600.0
    ) -> list[Delivery]:
        """Lease up to `max_messages` deliverable messages (may return fewer, or none)."""

    def ack(self, delivery: Delivery) -> None:
        """The message is handled: remove it. Acking an expired lease is a no-op."""

    def nack(self, delivery: Delivery) -> None:
        """Handling failed: redeliver (or escalate once the tier's attempts are used up)."""

    def extend_lease(self, delivery: Delivery, lease_seconds: float) -> None:
        """Keep a long-running message leased (heartbeat)."""

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Poison message: move it to the terminal dead-letter queue now."""

    def dead_letters(self) -> list[DeadLetter]:
        """Messages in the terminal dead-letter queue, oldest first (not removed)."""

    def depth(self, tier: str) -> int:
        """Messages on a tier not yet acked (leased or not)."""


class ShardStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    EMPTY = "empty"  # processed: every chunk was background, so no shard file exists
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (ShardStatus.DONE, ShardStatus.EMPTY)


@dataclass
class ShardRecord:
    run_id: str
    key: str  # "s<scale>/<shard hex>", unique within a run
    scale: int
    shard: int
    status: ShardStatus = ShardStatus.QUEUED
    tier: str = ""
    attempts: int = 0
    worker: str = ""
    chunks_expected: int = 0  # from the plan (CSV rows), 0 when unknown
    chunks_done: int = 0  # progress while running; final count when finished
    chunks_written: int = 0  # non-empty chunks stored in the shard
    bytes_written: int = 0  # size of the shard file
    peak_rss_bytes: int = 0
    started_at: float = 0.0  # unix seconds
    finished_at: float = 0.0
    error: dict[str, Any] | None = None  # {"file", "chunk", "cause", "kind"} for failures

    @property
    def duration_s(self) -> float:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return 0.0


@runtime_checkable
class StateStore(Protocol):
    def put_run(self, run_id: str, config: Mapping[str, Any]) -> None:
        """Record a run's configuration (idempotent; the first one wins)."""

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...

    def plan(self, records: Iterable[ShardRecord]) -> int:
        """Insert planned shards. Existing records are kept as they are (resume). Returns new count."""

    def claim(
        self, run_id: str, key: str, worker: str, tier: str, stale_after_s: float
    ) -> ShardRecord | None:
        """Atomically mark a shard running for `worker` and count the attempt.

        Returns None when the shard is already finished (done/empty) or running under another
        worker whose last heartbeat is younger than `stale_after_s`.
        """

    def heartbeat(self, run_id: str, key: str, worker: str, chunks_done: int) -> None: ...

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
        """Mark done or empty with final metrics."""

    def fail(
        self, run_id: str, key: str, worker: str, error: Mapping[str, Any], peak_rss_bytes: int = 0
    ) -> None: ...

    def release(self, run_id: str, key: str, worker: str) -> None:
        """Give an unfinished shard back (interrupted worker): status returns to queued."""

    def reopen(self, run_id: str, key: str) -> bool:
        """A finished (done or empty) shard goes back to queued, e.g. because its output file
        was deleted and must be rebuilt (`--only-missing`). False if it was not finished."""

    def get(self, run_id: str, key: str) -> ShardRecord | None: ...

    def list(
        self, run_id: str, status: ShardStatus | None = None, scale: int | None = None
    ) -> list[ShardRecord]: ...

    def counts(self, run_id: str) -> dict[ShardStatus, int]:
        """Number of shards per status (every status present, zero when none)."""

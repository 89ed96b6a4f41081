"""The small interfaces every backend implements: a tiered work queue and a shard state store.

They are cut to what Pub/Sub and Firestore can honour, so the embedded SQLite backends
(`backends.sqlite_queue`, `backends.sqlite_state`) and the Google ones (`backends.pubsub_queue`,
`backends.firestore_state`) are interchangeable. All of them pass `tests/backends/test_contract_*`.

Queue (what the worker loop needs; modelled on Pub/Sub pull subscriptions):
* one queue per memory tier (names from `schemas.tiers`), and a TERMINAL queue for dead letters;
* `pull` leases messages; a lease that runs out without `ack` makes the message deliverable
  again; `extend` keeps a lease alive, at most MAX_LEASE_SECONDS (Pub/Sub's cap) per call;
* `nack(delay)` gives a message back, deliverable again after `delay` seconds;
* `forward(delivery, to, reason)` moves a message to another tier or to TERMINAL now: publish
  there (with `forwarded_from` and `forward_reason` attributes), then ack. Pub/Sub has no
  "dead-letter now"; this is how one is made;
* the backstop: after a tier's `max_delivery_attempts` deliveries the queue itself forwards the
  message to the next tier, and from the last tier to TERMINAL (a subscription's dead-letter
  policy). Counts are best effort: a `Delivery.attempt` is approximate and may be absent.
Delivery is at least once: handlers must be idempotent, and identity is the shard key in the
message, never the message id (a forwarded copy gets a new id in Pub/Sub).

Operator functions (exact depth, dead letters, replay) are on `QueueAdmin`: the worker never
needs them, and Pub/Sub can answer them only approximately or slowly.

StateStore: one record per (run, shard key). Status moves queued -> running -> done | empty |
failed, and back to queued on release or reset. Ownership is fenced: `claim` returns a token
(the attempt number) and every later write of that worker (heartbeat, finish, fail, release)
names it; a write with a token that is no longer current changes nothing and returns False, so
a worker that was presumed dead can never overwrite what its successor recorded. The worker
also checks its token (`check`) right before committing a shard file.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dvid2ng.schemas.tiers import DEAD_LETTER_QUEUE, tier_by_name

MAX_LEASE_SECONDS = 600.0  # Pub/Sub: modifyAckDeadline takes at most 600 s
MAX_NACK_DELAY_SECONDS = 600.0  # a delayed nack is an ack-deadline change: the same cap
# `forward` target: the dead-letter queue at the end of the tiers (one name with schemas.tiers)
TERMINAL = DEAD_LETTER_QUEUE

FORWARDED_FROM = "forwarded_from"  # attribute: the tier a forwarded message left
FORWARD_REASON = "forward_reason"  # attribute: why it was forwarded


def check_lease_seconds(seconds: float, what: str = "lease") -> float:
    """Production's limit, enforced here because the emulators accept more."""
    if not 0 < seconds <= MAX_LEASE_SECONDS:
        raise ValueError(f"{what} must be in (0, {MAX_LEASE_SECONDS:g}] seconds, got {seconds}")
    return float(seconds)


def delivery_attempts_by_tier(
    tiers: Sequence[str], value: Mapping[str, int] | int | None
) -> dict[str, object]:
    """The `max_delivery_attempts` argument of a queue, one value per tier, unchecked: one
    value for every tier, or a mapping tier -> value with the others from `schemas.tiers`.
    Each backend then checks the values against its own limits."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(tiers)
        if unknown:
            raise ValueError(f"max_delivery_attempts for unknown tiers: {sorted(unknown)}")
    out: dict[str, object] = {}
    for t in tiers:
        if isinstance(value, Mapping) and t in value:
            out[t] = value[t]
        elif value is not None and not isinstance(value, Mapping):
            out[t] = value
        else:
            try:
                out[t] = tier_by_name(t).max_delivery_attempts
            except KeyError:
                raise ValueError(
                    f"tier {t!r} is not in schemas.tiers: give its max_delivery_attempts"
                ) from None
    return out


def check_nack_delay(seconds: float) -> float:
    if not 0 <= seconds <= MAX_NACK_DELAY_SECONDS:
        raise ValueError(
            f"nack delay must be in [0, {MAX_NACK_DELAY_SECONDS:g}] seconds, got {seconds}"
        )
    return float(seconds)


@dataclass(frozen=True)
class Delivery:
    """One leased delivery of a queued message."""

    message_id: str
    tier: str
    body: bytes
    ack_id: str  # opaque handle for ack / nack / extend / forward
    attributes: Mapping[str, str] = field(default_factory=dict)
    attempt: int | None = None  # approximate 1-based delivery count on this tier; None: unknown


@dataclass(frozen=True)
class DeadLetter:
    """A message in the TERMINAL queue."""

    message_id: str
    body: bytes
    from_tier: str  # the tier it left ("" when unknown)
    reason: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    handle: str = ""  # opaque, for QueueAdmin.replay / discard


@runtime_checkable
class Queue(Protocol):
    tiers: Sequence[str]

    def publish(self, tier: str, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Enqueue one message on a tier; returns its message id."""

    def publish_many(
        self, tier: str, messages: Iterable[tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        """Enqueue many messages on one tier (batched where the backend can); returns ids."""

    def pull(
        self, tier: str, max_messages: int = 1, lease_seconds: float = MAX_LEASE_SECONDS
    ) -> list[Delivery]:
        """Lease up to `max_messages` deliverable messages (may return fewer, or none)."""

    def ack(self, delivery: Delivery) -> None:
        """The message is handled: remove it. Acking an expired lease is harmless."""

    def nack(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        """Give it back: deliverable again after `delay_seconds` (0..600). Counts as a delivery
        for the tier's dead-letter backstop."""

    def extend(self, delivery: Delivery, seconds: float) -> None:
        """Keep the lease for `seconds` more from now (0 < seconds <= 600)."""

    def forward(self, delivery: Delivery, to: str, reason: str) -> str:
        """Publish the message on tier `to` (or TERMINAL) with the reason and origin tier as
        attributes, then ack this delivery. Returns the new message id."""

    def close(self) -> None: ...


@runtime_checkable
class QueueAdmin(Protocol):
    """Operator functions: depth, dead letters, replay. Not on the worker's path."""

    tiers: Sequence[str]

    def depth(self, tier: str) -> int | None:
        """Messages on `tier` (or TERMINAL) not yet acked; None when the backend cannot tell."""

    def dead_letters(self, max_messages: int = 1000) -> list[DeadLetter]:
        """Messages in TERMINAL, oldest first where the backend can; not removed."""

    def replay(self, letter: DeadLetter, to_tier: str, body: bytes | None = None) -> str:
        """Publish a dead letter on `to_tier` again (with `body` instead of its own, e.g. a task
        whose source was re-exported since) and remove it from TERMINAL."""


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
    attempts: int = 0  # claims so far; the current claim's token
    worker: str = ""
    chunks_expected: int = 0  # from the plan (CSV rows), 0 when unknown
    chunks_done: int = 0  # progress while running; final count when finished
    chunks_written: int = 0  # non-empty chunks stored in the shard
    bytes_written: int = 0  # size of the shard file
    peak_rss_bytes: int = 0
    started_at: float = 0.0  # unix seconds of the current claim
    finished_at: float = 0.0
    heartbeat_at: float = 0.0  # unix seconds of the owner's last claim or heartbeat
    error: dict[str, Any] | None = None  # {"kind", "file", "chunk", "cause"} of the last failure
    source: str = ""  # fingerprint of the source the output was made from (size, generation)

    @property
    def duration_s(self) -> float:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return 0.0


class ClaimStatus(enum.StrEnum):
    CLAIMED = "claimed"  # the shard is yours: use `token` in every later write
    FINISHED = "finished"  # done or empty already: ack the message, no work
    HELD = "held"  # running under another worker whose heartbeat is fresh
    NOT_PLANNED = "not-planned"  # no such shard in this run


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    record: ShardRecord | None = None  # the record after the claim, or as found
    token: int = 0  # valid when CLAIMED
    previous: ShardRecord | None = None  # the record as found before a successful claim

    @property
    def ok(self) -> bool:
        return self.status is ClaimStatus.CLAIMED


@dataclass(frozen=True)
class SummaryRow:
    """Totals of the shards of one run with one (scale, tier, status)."""

    scale: int
    tier: str
    status: ShardStatus
    shards: int
    chunks_expected: int
    chunks_done: int
    chunks_written: int
    bytes_written: int


@runtime_checkable
class StateStore(Protocol):
    def put_run(self, run_id: str, config: Mapping[str, Any]) -> None:
        """Record a run's configuration (idempotent; the first one wins)."""

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        """Every run as (run_id, config), newest first."""

    def plan(self, records: Iterable[ShardRecord]) -> int:
        """Insert planned shards. Existing records are kept as they are (resume). Returns new count."""

    def get(self, run_id: str, key: str) -> ShardRecord | None: ...

    def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, ShardRecord]:
        """The records of `keys` that exist, in batched reads (a publish looks at every shard)."""

    def claim(self, run_id: str, key: str, worker: str, tier: str, stale_after_s: float) -> Claim:
        """Atomically make the shard running for `worker` with a new token (attempts + 1).

        Not claimable: finished shards (FINISHED) and shards running under any worker (this one
        included: a redelivery must not restart a live attempt) whose heartbeat is younger than
        `stale_after_s` (HELD). A claim resets the per-attempt metrics and keeps `error` (the
        last failure) for the new owner to read.
        """

    def heartbeat(self, run_id: str, key: str, token: int, chunks_done: int) -> bool:
        """Refresh the claim. False: the token is no longer current (stop working)."""

    def check(self, run_id: str, key: str, token: int) -> bool:
        """Is `token` still the running claim? (asked right before a shard file is committed)"""

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
        """Mark done or empty with final metrics. False (nothing changed) for a stale token."""

    def fail(
        self,
        run_id: str,
        key: str,
        token: int,
        error: Mapping[str, Any],
        peak_rss_bytes: int = 0,
        tier: str | None = None,
    ) -> bool:
        """Mark failed with the error; `tier` records where it goes next (escalation)."""

    def release(
        self,
        run_id: str,
        key: str,
        token: int,
        error: Mapping[str, Any] | None = None,
        tier: str | None = None,
    ) -> bool:
        """Give an unfinished shard back: queued again, with the reason (interrupted, transient
        failure) kept in `error` and `tier` set where its message is going."""

    def reset(self, run_id: str, key: str, reason: str) -> bool:
        """Operator / dispatcher: queue a shard again whatever its status (its output file is
        missing or damaged, its source changed). The token moves on, fencing out any worker
        that still holds the old one. False if the shard is not planned."""

    def list(
        self,
        run_id: str,
        status: ShardStatus | None = None,
        scale: int | None = None,
        limit: int | None = None,
    ) -> list[ShardRecord]:
        """Records of a run in key order, filtered; for errors and in-flight lists, not totals."""

    def summary(self, run_id: str) -> list[SummaryRow]:
        """Totals per (scale, tier, status) with at least one shard, from aggregation queries
        (never by listing every shard)."""

    def finished_since(self, run_id: str, since: float) -> tuple[int, int]:
        """(shards, chunks) finished (done or empty) at or after `since` (unix seconds): the
        recent throughput, from an aggregation query."""

    def close(self) -> None: ...


def counts_by_status(rows: Iterable[SummaryRow]) -> dict[ShardStatus, int]:
    """Shards per status (every status present, zero when none)."""
    out = dict.fromkeys(ShardStatus, 0)
    for r in rows:
        out[r.status] += r.shards
    return out

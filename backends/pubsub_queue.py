"""Tier queues on Google Cloud Pub/Sub: `pubsub://PROJECT/PREFIX`.

One topic and one pull subscription per memory tier, named from `schemas/json/fleet.json`
(`{prefix}-{tier}`), plus a terminal topic `{prefix}-dead-letter` with its own subscription
(a message published to a topic without a subscription is lost). Each tier subscription's
dead-letter policy forwards a message after the tier's `max_delivery_attempts` to the next
tier's topic, and from the last tier to the terminal topic: the backstop of `backends.base`.
`create()` makes all of it (emulators, a dev project); in production Terraform owns it and
`check()` lists every difference between what exists and the code's tier table.

Why synchronous unary pull, not streaming pull: a worker converts one shard at a time, for
minutes. A streaming pull (`subscribe()`) leases messages ahead into the client's buffer (flow
control limits what the callback gets, not always what the server sends), and the client
keeps extending those leases by itself: the extra messages sit leased in a busy worker while
idle workers starve, and a stuck process keeps its lease alive. A unary `pull(max_messages=1)`
leases exactly what the worker takes, and the lease lives only as long as the worker's own
heartbeat extends it (`extend`), so a worker killed by the OOM killer lets its message go after
`lease_seconds`.

Semantics as Pub/Sub gives them (the contract suite declares them, tests/backends/conftest.py):
* leases are real time: `pull` leases for the subscription's ack deadline, then
  `modify_ack_deadline` sets `lease_seconds` (whole seconds; at most 600, enforced here because
  the emulator accepts more); `nack(delay)` is `modify_ack_deadline(delay)` and counts as a
  delivery attempt; with fleet.json's retry policy Pub/Sub holds a redelivery back for
  its backoff (10..600 s, exponential; the emulator does too), so `nack(0)` means "as soon as
  the retry policy allows";
* ack ids are not fenced: an ack / extend / forward with an expired ack id may still act on a
  message another worker leased since (exactly-once delivery is off); handlers are idempotent
  and ownership is fenced in the state store instead;
* `Delivery.attempt` is Pub/Sub's `delivery_attempt` (best effort, None when the subscription
  has no dead-letter policy); a forwarded copy has a new message id and starts again at 1;
* no order; `depth` is None: Pub/Sub tells the backlog only through Cloud Monitoring
  (`subscription/num_undelivered_messages`, minutes late), not through its own API;
* a message the backstop moved carries Pub/Sub's `CloudPubSubDeadLetterSource*` attributes;
  deliveries and dead letters report that hop as `forwarded_from` / `forward_reason`, like a
  message moved by `forward`. Other attributes are kept exactly as the publisher gave them.

The client libraries honour `PUBSUB_EMULATOR_HOST`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.api_core import exceptions as gexc

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
from dvid2ng.schemas.fleet import (
    fleet_config,
    subscription_name,
    terminal_subscription_name,
    terminal_topic_name,
    topic_name,
)
from dvid2ng.schemas.tiers import tier_names

# Attributes Pub/Sub adds to a message its dead-letter policy forwarded.
DEAD_LETTER_ATTRIBUTE_PREFIX = "CloudPubSubDeadLetter"
DEAD_LETTER_SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
DEAD_LETTER_SOURCE_DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"

# Pub/Sub quotas (https://cloud.google.com/pubsub/quotas): checked before publishing, so a bad
# message fails with its reason instead of an opaque INVALID_ARGUMENT for the whole batch.
MAX_MESSAGE_BYTES = 10_000_000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MIN_DELIVERY_ATTEMPTS, MAX_DELIVERY_ATTEMPTS = 5, 100
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")  # topic / subscription ids

# The Pub/Sub emulator (0.8.20) refuses a subscription retention above 7 days ("out of
# bounds"); production allows 31, which the terminal subscription uses (as Terraform does).
EMULATOR_MAX_RETENTION_S = 7 * 86400

DEFAULT_PULL_TIMEOUT_S = 2.0  # how long one pull waits for a message before returning none
DEFAULT_DEAD_LETTER_LEASE_S = 120.0  # how long dead_letters() keeps what it listed leased
DEAD_LETTER_EMPTY_PULLS = 2  # dead_letters() stops after this many empty pulls in a row
_MODACK_CHUNK = 1000  # ack ids per acknowledge / modify_ack_deadline request


class QueueNotCreated(RuntimeError):
    """A topic or subscription this queue needs does not exist."""


class PublishError(RuntimeError):
    """Some messages of a `publish_many` were not published (the others were)."""


def backstop_reason(tier: str, deliveries: str | int | None) -> str:
    """The reason recorded for a message the dead-letter policy moved off `tier` (the same
    wording as the embedded queue's)."""
    count = f" ({deliveries})" if deliveries not in (None, "") else ""
    return f"max delivery attempts{count} exhausted on tier {tier}"


def _seconds(value: Any) -> float:
    """A protobuf Duration as proto-plus returns it (timedelta) or as a message, in seconds."""
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(getattr(value, "seconds", 0)) + getattr(value, "nanos", 0) / 1e9


def _clip_utf8(text: str, limit: int) -> str:
    data = str(text).encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


def _check_body(body: Any) -> bytes:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, got {type(body).__name__}")
    body = bytes(body)
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(body)} bytes exceeds Pub/Sub's {MAX_MESSAGE_BYTES}")
    return body


def _check_attributes(attributes: Mapping[str, str] | None) -> dict[str, str]:
    attrs = dict(attributes or {})
    if len(attrs) > MAX_ATTRIBUTES:
        raise ValueError(f"{len(attrs)} attributes exceed Pub/Sub's {MAX_ATTRIBUTES}")
    for k, v in attrs.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"attributes must map str -> str, got {k!r}: {v!r}")
        if not k or len(k.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise ValueError(f"attribute key {k[:40]!r} must be 1..{MAX_ATTRIBUTE_KEY_BYTES} bytes")
        if k.startswith("goog"):
            raise ValueError(f"attribute key {k!r}: keys starting with 'goog' are reserved")
        if len(v.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise ValueError(
                f"attribute {k!r} is {len(v.encode())} bytes; Pub/Sub allows "
                f"{MAX_ATTRIBUTE_VALUE_BYTES}"
            )
    return attrs


def _without_dead_letter_attributes(attrs: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in attrs.items() if not k.startswith(DEAD_LETTER_ATTRIBUTE_PREFIX)}


@dataclass(frozen=True)
class SubscriptionSettings:
    """What `create()` makes and `check()` expects of every subscription (from fleet.json)."""

    ack_deadline_seconds: int
    message_retention_seconds: int
    retry_min_backoff_seconds: float
    retry_max_backoff_seconds: float
    terminal_message_retention_seconds: int = 31 * 86400

    @classmethod
    def from_fleet(cls, **overrides: float | None) -> SubscriptionSettings:
        ps = fleet_config()["pubsub"]
        values = {
            "ack_deadline_seconds": ps["ack_deadline_seconds"],
            "message_retention_seconds": ps["message_retention_seconds"],
            "retry_min_backoff_seconds": ps["retry_min_backoff_seconds"],
            "retry_max_backoff_seconds": ps["retry_max_backoff_seconds"],
            "terminal_message_retention_seconds": ps["terminal_message_retention_seconds"],
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(
            ack_deadline_seconds=int(values["ack_deadline_seconds"]),
            message_retention_seconds=int(values["message_retention_seconds"]),
            retry_min_backoff_seconds=float(values["retry_min_backoff_seconds"]),
            retry_max_backoff_seconds=float(values["retry_max_backoff_seconds"]),
            terminal_message_retention_seconds=int(values["terminal_message_retention_seconds"]),
        )
        s.validate()
        return s

    def validate(self) -> None:
        # Pub/Sub's ranges, so that create() fails here rather than halfway through
        if not 10 <= self.ack_deadline_seconds <= 600:
            raise ValueError(f"ack deadline must be 10..600 s, got {self.ack_deadline_seconds}")
        for retention in (self.message_retention_seconds, self.terminal_message_retention_seconds):
            if not 600 <= retention <= 31 * 86400:
                raise ValueError(f"message retention must be 10 min..31 days, got {retention} s")
        lo, hi = self.retry_min_backoff_seconds, self.retry_max_backoff_seconds
        if not 0 <= lo <= hi <= 600:
            raise ValueError(f"retry backoff needs 0 <= min <= max <= 600 s, got {lo}, {hi}")


@dataclass
class _Held:
    """Dead letters this process has leased through `dead_letters()`."""

    letter: DeadLetter
    ack_ids: list[str]
    publish_time: float
    expires: float  # time.monotonic() when the lease runs out


class PubSubQueue:
    """`backends.base.Queue` and `QueueAdmin` on Pub/Sub (see the module docstring).

    `max_delivery_attempts`: one int for every tier or a mapping tier -> int (others from
    `schemas.tiers`), each 5..100 as Pub/Sub requires; used by `create()` and `check()`. The
    subscription settings default to fleet.json; tests override the retry backoff (the real
    service would hold every nack back for its minimum backoff).
    """

    def __init__(
        self,
        project: str,
        prefix: str,
        tiers: Sequence[str] | None = None,
        *,
        max_delivery_attempts: Mapping[str, int] | int | None = None,
        ack_deadline_seconds: int | None = None,
        message_retention_seconds: int | None = None,
        retry_min_backoff_seconds: float | None = None,
        retry_max_backoff_seconds: float | None = None,
        pull_timeout_s: float = DEFAULT_PULL_TIMEOUT_S,
        dead_letter_lease_s: float = DEFAULT_DEAD_LETTER_LEASE_S,
        publish_timeout_s: float = 120.0,
    ):
        if not project or "/" in project:
            raise ValueError(f"a Google Cloud project id is needed, got {project!r}")
        if isinstance(tiers, str):
            raise TypeError("tiers must be a sequence of tier names, not one string")
        tiers = tuple(tier_names() if tiers is None else tiers)
        if len(tiers) < 1 or len(set(tiers)) != len(tiers):
            raise ValueError(f"tiers must be distinct and at least one, got {tiers}")
        if TERMINAL in tiers:
            raise ValueError(f"{TERMINAL!r} is the terminal queue, not a tier")
        self.project = project
        self.prefix = prefix
        self.tiers: tuple[str, ...] = tiers
        self.max_delivery_attempts = self._resolve_attempts(max_delivery_attempts)
        self.settings = SubscriptionSettings.from_fleet(
            ack_deadline_seconds=ack_deadline_seconds,
            message_retention_seconds=message_retention_seconds,
            retry_min_backoff_seconds=retry_min_backoff_seconds,
            retry_max_backoff_seconds=retry_max_backoff_seconds,
        )
        if pull_timeout_s <= 0 or dead_letter_lease_s <= 0 or publish_timeout_s <= 0:
            raise ValueError(
                "pull_timeout_s, dead_letter_lease_s and publish_timeout_s must be > 0"
            )
        check_lease_seconds(dead_letter_lease_s, "dead_letter_lease_s")
        self.pull_timeout_s = float(pull_timeout_s)
        self.dead_letter_lease_s = float(dead_letter_lease_s)
        self.publish_timeout_s = float(publish_timeout_s)
        for name in [*(self._topic_id(t) for t in tiers), terminal_topic_name(prefix)]:
            if not _NAME.fullmatch(name) or name.startswith("goog"):
                raise ValueError(
                    f"prefix {prefix!r} makes the invalid Pub/Sub name {name!r} (3-255 of "
                    "letters, digits, - _ . ~ + %, starting with a letter, not 'goog')"
                )
        self._next = {
            t: (tiers[i + 1] if i + 1 < len(tiers) else None) for i, t in enumerate(tiers)
        }
        self._tier_of_subscription = {subscription_name(prefix, t): t for t in tiers}
        self._tier_of_subscription.update(
            {self._subscription_path(t): t for t in tiers}  # in case a path is given
        )
        self._held: dict[str, _Held] = {}
        self._release_at_exit = False
        self._lock = threading.Lock()
        self._clients: tuple[int, Any, Any] | None = None  # (pid, publisher, subscriber)

    @property
    def url(self) -> str:
        return f"pubsub://{self.project}/{self.prefix}"

    def __repr__(self) -> str:
        return f"PubSubQueue({self.url!r}, tiers={self.tiers!r})"

    def _resolve_attempts(self, value: Mapping[str, int] | int | None) -> dict[str, int]:
        out = {}
        for t, n in delivery_attempts_by_tier(self.tiers, value).items():
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"max_delivery_attempts for {t!r} must be an int, got {n!r}")
            if not MIN_DELIVERY_ATTEMPTS <= n <= MAX_DELIVERY_ATTEMPTS:
                raise ValueError(
                    f"max_delivery_attempts for tier {t!r} must be {MIN_DELIVERY_ATTEMPTS}.."
                    f"{MAX_DELIVERY_ATTEMPTS} (Pub/Sub's dead-letter policy range), got {n}"
                )
            out[t] = n
        return out

    # A queue handed to a spawned process carries its settings, not its gRPC channels.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "prefix": self.prefix,
            "tiers": self.tiers,
            "max_delivery_attempts": dict(self.max_delivery_attempts),
            "ack_deadline_seconds": self.settings.ack_deadline_seconds,
            "message_retention_seconds": self.settings.message_retention_seconds,
            "retry_min_backoff_seconds": self.settings.retry_min_backoff_seconds,
            "retry_max_backoff_seconds": self.settings.retry_max_backoff_seconds,
            "pull_timeout_s": self.pull_timeout_s,
            "dead_letter_lease_s": self.dead_letter_lease_s,
            "publish_timeout_s": self.publish_timeout_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.__init__(state.pop("project"), state.pop("prefix"), state.pop("tiers"), **state)  # type: ignore[misc]

    def __enter__(self) -> PubSubQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients and names -----------------------------------------------------------------

    def _api(self) -> tuple[Any, Any]:
        """(publisher, subscriber) of this process: gRPC channels do not survive fork()."""
        from google.cloud import pubsub_v1

        with self._lock:
            pid = os.getpid()
            if self._clients is None or self._clients[0] != pid:
                publisher = pubsub_v1.PublisherClient(
                    batch_settings=pubsub_v1.types.BatchSettings(
                        max_messages=1000, max_bytes=9_000_000, max_latency=0.01
                    )
                )
                self._clients = (pid, publisher, pubsub_v1.SubscriberClient())
            return self._clients[1], self._clients[2]

    def _topic_id(self, tier: str) -> str:
        return topic_name(self.prefix, tier)

    def _topic_path(self, tier_or_terminal: str) -> str:
        if tier_or_terminal == TERMINAL:
            return f"projects/{self.project}/topics/{terminal_topic_name(self.prefix)}"
        self._check_tier(tier_or_terminal)
        return f"projects/{self.project}/topics/{self._topic_id(tier_or_terminal)}"

    def _subscription_path(self, tier_or_terminal: str) -> str:
        if tier_or_terminal == TERMINAL:
            name = terminal_subscription_name(self.prefix)
        else:
            name = subscription_name(self.prefix, tier_or_terminal)
        return f"projects/{self.project}/subscriptions/{name}"

    def _check_tier(self, tier: str) -> None:
        if tier not in self._next:
            raise ValueError(f"unknown tier {tier!r}; this queue has tiers {', '.join(self.tiers)}")

    def _missing(self, what: str, e: Exception) -> QueueNotCreated:
        return QueueNotCreated(
            f"{what} does not exist ({e.__class__.__name__}): create the queues with "
            f"`dvid2ng queues create --queue {self.url}` (or apply the Terraform)"
        )

    # -- Queue -----------------------------------------------------------------------------

    def publish(self, tier: str, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        return self.publish_many(tier, [(body, attributes or {})])[0]

    def publish_many(
        self, tier: str, messages: Iterable[tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        """Publish in the client's batches; waits for every message and raises PublishError
        if any failed (after all were tried: the error says how many went through)."""
        self._check_tier(tier)  # a tier, not the terminal queue (that is `forward`'s)
        return self._publish(self._topic_path(tier), messages)

    def _publish(
        self, topic: str, messages: Iterable[tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        checked = [(_check_body(b), _check_attributes(a)) for b, a in messages]  # all or none
        if not checked:
            return []
        publisher, _ = self._api()
        futures = [publisher.publish(topic, body, **attrs) for body, attrs in checked]
        ids: list[str] = []
        errors: list[BaseException] = []
        for f in futures:
            try:
                ids.append(f.result(timeout=self.publish_timeout_s))
            except Exception as e:  # keep waiting for the others: report them all at once
                errors.append(e)
        if errors:
            first = errors[0]
            if isinstance(first, gexc.NotFound):
                raise self._missing(f"topic {topic}", first) from first
            raise PublishError(
                f"{len(errors)} of {len(futures)} messages were not published to {topic} "
                f"({len(ids)} were): {type(first).__name__}: {first}"
            ) from first
        return ids

    def pull(
        self, tier: str, max_messages: int = 1, lease_seconds: float = MAX_LEASE_SECONDS
    ) -> list[Delivery]:
        self._check_tier(tier)
        subscription = self._subscription_path(tier)
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        lease = math.ceil(check_lease_seconds(lease_seconds))
        received = self._pull(subscription, max_messages)
        if received and lease != self.settings.ack_deadline_seconds:
            self._modify([r.ack_id for r in received], lease, subscription)
        return [self._delivery(tier, r) for r in received]

    def _pull(self, subscription: str, max_messages: int) -> list[Any]:
        _, subscriber = self._api()
        try:
            response = subscriber.pull(
                request={"subscription": subscription, "max_messages": int(max_messages)},
                timeout=self.pull_timeout_s,
            )
        except (gexc.DeadlineExceeded, gexc.RetryError):
            return []  # nothing came within pull_timeout_s
        except gexc.NotFound as e:
            raise self._missing(f"subscription {subscription}", e) from e
        return list(response.received_messages)

    def _delivery(self, tier: str, received: Any) -> Delivery:
        message = received.message
        attrs = dict(message.attributes)
        origin = self._backstop_origin(attrs)
        if origin:  # the dead-letter policy moved it here: report that hop like a forward
            attrs[FORWARDED_FROM] = origin
            attrs[FORWARD_REASON] = backstop_reason(
                origin, attrs.get(DEAD_LETTER_SOURCE_DELIVERY_COUNT)
            )
        return Delivery(
            message_id=message.message_id,
            tier=tier,
            body=bytes(message.data),
            ack_id=received.ack_id,
            attributes=attrs,
            attempt=int(received.delivery_attempt) or None,
        )

    def _backstop_origin(self, attrs: Mapping[str, str]) -> str:
        """The tier a message left through a dead-letter policy, or "" (not moved that way,
        or from a subscription that is not one of ours)."""
        source = attrs.get(DEAD_LETTER_SOURCE_SUBSCRIPTION)
        return self._tier_of_subscription.get(source, "") if source else ""

    def _modify(self, ack_ids: Sequence[str], seconds: int, subscription: str) -> None:
        _, subscriber = self._api()
        for i in range(0, len(ack_ids), _MODACK_CHUNK):
            try:
                subscriber.modify_ack_deadline(
                    request={
                        "subscription": subscription,
                        "ack_ids": list(ack_ids[i : i + _MODACK_CHUNK]),
                        "ack_deadline_seconds": int(seconds),
                    }
                )
            except gexc.InvalidArgument as e:
                if "ack" not in str(e).lower():  # an unknown / expired ack id is harmless
                    raise

    def _acknowledge(self, ack_ids: Sequence[str], subscription: str) -> None:
        _, subscriber = self._api()
        for i in range(0, len(ack_ids), _MODACK_CHUNK):
            try:
                subscriber.acknowledge(
                    request={
                        "subscription": subscription,
                        "ack_ids": list(ack_ids[i : i + _MODACK_CHUNK]),
                    }
                )
            except gexc.InvalidArgument as e:
                if "ack" not in str(e).lower():
                    raise

    def ack(self, delivery: Delivery) -> None:
        self._acknowledge([delivery.ack_id], self._subscription_path(delivery.tier))

    def nack(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        delay = math.ceil(check_nack_delay(delay_seconds))
        self._modify([delivery.ack_id], delay, self._subscription_path(delivery.tier))

    def extend(self, delivery: Delivery, seconds: float) -> None:
        seconds = math.ceil(check_lease_seconds(seconds, "extend"))
        self._modify([delivery.ack_id], seconds, self._subscription_path(delivery.tier))

    def forward(self, delivery: Delivery, to: str, reason: str) -> str:
        """Publish on `to` (a tier or TERMINAL) with the origin tier and the reason, then ack.
        Pub/Sub's attributes of an earlier dead-letter hop are dropped: `forwarded_from` now
        says where the message was last."""
        topic = self._topic_path(to)
        attrs = _without_dead_letter_attributes(delivery.attributes)
        attrs[FORWARDED_FROM] = delivery.tier
        attrs[FORWARD_REASON] = _clip_utf8(str(reason), MAX_ATTRIBUTE_VALUE_BYTES)
        [new_id] = self._publish(topic, [(delivery.body, attrs)])
        self.ack(delivery)
        return new_id

    def close(self) -> None:
        """Give back the dead letters still leased by `dead_letters()` and close the clients."""
        with contextlib.suppress(Exception):
            self.release_dead_letters()
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is None or clients[0] != os.getpid():
            return
        _, publisher, subscriber = clients
        with contextlib.suppress(Exception):
            publisher.stop()
        with contextlib.suppress(Exception):
            publisher.transport.close()
        with contextlib.suppress(Exception):
            subscriber.close()

    # -- QueueAdmin ------------------------------------------------------------------------

    def depth(self, tier: str) -> int | None:
        """None: Pub/Sub reports a subscription's backlog only through Cloud Monitoring
        (`pubsub.googleapis.com/subscription/num_undelivered_messages`, a minute or more
        late), not through the Pub/Sub API. `status` counts shards in the state instead."""
        if tier != TERMINAL:
            self._check_tier(tier)
        return None

    def dead_letters(self, max_messages: int = 1000) -> list[DeadLetter]:
        """Dead letters, oldest publish time first, de-duplicated by message id.

        They are pulled from the terminal subscription and stay leased by this queue object
        for `dead_letter_lease_s` (extended on each call), so that `replay` can remove them
        and a second call lists them again; `close()` or `release_dead_letters()` gives the
        rest back at once. While leased here, other processes do not see them.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        subscription = self._subscription_path(TERMINAL)
        lease = math.ceil(self.dead_letter_lease_s)
        now = time.monotonic()
        with self._lock:
            self._held = {k: h for k, h in self._held.items() if h.expires > now + 1}
            held = dict(self._held)
        if held:  # still ours: keep the handles valid for another lease
            self._modify([a for h in held.values() for a in h.ack_ids], lease, subscription)
            for h in held.values():
                h.expires = now + lease
        empty = 0
        while len(held) < max_messages and empty < DEAD_LETTER_EMPTY_PULLS:
            batch = self._pull(subscription, min(1000, max_messages - len(held)))
            if not batch:  # a unary pull may come back empty while messages wait: ask again
                empty += 1
                continue
            empty = 0
            self._modify([r.ack_id for r in batch], lease, subscription)
            for r in batch:
                mid = r.message.message_id
                if mid in held:  # a duplicate delivery: one letter, both leases
                    held[mid].ack_ids.append(r.ack_id)
                    continue
                held[mid] = _Held(
                    letter=self._letter(r.message),
                    ack_ids=[r.ack_id],
                    publish_time=_publish_time(r.message),
                    expires=now + lease,
                )
        with self._lock:
            self._held.update(held)
            if held and not self._release_at_exit:  # a CLI that exits without close()
                self._release_at_exit = True
                atexit.register(_release_at_exit, weakref.ref(self))
        ordered = sorted(held.values(), key=lambda h: (h.publish_time, h.letter.message_id))
        return [
            DeadLetter(
                message_id=h.letter.message_id,
                body=h.letter.body,
                from_tier=h.letter.from_tier,
                reason=h.letter.reason,
                attributes=h.letter.attributes,
                handle=json.dumps(h.ack_ids),
            )
            for h in ordered[:max_messages]
        ]

    def _letter(self, message: Any) -> DeadLetter:
        attrs = dict(message.attributes)
        origin = self._backstop_origin(attrs)
        if origin:
            from_tier = origin
            reason = backstop_reason(origin, attrs.get(DEAD_LETTER_SOURCE_DELIVERY_COUNT))
        else:
            from_tier = attrs.get(FORWARDED_FROM, "")
            reason = attrs.get(FORWARD_REASON, "")
        return DeadLetter(
            message_id=message.message_id,
            body=bytes(message.data),
            from_tier=from_tier,
            reason=reason,
            attributes=attrs,
        )

    def release_dead_letters(self) -> int:
        """Give back every dead letter this object holds (they become visible to others)."""
        with self._lock:
            held, self._held = self._held, {}
        ack_ids = [a for h in held.values() if h.expires > time.monotonic() for a in h.ack_ids]
        if ack_ids:
            self._modify(ack_ids, 0, self._subscription_path(TERMINAL))
        return len(held)

    def replay(self, letter: DeadLetter, to_tier: str, body: bytes | None = None) -> str:
        """Publish the dead letter (or `body` in its place) on `to_tier`, clean of forward and
        dead-letter attributes, then ack it in the terminal subscription. Needs the lease of a
        `dead_letters()` call of this process that has not run out (KeyError otherwise)."""
        topic = self._topic_path(to_tier)
        if to_tier == TERMINAL:
            raise ValueError("replay needs a tier, not the terminal queue")
        try:
            ack_ids = [str(a) for a in json.loads(letter.handle)] if letter.handle else []
        except (ValueError, TypeError):
            ack_ids = []
        if not ack_ids:
            raise KeyError(f"dead letter {letter.message_id} has no lease: list it first")
        with self._lock:
            held = self._held.get(letter.message_id)
        if held is not None and held.expires <= time.monotonic():
            raise KeyError(
                f"the lease on dead letter {letter.message_id} ran out: list the dead letters "
                "again, then replay"
            )
        attrs = {
            k: v
            for k, v in _without_dead_letter_attributes(letter.attributes).items()
            if k not in (FORWARDED_FROM, FORWARD_REASON)
        }
        [new_id] = self._publish(topic, [(letter.body if body is None else body, attrs)])
        self._acknowledge(ack_ids, self._subscription_path(TERMINAL))
        with self._lock:
            self._held.pop(letter.message_id, None)
        return new_id

    # -- infrastructure ---------------------------------------------------------------------

    def _subscription_spec(self, tier_or_terminal: str) -> dict[str, Any]:
        s = self.settings
        terminal = tier_or_terminal == TERMINAL
        retention = (
            s.terminal_message_retention_seconds if terminal else s.message_retention_seconds
        )
        if os.environ.get("PUBSUB_EMULATOR_HOST"):  # the emulator refuses what production takes
            retention = min(retention, EMULATOR_MAX_RETENTION_S)
        spec: dict[str, Any] = {
            "name": self._subscription_path(tier_or_terminal),
            "topic": self._topic_path(tier_or_terminal),
            "ack_deadline_seconds": s.ack_deadline_seconds,
            # dead letters wait for an operator: kept as long as Pub/Sub allows (as Terraform)
            "message_retention_duration": timedelta(seconds=retention),
            "expiration_policy": {},  # never expire (the default deletes idle ones after 31 days)
        }
        # The terminal subscription has no retry policy (as in Terraform): `dlq list` gives
        # what it leased back with an ack deadline of 0, and a retry policy would hide each
        # letter for its backoff (10 s, doubling with every listing, up to 600 s), so that
        # `dlq list` followed by `dlq replay` found nothing to replay.
        if s.retry_max_backoff_seconds > 0 and not terminal:  # 0..0: no retry policy
            spec["retry_policy"] = {
                "minimum_backoff": timedelta(seconds=s.retry_min_backoff_seconds),
                "maximum_backoff": timedelta(seconds=s.retry_max_backoff_seconds),
            }
        if tier_or_terminal != TERMINAL:
            nxt = self._next[tier_or_terminal]
            spec["dead_letter_policy"] = {
                "dead_letter_topic": self._topic_path(nxt if nxt else TERMINAL),
                "max_delivery_attempts": self.max_delivery_attempts[tier_or_terminal],
            }
        return spec

    def create(self) -> list[str]:
        """Make every topic and subscription (idempotent: existing ones are left as they are;
        run `check()` to compare them with the tier table). Returns what it did, one line
        each. Production IAM (the Pub/Sub service agent must publish to each dead-letter
        topic and subscribe to each tier subscription) is Terraform's: the emulator has none."""
        publisher, subscriber = self._api()
        done: list[str] = []
        for target in [*self.tiers, TERMINAL]:
            topic = self._topic_path(target)
            try:
                publisher.create_topic(request={"name": topic})
                done.append(f"created topic {topic}")
            except gexc.AlreadyExists:
                done.append(f"exists: topic {topic}")
        for target in [*self.tiers, TERMINAL]:
            spec = self._subscription_spec(target)
            try:
                subscriber.create_subscription(request=spec)
                line = f"created subscription {spec['name']}"
                if "dead_letter_policy" in spec:
                    dlp = spec["dead_letter_policy"]
                    line += (
                        f" (after {dlp['max_delivery_attempts']} deliveries -> "
                        f"{dlp['dead_letter_topic']})"
                    )
                done.append(line)
            except gexc.AlreadyExists:
                done.append(f"exists: subscription {spec['name']}")
        return done

    def check(self) -> list[str]:
        """Every difference between the topics / subscriptions that exist and the tier table,
        one human-readable line each; empty when everything matches."""
        publisher, subscriber = self._api()
        problems: list[str] = []
        for target in [*self.tiers, TERMINAL]:
            topic = self._topic_path(target)
            try:
                publisher.get_topic(request={"topic": topic})
            except gexc.NotFound:
                problems.append(f"missing topic {topic}")
        for target in [*self.tiers, TERMINAL]:
            want = self._subscription_spec(target)
            try:
                got = subscriber.get_subscription(request={"subscription": want["name"]})
            except gexc.NotFound:
                problems.append(f"missing subscription {want['name']}")
                continue
            problems += _subscription_problems(want, got)
        return problems


def _subscription_problems(want: Mapping[str, Any], got: Any) -> list[str]:
    name = want["name"]
    out = []
    if got.topic != want["topic"]:
        out.append(f"subscription {name} reads topic {got.topic}, expected {want['topic']}")
    if got.ack_deadline_seconds != want["ack_deadline_seconds"]:
        out.append(
            f"subscription {name} has ack deadline {got.ack_deadline_seconds} s, expected "
            f"{want['ack_deadline_seconds']} s"
        )
    retention = _seconds(got.message_retention_duration)
    if retention != want["message_retention_duration"].total_seconds():
        out.append(
            f"subscription {name} retains messages {retention:g} s, expected "
            f"{want['message_retention_duration'].total_seconds():g} s"
        )
    got_rp = (0.0, 0.0)
    if "retry_policy" in got:
        got_rp = (
            _seconds(got.retry_policy.minimum_backoff),
            _seconds(got.retry_policy.maximum_backoff),
        )
    want_rp = (0.0, 0.0)
    if "retry_policy" in want:
        rp = want["retry_policy"]
        want_rp = (rp["minimum_backoff"].total_seconds(), rp["maximum_backoff"].total_seconds())
    if got_rp != want_rp:
        out.append(
            f"subscription {name} retries after {got_rp[0]:g}..{got_rp[1]:g} s, expected "
            f"{want_rp[0]:g}..{want_rp[1]:g} s (0..0: no retry policy, redeliver at once)"
        )
    ttl = _seconds(got.expiration_policy.ttl) if "expiration_policy" in got else 31 * 86400.0
    if ttl:
        out.append(
            f"subscription {name} is deleted after {ttl / 86400:g} days without a pull; it "
            "must never expire (expiration_policy without ttl)"
        )
    if got.filter:
        out.append(
            f"subscription {name} has the filter {got.filter!r}: Pub/Sub acknowledges the "
            "messages it does not match, so those shards would be lost"
        )
    if got.push_config.push_endpoint:
        out.append(f"subscription {name} pushes to {got.push_config.push_endpoint}; workers pull")
    want_dlp = want.get("dead_letter_policy")
    got_dlp = got.dead_letter_policy if "dead_letter_policy" in got else None
    if want_dlp is None:
        if got_dlp is not None and got_dlp.dead_letter_topic:
            out.append(
                f"terminal subscription {name} forwards to {got_dlp.dead_letter_topic}: dead "
                "letters must stay where `dlq` finds them"
            )
    elif got_dlp is None or not got_dlp.dead_letter_topic:
        out.append(
            f"subscription {name} has no dead-letter policy: a shard that keeps failing "
            f"would never leave it (expected -> {want_dlp['dead_letter_topic']} after "
            f"{want_dlp['max_delivery_attempts']} deliveries)"
        )
    else:
        if got_dlp.dead_letter_topic != want_dlp["dead_letter_topic"]:
            out.append(
                f"subscription {name} dead-letters to {got_dlp.dead_letter_topic}, expected "
                f"{want_dlp['dead_letter_topic']}"
            )
        if got_dlp.max_delivery_attempts != want_dlp["max_delivery_attempts"]:
            out.append(
                f"subscription {name} dead-letters after {got_dlp.max_delivery_attempts} "
                f"deliveries, expected {want_dlp['max_delivery_attempts']}"
            )
    return out


def _release_at_exit(ref: weakref.ref[PubSubQueue]) -> None:
    """Give back the dead letters a process still holds when it exits (a `dlq list` that
    never called close() would hide them from everyone else for the rest of the lease)."""
    queue = ref()
    if queue is not None:
        with contextlib.suppress(Exception):
            queue.release_dead_letters()


def _publish_time(message: Any) -> float:
    t = getattr(message, "publish_time", None)
    try:
        return t.timestamp() if t is not None else 0.0
    except (AttributeError, ValueError, OSError):
        return 0.0

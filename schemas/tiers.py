"""Memory tiers: the one source of truth for queue names, worker sizes and escalation order.

The CLI, the workers, the embedded queue and (in a later issue) Terraform all read this table.
A message that keeps failing on one tier is redelivered to the next one; after the last tier it
goes to the terminal dead-letter queue.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tier:
    name: str  # queue / topic suffix, e.g. "t4gi"
    memory_gib: int
    vcpu: int
    max_delivery_attempts: int  # Pub/Sub allows 5..100; the embedded queue follows the same rule


TIERS: tuple[Tier, ...] = (
    Tier("t2gi", 2, 1, 5),
    Tier("t4gi", 4, 2, 5),
    Tier("t8gi", 8, 2, 5),
    Tier("t16gi", 16, 4, 5),
    Tier("t32gi", 32, 8, 5),
)

DEAD_LETTER_QUEUE = "dead-letter"


def tier_names() -> tuple[str, ...]:
    return tuple(t.name for t in TIERS)


def tier_by_name(name: str) -> Tier:
    for t in TIERS:
        if t.name == name:
            return t
    raise KeyError(f"unknown tier {name!r}; known tiers: {', '.join(tier_names())}")


def next_tier(name: str) -> str | None:
    """The tier a message escalates to after exhausting its attempts on `name` (None: dead letter)."""
    names = tier_names()
    i = names.index(name)
    return names[i + 1] if i + 1 < len(names) else None


def pick_tier(estimated_bytes: int) -> str:
    """Smallest tier whose memory holds the estimate with 2x headroom."""
    for t in TIERS:
        if estimated_bytes * 2 <= t.memory_gib * 2**30:
            return t.name
    return TIERS[-1].name

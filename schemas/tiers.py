"""Memory tiers: queue names, worker sizes and escalation order.

The table is in `schemas/json/fleet.json` (see `dvid2ng.schemas.fleet`), which the CLI, the
workers, the embedded queue and Terraform all read. A message that keeps failing on one tier is
redelivered to the next one; after the last tier it goes to the terminal dead-letter queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from dvid2ng.schemas.fleet import cloud_run_size_problem, fleet_config


@dataclass(frozen=True)
class Tier:
    name: str  # queue / topic suffix, e.g. "t4gi"
    memory_gib: int
    vcpu: int
    max_delivery_attempts: int  # Pub/Sub allows 5..100; the embedded queue follows the same rule


def _load_tiers() -> tuple[Tier, ...]:
    tiers = tuple(Tier(**t) for t in fleet_config()["tiers"])
    for t in tiers:  # a wrong table must fail on import, not at `terraform apply`
        problem = cloud_run_size_problem(t.memory_gib, t.vcpu)
        if problem:
            raise ValueError(f"fleet.json tier {t.name}: {problem}")
        if not 5 <= t.max_delivery_attempts <= 100:
            raise ValueError(f"fleet.json tier {t.name}: Pub/Sub allows 5..100 delivery attempts")
    if [t.memory_gib for t in tiers] != sorted({t.memory_gib for t in tiers}):
        raise ValueError("fleet.json tiers must grow in memory, each larger than the last")
    return tiers


TIERS: tuple[Tier, ...] = _load_tiers()

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

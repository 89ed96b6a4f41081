"""Names the Python code shares with the infrastructure: tiers, Pub/Sub topics and
subscriptions, Firestore collections and indexes, the environment the worker reads.

They live in `schemas/json/fleet.json`, which Terraform reads too (`jsondecode(file(...))`), so
there is exactly one place to change a name; tests check that both sides agree.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

FLEET_JSON = Path(__file__).parent / "json" / "fleet.json"

# Cloud Run's rule for memory per vCPU (instance size limits): the least vCPU a memory size needs.
CLOUD_RUN_MIN_VCPU_FOR_GIB = ((4, 1), (8, 2), (16, 4), (24, 6), (32, 8))
CLOUD_RUN_VCPU_CHOICES = (1, 2, 4, 6, 8)


@functools.cache
def fleet_config() -> dict[str, Any]:
    return json.loads(FLEET_JSON.read_text())


def min_vcpu_for(memory_gib: float) -> int:
    """The fewest vCPUs Cloud Run allows with `memory_gib` of memory."""
    for limit, vcpu in CLOUD_RUN_MIN_VCPU_FOR_GIB:
        if memory_gib <= limit:
            return vcpu
    raise ValueError(f"Cloud Run instances have at most 32 GiB, not {memory_gib}")


def cloud_run_size_problem(memory_gib: float, vcpu: int) -> str | None:
    """Why (memory, vCPU) is not an instance size Cloud Run accepts, or None."""
    if vcpu not in CLOUD_RUN_VCPU_CHOICES:
        return f"{vcpu} vCPU is not one of Cloud Run's {CLOUD_RUN_VCPU_CHOICES}"
    try:
        need = min_vcpu_for(memory_gib)
    except ValueError as e:
        return str(e)
    if vcpu < need:
        return f"{memory_gib} GiB needs at least {need} vCPU on Cloud Run, not {vcpu}"
    return None


def topic_name(prefix: str, tier: str) -> str:
    return fleet_config()["pubsub"]["topic"].format(prefix=prefix, tier=tier)


def subscription_name(prefix: str, tier: str) -> str:
    return fleet_config()["pubsub"]["subscription"].format(prefix=prefix, tier=tier)


def terminal_topic_name(prefix: str) -> str:
    return fleet_config()["pubsub"]["terminal_topic"].format(prefix=prefix)


def terminal_subscription_name(prefix: str) -> str:
    return fleet_config()["pubsub"]["terminal_subscription"].format(prefix=prefix)


def env_name(what: str) -> str:
    """The environment variable for `what` (a key of fleet.json's "env")."""
    return fleet_config()["env"][what]

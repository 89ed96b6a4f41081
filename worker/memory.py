"""Peak resident memory per shard (Linux): reset the high-water mark, read it back later."""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset (or since start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cgroup_memory_limit_bytes(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit (cgroup v2 `memory.max`, else v1), None when unlimited."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        # cgroup v1 reports "no limit" as a huge page-aligned number near 2^63
        return None if value >= 1 << 60 else value
    return None


def memory_budget_bytes(env: dict[str, str] | None = None) -> int | None:
    """What this worker may use: DVID2NG_MEMORY_BUDGET_BYTES (set per tier by the deployment),
    else the cgroup limit, else None (unknown: no shard is refused for its size)."""
    import os

    from dvid2ng.schemas.fleet import env_name

    value = (os.environ if env is None else env).get(env_name("memory_budget_bytes"), "")
    if value.strip():
        try:
            budget = int(value)
        except ValueError:
            raise ValueError(
                f"{env_name('memory_budget_bytes')}={value!r} is not a whole number of bytes"
            ) from None
        if budget <= 0:
            raise ValueError(f"{env_name('memory_budget_bytes')} must be positive, got {budget}")
        return budget
    return cgroup_memory_limit_bytes()

"""How many CPUs this worker may use: the container's CPU quota, not the host's core count.

Cloud Run (and Docker, Kubernetes) limit a container's CPU with a cgroup quota while
`os.cpu_count()` still reports every core of the host, so a worker that sized its thread pool
by the host would run dozens of threads on one or two paid vCPUs. The order of precedence:

1. `--threads N` (handled by the caller) or $DVID2NG_THREADS;
2. the cgroup quota: v2 `cpu.max` ("max 100000" = none, "200000 100000" = 2 CPUs), v1
   `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1 = none), rounded up (1.5 CPUs -> 2 threads:
   the half CPU is paid for too);
3. the CPUs this process may be scheduled on (`os.sched_getaffinity`, which honours
   `taskset` and cpusets), never more than that.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroups(proc_cgroup: str | None) -> tuple[str, str]:
    """(v2 path, v1 cpu controller path) of this process, from /proc/self/cgroup ("/" when
    absent): `0::/PATH` is the v2 line, `N:cpu,cpuacct:/PATH` the v1 cpu controller's."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    v2 = v1 = "/"
    for line in proc_cgroup.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not controllers and line.startswith("0:"):
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _up_from(mount: Path, path: str) -> list[Path]:
    """The folders of cgroup `path` and of its ancestors that exist under `mount`, own first.
    Inside a container the mount usually is the container's own cgroup already (its path
    then does not exist below it and only the mount itself is left); on a host, or without a
    cgroup namespace, the path leads to it. Every ancestor's quota limits the process too."""
    parts = [p for p in path.split("/") if p]
    folders = [mount.joinpath(*parts[:n]) for n in range(len(parts), 0, -1)] + [mount]
    return [f for f in folders if f.is_dir()]


def _v2_quota(folder: Path) -> float | None:
    quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
    if quota == "max":
        return None
    q, p = int(quota), int(period or 100_000)
    return q / p if q > 0 and p > 0 else None


def _v1_quota(folder: Path) -> float | None:
    q = int((folder / "cpu.cfs_quota_us").read_text().strip())
    p = int((folder / "cpu.cfs_period_us").read_text().strip())
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """CPUs allowed by the cgroup quota (may be fractional), or None when there is none: the
    smallest quota of this process's cgroup and its ancestors, v2 (`cpu.max`) if the cpu
    controller is there, else v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`)."""
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    for reader, mounts, path in (
        (_v2_quota, [root], v2_path),
        (_v1_quota, [root / "cpu", root / "cpu,cpuacct", root], v1_path),
    ):
        found, quotas = False, []
        for mount in mounts:
            for folder in _up_from(mount, path):
                try:
                    quota = reader(folder)
                except (OSError, ValueError):
                    continue  # no such file here: not this version, or not this controller
                found = True
                if quota is not None:
                    quotas.append(quota)
            if found:
                break
        if found:
            return min(quotas) if quotas else None
    return None


def schedulable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process can use: the cgroup quota rounded up, capped by the affinity."""
    cpus = schedulable_cpus()
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return cpus


def threads_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """$DVID2NG_THREADS as a positive int, None when unset or empty; ValueError when invalid."""
    from dvid2ng.schemas.fleet import env_name

    name = env_name("threads")
    text = (os.environ if env is None else env).get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number of threads") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def default_threads(env: Mapping[str, str] | None = None, root: Path = CGROUP_ROOT) -> int:
    """$DVID2NG_THREADS, else every CPU the container may use."""
    return threads_from_env(env) or available_cpus(root)


def split_cpus(cpus: int, workers: int) -> int:
    """Threads per worker process so that workers x threads ~= cpus (never below 1).

    With more workers than CPUs each gets one thread (the processes then share cores, as
    they did before threads); a remainder is left to the supervisor and the OS."""
    return max(1, cpus // max(1, workers))

"""What a worker and its supervisors share: the error kinds a worker records and its timing.

Apart from worker/loop.py so that a supervisor (`dvid2ng run`, `dvid2ng status`) can use them
without importing the converter, and with it Numba (~0.5 s): the embedded run's supervisor
plans while its worker processes import and load the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

# Error kinds recorded in the state (ShardRecord.error["kind"]).
KIND_INPUT = "input"  # bad bytes or a bad message: terminal at once
KIND_DISK_FULL = "disk-full"  # terminal at once: more memory does not help
KIND_MEMORY = "memory"  # MemoryError: next tier at once
KIND_DIED = "died"  # the attempt stopped without a word (OOM kill, SIGKILL): next tier at once
KIND_TRANSIENT = "transient"  # retried on this tier, with backoff
KIND_INTERRUPTED = "interrupted"  # asked to stop; released
KIND_TOO_BIG = "too-big"  # the shard's estimate exceeds this worker's memory budget
DEATH_KINDS = (KIND_MEMORY, KIND_DIED)


@dataclass(frozen=True)
class WorkerTiming:
    """How often a worker proves it is alive, and what counts as dead.

    A killed worker stops heartbeats and lease extensions; its message comes back after at
    most `lease_seconds`, by which time its heartbeat is older than `stale_after_s`, so the
    next delivery sees the death. Hence stale_after_s < lease_seconds, both well above the
    heartbeat interval."""

    heartbeat_seconds: float = 30.0
    lease_seconds: float = 120.0
    stale_after_s: float = 95.0
    retry_base_seconds: float = 10.0  # transient failures: base * 2^(attempt-1), capped
    retry_max_seconds: float = 600.0
    held_delay_seconds: float = 60.0  # another worker has the shard: look again later
    unsupported_delay_seconds: float = 300.0  # a newer task kind: let an upgraded worker have it
    idle_backoff_seconds: float = 2.0  # empty pulls
    backend_retry_seconds: float = 5.0  # a backend call failed

    def __post_init__(self) -> None:
        if not self.heartbeat_seconds * 2 < self.stale_after_s < self.lease_seconds <= 600:
            raise ValueError(
                "need 2 x heartbeat_seconds < stale_after_s < lease_seconds <= 600, got "
                f"{self.heartbeat_seconds}, {self.stale_after_s}, {self.lease_seconds}"
            )

    def retry_delay(self, attempt: int | None) -> float:
        n = max(1, attempt or 1)
        return min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (n - 1))


CLOUD_TIMING = WorkerTiming()

"""Process entry points for the multi-process contract tests (importable under `spawn`).

Kept free of pytest and fixtures so a spawned child imports only this and the backend.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from typing import Any


def drain_queue(
    open_queue: Callable[[], Any],
    tier: str,
    worker: int,
    barrier: Any,
    results: Any,
    lease_s: float = 300.0,
    empty_pulls_to_stop: int = 3,
) -> None:
    """Pull random-sized batches until the tier looks empty; ack everything; report deliveries."""
    try:
        q = open_queue()
        rng = random.Random(worker)
        got: list[tuple[str, bytes, int]] = []
        barrier.wait(timeout=60)
        empty = 0
        while empty < empty_pulls_to_stop:
            batch = q.pull(tier, max_messages=rng.randint(1, 8), lease_seconds=lease_s)
            if not batch:
                empty += 1
                time.sleep(0.01)
                continue
            empty = 0
            for d in batch:
                got.append((d.message_id, d.body, d.attempt))
            for d in batch:
                q.ack(d)
        getattr(q, "close", lambda: None)()
        results.put((worker, got, None))
    except BaseException:
        results.put((worker, [], traceback.format_exc()))


def race_claims(
    open_state: Callable[[], Any],
    run_id: str,
    keys: list[str],
    worker: str,
    barrier: Any,
    results: Any,
) -> None:
    """Try to claim every key (in a worker-specific order); report the keys this worker won."""
    try:
        s = open_state()
        order = list(keys)
        random.Random(worker).shuffle(order)
        barrier.wait(timeout=60)
        won = []
        for key in order:
            if s.claim(run_id, key, worker, "t2gi", stale_after_s=3600.0).ok:
                won.append(key)
        getattr(s, "close", lambda: None)()
        results.put((worker, won, None))
    except BaseException:
        results.put((worker, [], traceback.format_exc()))


def create_and_publish(path: str, tier: str, n: int, barrier: Any, results: Any) -> None:
    """Open (creating) a queue file at the same moment as other processes, then publish."""
    try:
        from dvid2ng.backends.sqlite_queue import SqliteQueue
        from dvid2ng.backends.sqlite_state import SqliteStateStore

        barrier.wait(timeout=60)
        q = SqliteQueue(path + ".queue", max_delivery_attempts=2)
        s = SqliteStateStore(path + ".state")
        for i in range(n):
            q.publish(tier, b"%d" % i)
        s.put_run("r", {"n": n})
        q.close()
        s.close()
        results.put((path, n, None))
    except BaseException:
        results.put((path, 0, traceback.format_exc()))

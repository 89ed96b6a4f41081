"""The Google backends against the real emulators: publish rate, status latency, per-shard
overhead.

    .venv/bin/python bench/bench_fleet_backends.py [--shards 26000] [--overhead-shards 40]

Starts the Pub/Sub and Firestore emulators itself (tests/emulators.py; stopped on exit) and
prints one table:
* publish: `publish_many` of N shard task messages (real `ShardTask` JSON with the fleet's
  attributes) to one tier topic, the client's batching, every future awaited;
* status: N shard documents planned with the batched writer (`plan`, 500 creates a commit)
  in the status mix of a run in progress (scales and tiers as the mCNS export), then
  `summary()`, `finished_since()` and `list(status=running, limit=20)`, best of --repeat, with
  the number of queries each sent;
* overhead: per shard, the calls a worker makes besides converting (pull, claim, heartbeat +
  extend, finish, ack), mean ms each, against converting a full s0 shard (32,768 chunks at
  ~1,650 chunks/s per core, docs/performance.md: about 20 s).

Emulator numbers, not production ones: both emulators are single JVMs on loopback, and the
Firestore emulator scans a collection for every query (it keeps no indexes), so its query
latency grows with the shards of the run while production's grows with the index entries a
query reads. The query counts are what carries over.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

S0_SHARD_CHUNKS = 32768
S0_CHUNKS_PER_S = 1650  # docs/performance.md, generated s0-like shard, one core
BENCH_JAVA_OPTIONS = "-Xmx1g -XX:+UseSerialGC"  # 26,000 documents overflow the tests' 256 MB
HEARTBEAT_S = 30.0  # worker.loop.CLOUD_TIMING.heartbeat_seconds
# Files per scale of the mCNS v0.11 export (formats.md 16.1), scaled to --shards.
MCNS_FILES = [21994, 3364, 606, 123, 25, 8, 2, 2, 2, 2]


def task_message(run: str, scale: int, shard: int, tier: str) -> tuple[bytes, dict[str, str]]:
    from dvid2ng.schemas.task import ShardTask, SourceObject

    name = f"{shard:05x}"
    task = ShardTask(
        run_id=run,
        scale=scale,
        shard=shard,
        shard_name=name,
        kind="transcode",
        sources=(
            SourceObject(
                arrow=f"gs://mcns-export/v0.11/s{scale}/{name}.arrow",
                csv=f"gs://mcns-export/v0.11/s{scale}/{name}.csv",
                size=135_000_000,
                generation="1774000000000000",
            ),
        ),
        dest="gs://mcns-ng/v0.11/segmentation",
        tier=tier,
        chunks_expected=23210,
        memory_bytes=900_000_000,
    )
    attrs = {
        "run": run,
        "scale": str(scale),
        "shard": str(shard),
        "key": task.key,
        "tier": tier,
        "kind": task.kind,
    }
    return task.to_json(), attrs


def run_mix(n: int, run: str, seed: int = 1) -> list:
    """N shard records of a run about 60% through: done / empty / running / failed / queued."""
    from dvid2ng.backends.base import ShardRecord, ShardStatus

    rng = random.Random(seed)
    total = sum(MCNS_FILES)
    per_scale = [max(1, round(n * f / total)) for f in MCNS_FILES]
    per_scale[0] += n - sum(per_scale)
    now = time.time()
    out = []
    for scale, count in enumerate(per_scale):
        for i in range(count):
            r = rng.random()
            status = (
                ShardStatus.DONE if r < 0.55 else ShardStatus.EMPTY if r < 0.60
                else ShardStatus.RUNNING if r < 0.64 else ShardStatus.FAILED if r < 0.645
                else ShardStatus.QUEUED
            )  # fmt: skip
            tier = (
                "t2gi"
                if scale == 0 and rng.random() < 0.97
                else rng.choice(["t4gi", "t8gi", "t16gi"])
            )
            started = now - rng.uniform(60, 3600) if status is not ShardStatus.QUEUED else 0.0
            out.append(
                ShardRecord(
                    run_id=run,
                    key=f"s{scale}/{i:05x}",
                    scale=scale,
                    shard=i,
                    status=status,
                    tier=tier,
                    attempts=0 if status is ShardStatus.QUEUED else 1,
                    worker="" if status is ShardStatus.QUEUED else f"w-{rng.randrange(500)}",
                    chunks_expected=rng.randint(1000, 32768),
                    chunks_done=rng.randint(0, 32768) if started else 0,
                    chunks_written=rng.randint(0, 30000) if status.finished else 0,
                    bytes_written=rng.randint(0, 400_000_000) if status.finished else 0,
                    started_at=started,
                    finished_at=started + rng.uniform(5, 60) if status.finished else 0.0,
                    heartbeat_at=now - rng.uniform(0, 30) if status is ShardStatus.RUNNING else 0.0,
                )
            )
    return out


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def bench_publish(project: str, n: int) -> dict:
    from dvid2ng.backends.pubsub_queue import PubSubQueue

    q = PubSubQueue(project, "bench")
    q.create()
    msgs = [task_message("bench-run", 0, i, "t2gi") for i in range(n)]
    t = time.perf_counter()
    ids = q.publish_many("t2gi", msgs)
    seconds = time.perf_counter() - t
    assert len(set(ids)) == n
    q.close()
    body = statistics.mean(len(b) for b, _ in msgs)
    return {"n": n, "seconds": seconds, "rate": n / seconds, "body_bytes": body}


def bench_status(project: str, n: int, repeat: int) -> dict:
    from dvid2ng.backends.base import ShardStatus
    from dvid2ng.backends.firestore_state import FirestoreStateStore
    from tests.backends.firestore_recorder import QueryRecorder

    store = FirestoreStateStore(project)
    run = "bench-run"
    records = run_mix(n, run)
    t = time.perf_counter()
    created = store.plan(records)
    plan_s = time.perf_counter() - t
    assert created == n, created
    out = {"n": n, "plan_s": plan_s}
    calls = {
        "summary()": lambda: store.summary(run),
        "finished_since()": lambda: store.finished_since(run, time.time() - 1800),
        "list(status=running, limit=20)": lambda: store.list(
            run, status=ShardStatus.RUNNING, limit=20
        ),
    }
    for name, fn in calls.items():
        with QueryRecorder(store.client) as rec:
            seconds, result = best_of(repeat, fn)
        out[name] = (seconds, len(rec.queries) // repeat)
        if name == "summary()":
            out["groups"] = len(result)
            assert sum(r.shards for r in result) == n
    store.close()
    return out


def bench_overhead(ps_project: str, fs_project: str, n: int) -> dict[str, float]:
    from dvid2ng.backends.base import ShardRecord, ShardStatus
    from dvid2ng.backends.firestore_state import FirestoreStateStore
    from dvid2ng.backends.pubsub_queue import PubSubQueue

    q = PubSubQueue(ps_project, "overhead")
    q.create()
    store = FirestoreStateStore(fs_project)
    run = "overhead-run"
    store.plan([ShardRecord(run, f"s0/{i:05x}", 0, i, tier="t2gi") for i in range(n)])
    q.publish_many("t2gi", [task_message(run, 0, i, "t2gi") for i in range(n)])
    times: dict[str, list[float]] = {
        k: [] for k in ("pull", "claim", "heartbeat", "extend", "finish", "ack")
    }

    def timed(name: str, fn: Callable[[], object]) -> object:
        t = time.perf_counter()
        result = fn()
        times[name].append(time.perf_counter() - t)
        return result

    def one_shard(d) -> None:
        key = d.attributes["key"]
        claim = timed("claim", lambda: store.claim(run, key, "bench-worker", "t2gi", 95))
        assert claim.ok, claim
        timed("heartbeat", lambda: store.heartbeat(run, key, claim.token, 100))
        timed("extend", lambda: q.extend(d, 120))
        metrics = {"chunks_done": 32768, "chunks_written": 30000, "bytes_written": 150_000_000,
                   "peak_rss_bytes": 450_000_000}  # fmt: skip
        timed("finish", lambda: store.finish(run, key, claim.token, ShardStatus.DONE, **metrics))
        timed("ack", lambda: q.ack(d))

    done = 0
    while done < n:
        got = timed("pull", lambda: q.pull("t2gi", 1, 120))
        if not got:
            times["pull"].pop()  # an empty pull waited for nothing: not per-shard work
            continue
        one_shard(got[0])
        done += 1
    q.close()
    store.close()
    return {k: statistics.mean(v) * 1000 for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=26000, help="messages and shard documents")
    parser.add_argument("--overhead-shards", type=int, default=40)
    parser.add_argument(
        "--repeat", type=int, default=1, help="status calls: best of (the emulator is slow)"
    )
    args = parser.parse_args()

    from tests.emulators import FIRESTORE, PUBSUB, fresh_project_id, start_emulator

    with tempfile.TemporaryDirectory(prefix="bench-emulators-") as tmp:
        emulators = []
        try:
            for kind in (PUBSUB, FIRESTORE):
                emulators.append(start_emulator(kind, Path(tmp), BENCH_JAVA_OPTIONS))
                os.environ.update(emulators[-1].env())
            print(
                f"emulators: {', '.join(f'{e.kind.name} {e.host} ({e.startup_s:.1f} s to start)' for e in emulators)}"
            )
            pub = bench_publish(fresh_project_id(), args.shards)
            st = bench_status(fresh_project_id(), args.shards, args.repeat)
            ov = bench_overhead(fresh_project_id(), fresh_project_id(), args.overhead_shards)
        finally:
            for e in emulators:
                e.stop()

    convert_s = S0_SHARD_CHUNKS / S0_CHUNKS_PER_S
    beats = math.floor(convert_s / HEARTBEAT_S)
    per_shard_ms = (
        ov["pull"]
        + ov["claim"]
        + ov["finish"]
        + ov["ack"]
        + beats * (ov["heartbeat"] + ov["extend"])
    )
    rows = [
        ("publish_many", f"{pub['n']:,} task messages ({pub['body_bytes']:.0f} B each)",
         f"{pub['seconds']:.1f} s", f"{pub['rate']:,.0f} msg/s"),
        ("plan (batched writer)", f"{st['n']:,} shard documents", f"{st['plan_s']:.1f} s",
         f"{st['n'] / st['plan_s']:,.0f} docs/s"),
    ]  # fmt: skip
    for name in ("summary()", "finished_since()", "list(status=running, limit=20)"):
        seconds, queries = st[name]
        extra = f", {st['groups']} groups" if name == "summary()" else ""
        rows.append((name, f"over {st['n']:,} shards", f"{seconds * 1000:,.0f} ms",
                     f"{queries} queries{extra}"))  # fmt: skip
    for name in ("pull", "claim", "heartbeat", "extend", "finish", "ack"):
        rows.append(
            (f"{name} (mean of {args.overhead_shards})", "per shard", f"{ov[name]:.1f} ms", "")
        )
    rows.append(
        ("per-shard overhead", f"pull+claim+finish+ack+{beats}x(heartbeat+extend)",
         f"{per_shard_ms:.0f} ms", f"{100 * per_shard_ms / 1000 / convert_s:.2f}% of a "
         f"{convert_s:.0f} s s0 shard")
    )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

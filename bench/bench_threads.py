"""One shard on 1 and on 2 converter threads, side by side: does a worker use both its vCPUs?

    .venv/bin/python bench/bench_threads.py                          # 8,192-chunk s0-like shard
    .venv/bin/python bench/bench_threads.py --chunks 32768 --rounds 3 --threads 1 2

Each measurement is a fresh process on the same two cores (its affinity is the first two CPUs
this process may use) that converts the one shard exactly as a worker does
(`transcode_shard(task, store, threads=T)`: read, zstd, transcode, gzip, one TensorStore
transaction, one commit) after loading the kernels. Rounds alternate 1, 2, 1, 2, ... so both see
the same machine load; the best round of each is reported, with the process's CPU seconds
(user + system) so that the parallel efficiency shows even when other work takes cores away:

    speed-up = wall(1 thread) / wall(2 threads)
    busy     = CPU seconds / wall seconds (2.0 = both cores converting all the time)

and the CPU split: "convert" = the per-group work (zstd, transcode, gzip; on the T - 1 pool
threads and on the reading thread, which converts while it waits), "of it on the main
thread" = the reading thread's share of that, "main thread alone" = what the reading and
writing thread did besides (Arrow scan, TensorStore writes), the serial part that bounds the
speed-up; "commit s" = the wall time of the shard's one commit, when nothing else runs.

The machine's load average before and after is printed with the table: on a shared machine a
speed-up below 2 may be other processes holding a core, which `busy` tells apart, and so does
the control measured in each child just before its shard: hashlib.sha256 (which holds no GIL)
on 2 threads against 1, i.e. what two threads could get from the machine at that moment, and
the same for libdeflate (the conversion's largest cost), which also tells whether two busy
cores slow each other down (shared cache, memory bandwidth) on this machine at that moment.
Below the table, each round's own speed-up (its 1- and 2-thread runs ran back to back) and
their median: best against best can pair one side's quiet moment with the other's busy one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out"


def measure(source: Path, dest: Path, threads: int) -> dict:
    """In the child: convert the shard of `source` on `threads` threads."""
    import dvid2ng.worker.transcode as transcode
    from dvid2ng.dispatcher.plan import plan_transcode
    from dvid2ng.kernels import warm_up_transcode
    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.worker.memory import peak_rss_bytes
    from dvid2ng.worker.output import ScaleStore, ShardWriter, io_context, write_info
    from dvid2ng.worker.transcode import transcode_shard

    # Instrumentation only: the CPU time of every group's conversion on the thread that ran
    # it, so the table can split the work into what the converter threads did and what the
    # main thread (reader, TensorStore writes, commit) did on its own; and the commit's wall
    # time: serial (the converter threads are done), it grows with the shard, so it bounds the
    # speed-up of a large shard more than of a small one.
    group_cpu: list[tuple[int, float]] = []
    commit_seconds: list[tuple[int, float]] = []
    transcode._convert_group = _timed(transcode._convert_group, time.thread_time, group_cpu)
    ShardWriter.commit = _timed(ShardWriter.commit, time.perf_counter, commit_seconds)
    warm_up_transcode()
    control = control_speedup()
    gzip_control = control_speedup(work="gzip")
    spec = VolumeSpec.load(source / "spec.json")
    (task,) = plan_transcode(source, str(dest), spec, scales=[0]).tasks
    write_info(str(dest), spec.info())
    store = ScaleStore(str(dest), spec.scales[0], io_context())
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    main_thread = threading.get_ident()
    main0 = time.thread_time()
    t = time.perf_counter()
    out = transcode_shard(task, store, threads=threads)
    wall = time.perf_counter() - t
    main_cpu = time.thread_time() - main0
    convert_cpu = sum(seconds for _, seconds in group_cpu)
    main_convert_cpu = sum(seconds for ident, seconds in group_cpu if ident == main_thread)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "threads": threads,
        "control_speedup": control,
        "gzip_control_speedup": gzip_control,
        "chunks": out.chunks_read,
        "seconds": wall,
        "cpu_seconds": cpu,
        "convert_cpu_seconds": convert_cpu,
        "commit_seconds": sum(seconds for _, seconds in commit_seconds),
        # the main thread's own work: it converts groups too (all of them with 1 thread)
        "main_only_cpu_seconds": main_cpu - main_convert_cpu,
        "main_convert_cpu_seconds": main_convert_cpu,
        "chunks_per_s": out.chunks_read / wall,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "shard_bytes": out.bytes_written,
    }


def _timed(fn: Callable, clock: Callable[[], float], sink: list[tuple[int, float]]) -> Callable:
    """`fn`, appending (thread, duration by `clock`) of each call to `sink` (list.append is
    atomic under the GIL, += on a float is not: the converter threads call it at once)."""

    def timed(*args, **kwargs):
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append((threading.get_ident(), clock() - t0))

    return timed


def control_speedup(seconds: float = 1.0, work: str = "sha256") -> float:
    """What two threads could get from this machine at this moment, items per second of 2
    threads over 1: "sha256" hashes 4 MiB (compute in registers); "gzip" is libdeflate level 6
    on 256 KiB of low-entropy bytes, the conversion's largest cost, which also leans on caches
    and memory the two cores share. Both release the GIL for the whole call. About 2.0 on two
    idle cores; near 1.0 when other processes hold a core; sha256 near 2.0 with gzip well below
    says the cores are free but slower when both work (shared cache or memory bandwidth)."""
    import hashlib
    import threading

    import deflate
    import numpy as np

    if work == "sha256":
        data = os.urandom(4 << 20)

        def one() -> None:
            hashlib.sha256(data).digest()
    else:
        data = np.random.default_rng(0).integers(0, 4, 256 << 10, dtype=np.uint8).tobytes()

        def one() -> None:
            deflate.gzip_compress(data, 6)

    def rate(threads: int) -> float:
        done = [0] * threads
        stop = time.perf_counter() + seconds

        def loop(i: int) -> None:
            while time.perf_counter() < stop:
                one()
                done[i] += 1

        pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        t = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        return sum(done) / (time.perf_counter() - t)

    return rate(2) / rate(1)


def round_speedups(base: list[dict], other: list[dict]) -> list[float]:
    """wall(base) / wall(other) of each round: the two ran back to back, so each ratio sees one
    moment of the machine, where best against best may pair a quiet moment with a busy one."""
    return [b["seconds"] / o["seconds"] for b, o in zip(base, other, strict=True)]


def two_cores() -> set[int]:
    return set(sorted(os.sched_getaffinity(0))[:2])


def run_child(source: Path, threads: int) -> dict:
    dest = OUT / f"dest-threads-{threads}"
    shutil.rmtree(dest, ignore_errors=True)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from bench.bench_threads import measure; "
        "print(json.dumps(measure(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))"
    )
    cores = two_cores()
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(source), str(dest), str(threads)],
        capture_output=True, text=True, check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )  # fmt: skip
    shutil.rmtree(dest, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--chunks", type=int, default=8192, help="records of the s0-like shard")
    p.add_argument("--labels", type=int, default=30)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=OUT / "threads.json")
    a = p.parse_args()
    from bench.bench_s0 import make_synthetic_shard

    OUT.mkdir(parents=True, exist_ok=True)
    src = make_synthetic_shard(a.chunks, a.labels)
    load_before = os.getloadavg()
    runs: dict[int, list[dict]] = {t: [] for t in a.threads}
    for i in range(a.rounds):
        for t in a.threads:
            r = run_child(src, t)
            r["load1"] = os.getloadavg()[0]
            runs[t].append(r)
            print(
                f"round {i + 1} threads {t}: {r['chunks_per_s']:,.0f} chunks/s "
                f"({r['seconds']:.2f} s wall, {r['cpu_seconds']:.2f} s CPU, "
                f"load {r['load1']:.2f}, sha256 control {r['control_speedup']:.2f}x, "
                f"gzip control {r['gzip_control_speedup']:.2f}x)",
                file=sys.stderr,
                flush=True,
            )
    load_after = os.getloadavg()
    best = {t: min(rs, key=lambda r: r["seconds"]) for t, rs in runs.items()}
    base = best[a.threads[0]]
    print(f"\ns0-like shard, {base['chunks']:,} chunks, {a.labels} labels per chunk, two cores")
    print(
        f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.2f}' for x in load_after)}\n"
    )
    print(
        "| threads | best wall s | chunks/s | speed-up | CPU s | busy cores | convert CPU s "
        "| of it on the main thread | main thread alone CPU s | commit s | peak RSS MiB | sha256 control, 2 vs 1 thread "
        "| gzip control |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t, r in best.items():
        print(
            f"| {t} | {r['seconds']:.2f} | {r['chunks_per_s']:,.0f} | "
            f"{base['seconds'] / r['seconds']:.2f}x | {r['cpu_seconds']:.2f} | "
            f"{r['cpu_seconds'] / r['seconds']:.2f} | {r['convert_cpu_seconds']:.2f} | "
            f"{r['main_convert_cpu_seconds']:.2f} | {r['main_only_cpu_seconds']:.2f} | {r['commit_seconds']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | "
            f"{r['control_speedup']:.2f}x | {r['gzip_control_speedup']:.2f}x |"
        )
    for t in a.threads[1:]:
        paired = round_speedups(runs[a.threads[0]], runs[t])
        print(
            f"\n{t} threads against {a.threads[0]}, round by round (each pair ran back to back): "
            f"{', '.join(f'{x:.2f}x' for x in paired)}; median {statistics.median(paired):.2f}x"
        )
    a.json.write_text(
        json.dumps({"runs": runs, "load_before": load_before, "load_after": load_after}, indent=2)
    )


if __name__ == "__main__":
    main()

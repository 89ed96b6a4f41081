"""Start-up of a worker: from process start to its first converted chunks, warm and cold Numba.

    .venv/bin/python bench/bench_startup.py                 # warm x5, cold x1, imports
    .venv/bin/python bench/bench_startup.py --warm 9 --cold 0
    .venv/bin/python bench/bench_startup.py --warm 9 --cold 0 --baseline /tmp/b  # A/B
    .venv/bin/python bench/bench_startup.py --warm 1 --cold 0 --phases 7  # CPU per phase

Each round publishes one 2,048-chunk s0-like shard (bench_s0.py's synthetic export) into a fresh
SQLite queue and state (`dvid2ng publish ... --queue sqlite:///Q --state sqlite:///Q`), then runs
the fleet's worker command on it exactly as a container would:

    dvid2ng worker --queue sqlite:///Q --state sqlite:///Q --tier all --exit-when-idle
                   --idle-seconds 0 --threads 1

and reads its JSON log. "first chunks" is the worker's own `first_chunks` event: its
`worker_age_s` is measured by the worker from its process start time in /proc (10 ms ticks),
so it includes the interpreter, every import, opening the queue, state and destination, the
claim, the reader and the first 16 converted chunks; `worker_cpu_s` is the CPU time the process
had used by then (user + system, every thread), which a loaded machine does not inflate. The bench's own clock (spawn to the event's
time stamp) is shown beside it. "warm" reuses a Numba cache filled by an earlier run; "cold"
points NUMBA_CACHE_DIR at an empty folder (what a worker without the image's cache pays).
The import table is `python -X importtime` of the same command (top modules by cumulative time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out"
DVID2NG = [sys.executable, "-m", "dvid2ng.dispatcher.cli"]


def publish(src: Path, root: Path) -> tuple[str, Path]:
    q = root / "q"
    q.mkdir(parents=True)
    dest = root / "dest"
    url = f"sqlite://{q}"
    subprocess.run(
        [*DVID2NG, "publish", str(src), str(dest), "--spec", str(src / "spec.json"),
         "--queue", url, "--state", url],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return url, dest


def run_worker(
    url: str, cache: Path, importtime: bool = False, light: bool = True, code: Path | None = None
) -> dict:
    env = {
        **os.environ,
        **({"PYTHONPATH": str(code)} if code else {}),
        "NUMBA_CACHE_DIR": str(cache),
        "DVID2NG_LIGHT_CACHE_LOAD": "1" if light else "0",
        "DVID2NG_LOG_FORMAT": "json",
        "PYTHONDONTWRITEBYTECODE": "",
    }
    cmd = [*DVID2NG, "worker", "--queue", url, "--state", url, "--tier", "all",
           "--exit-when-idle", "--idle-seconds", "0", "--threads", "1"]  # fmt: skip
    if importtime:
        cmd.insert(1, "-X")
        cmd.insert(2, "importtime")
    started = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    ended = time.time()
    events = {}
    imports = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:"):
            imports.append(line)
            continue
        try:
            e = json.loads(line)
        except ValueError:
            continue
        events.setdefault(e.get("event"), e)
    first = events.get("first_chunks")
    if out.returncode != 0 or first is None:
        raise RuntimeError(f"worker failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00")).timestamp()
    return {
        "first_chunks_age_s": first["worker_age_s"],
        "first_chunks_cpu_s": first.get("worker_cpu_s", float("nan")),
        "first_chunks_bench_s": stamp - started,
        "exit_s": ended - started,
        "imports": imports,
    }


PHASES = r"""
import gc, json, os, sys, time
gc.disable()  # as in the worker program (worker/startup_gc.py)
rows, last = [], [0.0, time.perf_counter()]  # CPU from the process start


def mark(name):
    cpu, wall = time.process_time(), time.perf_counter()
    rows.append((name, cpu - last[0], wall - last[1]))
    last[:] = cpu, wall


mark("interpreter (to this line)")
import numpy; mark("numpy")
import llvmlite.binding; mark("llvmlite.binding")
import numba; mark("numba (the rest)")
from dvid2ng.kernels.cache_load import load_cached_lightly
load_cached_lightly(); mark("dvid2ng.kernels + the light-load patch")
from numba.core.registry import cpu_target
from numba.core.runtime import nrt
nrt.rtsys.initialize(cpu_target.target_context); mark("Numba's runtime (NRT)")
from dvid2ng.kernels import warm_up_transcode
warm_up_transcode(); mark("the two cached kernels")
import structlog; mark("structlog")
import pyarrow; mark("pyarrow")
import tensorstore; mark("tensorstore")
import dvid2ng.worker.loop, dvid2ng.worker.transcode; mark("dvid2ng.worker (the rest)")
from dvid2ng.dispatcher.cli import build_parser
build_parser(only_worker=True); mark("the CLI and the worker's parser")
print(json.dumps(rows))
"""


def phases(cache: Path, rounds: int) -> None:
    """The worker's start-up, phase by phase, on one thread in sequence (no overlap), so each
    phase's CPU is its own: median and best of `rounds` fresh processes."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", PHASES], env=env, capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(rounds)
    ]
    print(f"\nthe same work in sequence on one thread, {rounds} fresh processes (CPU ms):")
    print("\n| phase | median | best |\n|---|---|---|")
    for i, (name, *_rest) in enumerate(runs[0]):
        cpu = [r[i][1] * 1e3 for r in runs]
        print(f"| {name} | {statistics.median(cpu):.0f} | {min(cpu):.0f} |")
    totals = [sum(row[1] for row in r) * 1e3 for r in runs]
    print(f"| total | {statistics.median(totals):.0f} | {min(totals):.0f} |")


def top_imports(lines: list[str], n: int = 12) -> list[tuple[int, str]]:
    rows = []
    for line in lines:
        _, _self, cum_us, name = (p.strip() for p in line.replace("import time:", "|").split("|"))
        if cum_us.isdigit():
            rows.append((int(cum_us), name))
    return sorted(rows, reverse=True)[:n]


def summarize(name: str, runs: list[dict]) -> None:
    ages = [r["first_chunks_age_s"] for r in runs]
    bench = [r["first_chunks_bench_s"] for r in runs]
    exits = [r["exit_s"] for r in runs]
    cpu = [r["first_chunks_cpu_s"] for r in runs]
    print(
        f"| {name} | {len(runs)} | {min(ages):.2f} | {statistics.median(ages):.2f} | "
        f"{max(ages):.2f} | {min(cpu):.2f} | {statistics.median(cpu):.2f} | {min(bench):.2f} | "
        f"{min(exits):.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--warm", type=int, default=5, help="rounds with a warm Numba cache")
    p.add_argument("--cold", type=int, default=1, help="rounds with an empty Numba cache")
    p.add_argument(
        "--full-load",
        action="store_true",
        help="also warm rounds with Numba's own cache load (DVID2NG_LIGHT_CACHE_LOAD=0), "
        "alternating with the default ones",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also warm rounds of another checkout of dvid2ng (e.g. `git worktree add /tmp/b "
        "HEAD~3`), alternating with this one; both then import dvid2ng through PYTHONPATH",
    )
    p.add_argument(
        "--phases",
        type=int,
        default=0,
        metavar="N",
        help="also time the start-up's phases one after another in N fresh processes",
    )
    a = p.parse_args()
    from bench.bench_s0 import make_synthetic_shard

    src = make_synthetic_shard(2048, 30)
    OUT.mkdir(parents=True, exist_ok=True)
    cache = OUT / "numba-cache-startup"
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def fresh(i: int) -> str:
            url, _ = publish(src, tmp / f"r{i}")
            return url

        code = {}
        if a.baseline:  # `import dvid2ng` from each checkout: a folder with a dvid2ng symlink
            for side, root in (("this", REPO), ("baseline", a.baseline.resolve())):
                (tmp / side).mkdir()
                (tmp / side / "dvid2ng").symlink_to(root)
                code[side] = tmp / side
        cold = []
        for i in range(a.cold):
            empty = tmp / f"cold-cache-{i}"
            empty.mkdir()
            cold.append(run_worker(fresh(1000 + i), empty))
        run_worker(fresh(0), cache, code=code.get("this"))  # fills the warm cache if empty
        if a.baseline:
            run_worker(fresh(-1), cache, code=code["baseline"])
        warm, full, base = [], [], []
        for i in range(a.warm):
            warm.append(run_worker(fresh(1 + 3 * i), cache, code=code.get("this")))
            if a.full_load:
                full.append(run_worker(fresh(2 + 3 * i), cache, light=False, code=code.get("this")))
            if a.baseline:
                base.append(run_worker(fresh(3 + 3 * i), cache, code=code["baseline"]))
        traced = run_worker(fresh(999), cache, importtime=True)
    print(
        "\n| Numba cache | runs | first chunks: best (s) | median | worst | CPU s by then, best "
        "| median | bench clock, best | process exit, best |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summarize("warm" + (" (this checkout, through PYTHONPATH)" if base else ""), warm)
    if base:
        summarize(f"warm, baseline {a.baseline}", base)
    if full:
        summarize("warm, Numba's own cache load (DVID2NG_LIGHT_CACHE_LOAD=0)", full)
    if cold:
        summarize("cold (empty NUMBA_CACHE_DIR)", cold)
    print(f"\n(load average {load:.2f} before, {os.getloadavg()[0]:.2f} after)")
    print("\nimports of the worker command (cumulative, `-X importtime`, one run):")
    for us, name in top_imports(traced["imports"]):
        print(f"  {us / 1e3:7.0f} ms  {name}")
    if a.phases:
        phases(cache, a.phases)
    shutil.rmtree(OUT / "startup-tmp", ignore_errors=True)


if __name__ == "__main__":
    main()

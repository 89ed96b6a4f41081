"""The whole `dvid2ng run` on a 2,048-chunk export against TensorStore, side by side.

    .venv/bin/python bench/bench_run.py                  # 3 alternating rounds
    .venv/bin/python bench/bench_run.py --chunks 2048 --rounds 5

Wall time from spawning the process to its exit, everything included (interpreter, imports,
Numba cache load, planning, worker processes, conversion, commit, state):

* **dvid2ng run**: `dvid2ng run SRC DEST --spec SRC/spec.json --no-progress` as a person runs
  it, with its defaults (on this 2-core machine one shard gets 1 worker x 2 threads), and again
  with `--workers 1 --threads 1` pinned to one core (the per-core figure);
* **TensorStore**: one process pinned to one core that decodes every DVID block to uint64 (our
  decoder) and writes the decoded volume through TensorStore's `neuroglancer_precomputed`
  driver (its own cseg encoder and gzip) in one transaction for the shard, committed once
  (bench_s0.py's baseline child, which also reports its time after imports).

Rounds alternate the three so each sees the same machine load; the best round of each is
reported with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out"
DVID2NG = [sys.executable, "-m", "dvid2ng.dispatcher.cli"]


def _one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def timed(cmd: list[str], pin: bool = False) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=_one_core if pin else None, timeout=3600
    )
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


def run_ours(src: Path, extra: list[str], pin: bool) -> float:
    dest = OUT / "dest-run"
    shutil.rmtree(dest, ignore_errors=True)
    wall, _ = timed(
        [*DVID2NG, "run", str(src), str(dest), "--spec", str(src / "spec.json"), "--no-progress",
         *extra],
        pin=pin,
    )  # fmt: skip
    shutil.rmtree(dest, ignore_errors=True)
    return wall


def run_tensorstore(src: Path, chunks: int) -> tuple[float, dict]:
    dest = OUT / "dest-run-ts"
    shutil.rmtree(dest, ignore_errors=True)
    wall, stdout = timed(
        [
            sys.executable,
            str(REPO / "bench" / "bench_s0.py"),
            "--child",
            "baseline",
            "--source",
            str(src),
            "--spec",
            str(src / "spec.json"),
            "--scale",
            "0",
            "--dest",
            str(dest),
            "--baseline-chunks",
            str(chunks),
        ],
    )  # fmt: skip  (the child pins itself to one core)
    shutil.rmtree(dest, ignore_errors=True)
    return wall, json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--chunks", type=int, default=2048)
    p.add_argument("--labels", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    from bench.bench_s0 import make_synthetic_shard

    OUT.mkdir(parents=True, exist_ok=True)
    src = make_synthetic_shard(a.chunks, a.labels)
    before = os.getloadavg()
    runs: dict[str, list[float]] = {"ours": [], "ours-1core": [], "ts": [], "ts-after-imports": []}
    for i in range(a.rounds):
        runs["ours"].append(run_ours(src, [], pin=False))
        runs["ours-1core"].append(run_ours(src, ["--workers", "1", "--threads", "1"], pin=True))
        wall, child = run_tensorstore(src, a.chunks)
        runs["ts"].append(wall)
        runs["ts-after-imports"].append(child["seconds"])
        print(
            f"round {i + 1}: run {runs['ours'][-1]:.2f} s, run 1 core {runs['ours-1core'][-1]:.2f}"
            f" s, TensorStore {wall:.2f} s ({child['seconds']:.2f} s after imports, "
            f"{child['chunks']} chunks, peak {child['peak_rss_mib']:.0f} MiB); "
            f"load {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
            flush=True,
        )
    after = os.getloadavg()
    best = {k: min(v) for k, v in runs.items()}
    n = a.chunks
    print(f"\n{n:,}-chunk s0-like export (one shard), best of {a.rounds} alternating rounds")
    print(
        f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in before)}, "
        f"after {'/'.join(f'{x:.2f}' for x in after)}\n"
    )
    print("| pipeline | cores | wall s (spawn to exit) | chunks/s | vs TensorStore |")
    print("|---|---|---|---|---|")
    rows = [
        ("`dvid2ng run` (defaults: 1 worker x 2 threads)", 2, best["ours"]),
        ("`dvid2ng run --workers 1 --threads 1`, pinned", 1, best["ours-1core"]),
        ("TensorStore, one transaction, pinned", 1, best["ts"]),
        ("TensorStore, same, after its imports", 1, best["ts-after-imports"]),
    ]
    for name, cores, wall in rows:
        print(f"| {name} | {cores} | {wall:.2f} | {n / wall:,.0f} | {best['ts'] / wall:.1f}x |")
    (OUT / "run.json").write_text(json.dumps({"runs": runs, "before": before, "after": after}))


if __name__ == "__main__":
    main()

"""How long a process takes to end once its work is done: the interpreter's teardown against
worker/exit.py's exit_now, and the tail of a whole `dvid2ng run`.

    .venv/bin/python bench/bench_exit.py                 # 5 rounds each
    .venv/bin/python bench/bench_exit.py --rounds 9

1. A child imports what a worker imports (Numba with its cached transcode kernels loaded,
   TensorStore, pyarrow, structlog), prints its clock, then ends with `sys.exit(0)` (the
   interpreter's teardown) or with `exit_now(0)`; the time is from the printed clock to the
   moment the parent sees the process gone. Rounds alternate.
2. `dvid2ng run SRC DEST --spec SPEC --no-progress` on bench_s0.py's 2,048-chunk export, as a
   program (so it ends through exit_now): from its last line of output to its exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import sys, time
from dvid2ng.kernels.cache_load import load_cached_lightly
load_cached_lightly()
import pyarrow, structlog, tensorstore
from dvid2ng.kernels import warm_up_transcode
warm_up_transcode()
sys.stdout.write(repr(time.time())); sys.stdout.flush()
if sys.argv[1] == "exit_now":
    from dvid2ng.worker.exit import exit_now
    exit_now(0)
sys.exit(0)
"""


def child_exit(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True)
    ended = time.time()
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return ended - float(out.stdout)


def run_tail(src: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "dvid2ng.dispatcher.cli", "run", str(src), f"{tmp}/vol",
               "--spec", str(src / "spec.json"), "--no-progress"]  # fmt: skip
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.stdout is not None
        last = time.time()
        for _ in p.stdout:
            last = time.time()
        if p.wait() != 0:
            raise RuntimeError(f"dvid2ng run exited {p.returncode}")
        return time.time() - last


def line(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {len(values)} | {min(values):.3f} | {statistics.median(values):.3f} | "
        f"{max(values):.3f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    from bench.bench_s0 import make_synthetic_shard

    src = make_synthetic_shard(2048, 30)
    child_exit("sys_exit")  # untimed: Numba's cache and the page cache warm
    load = os.getloadavg()[0]
    plain, fast, tails = [], [], []
    for _ in range(a.rounds):
        plain.append(child_exit("sys_exit"))
        fast.append(child_exit("exit_now"))
        tails.append(run_tail(src))
    print(f"\nload average {load:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| seconds to exit | rounds | best | median | worst |")
    print("|---|---|---|---|---|")
    print(line("worker's imports, sys.exit (interpreter teardown)", plain))
    print(line("worker's imports, exit_now", fast))
    print(line("`dvid2ng run`, 2,048 chunks: last output line to exit", tails))


if __name__ == "__main__":
    main()

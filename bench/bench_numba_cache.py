"""What the image's Numba cache buys, and what a portable CPU target costs (not a test). Run:

    .venv/bin/python bench/bench_numba_cache.py [--targets host,x86-64-v3,x86-64-v2,generic]

For each code-generation target (NUMBA_CPU_NAME; "host" = Numba's default, this machine's CPU)
in a fresh NUMBA_CACHE_DIR: (1) a new process runs kernels.warm_up() with an empty cache (the
compile a worker pays on its first shard when the image has no warm cache), (2) a new process
runs it again (loading from the cache, as in the image), then times the transcode kernel on
s0-like blocks. Every process is pinned to one core. A cache written for one target is only
used by processes with the same target (Numba keys it by CPU name and features), so an image
warmed on a build host with a CPU unlike Cloud Run's misses unless the target is pinned.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import dvid2ng.kernels as K
K.warm_up()
warm = time.perf_counter() - t0
out = {"warm_up_s": warm}
if sys.argv[1] == "measure":
    sys.path.insert(0, sys.argv[2])
    from bench_kernels import s0_like_volume, timeit
    from dvid2ng.kernels.dvid_encode import encode_dvid_block
    rng = np.random.default_rng(1)
    vols = [s0_like_volume(rng, int(rng.integers(10, 51))) for _ in range(16)]
    blocks = [encode_dvid_block(v) for v in vols]
    out["transcode_blocks_s"] = timeit(K.dvid_block_to_cseg, blocks)
    out["encode_cseg_chunks_s"] = timeit(K.encode_cseg, vols)
print(json.dumps(out))
"""


def run(target: str, cache: str, mode: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    if target != "host":
        env["NUMBA_CPU_NAME"] = target
        env["NUMBA_CPU_FEATURES"] = ""  # the named CPU's own features, nothing from this host
    cmd = ["taskset", "-c", "0", sys.executable, "-c", CHILD, mode, str(REPO / "bench")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="host,x86-64-v3,x86-64-v2,generic")
    ap.add_argument(
        "--rounds", type=int, default=3, help="timed rounds, targets interleaved; best kept"
    )
    args = ap.parse_args()
    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as root:
        caches = {t: str(Path(root) / t) for t in targets}
        cold = {t: run(t, caches[t], "cold")["warm_up_s"] for t in targets}
        best: dict[str, dict] = {}
        for r in range(args.rounds):  # interleaved, so load from other processes hits all alike
            for t in targets:
                m = run(t, caches[t], "measure")
                b = best.setdefault(t, m)
                for k, v in m.items():
                    b[k] = min(b[k], v) if k == "warm_up_s" else max(b[k], v)
            print(f"round {r + 1} done", file=sys.stderr)
        files = {t: sum(1 for _ in Path(caches[t]).rglob("*.nbc")) for t in targets}
    rows = [(t, cold[t], best[t]["warm_up_s"], files[t], best[t]) for t in targets]
    print(
        f"\n{'target':<12} {'cold warm_up s':>15} {'cached warm_up s':>17} {'.nbc files':>10} "
        f"{'transcode blocks/s':>19} {'encode_cseg chunks/s':>21}"
    )
    for target, cold_s, warm_s, files, m in rows:
        print(
            f"{target:<12} {cold_s:>15.1f} {warm_s:>17.2f} {files:>10} "
            f"{m['transcode_blocks_s']:>19.0f} {m['encode_cseg_chunks_s']:>21.0f}"
        )


if __name__ == "__main__":
    main()

"""2x2x2 label downsampling speed, input voxels/s per core: dvid2ng's kernel vs tinybrain vs
TensorStore's `mode` view, side by side in one run.

    .venv/bin/python bench/bench_downsample.py                 # all volumes, 256^3, best of 7
    .venv/bin/python bench/bench_downsample.py --side 64 --repeat 101    # cache-resident input

The process pins itself to one core first (TensorStore's threads included), so every figure is
per core. Volumes (ZYX uint64):
* s0-like:  Voronoi cells, ~30 labels per 64^3 block, shifted by one voxel so that label
            boundaries fall inside 2x2x2 windows (synthetic_volume works on 2^3 granules,
            which would otherwise make every window uniform);
* dense:    the same with ~300 labels per block;
* mCNS s1:  real DVID blocks of the fixture shard (decoded, packed side/64 per axis: 64 of
            its 258 blocks at 256^3), when ../shared/fixtures is present;
* noise:    4 labels uniformly at random (almost every window mixed; the worst case).

tinybrain (PyPI, C++) assumes Fortran (x, y, z) order: it is handed `vol.T` (a view, no
copy) and its result transposed back. Given the C-ordered array itself it silently returns a
wrong answer (reported below). It breaks ties by scan order, TensorStore and we by the smallest
value, so its output is checked against ours only on windows without a tie.

"no touch" / "touch" is our `mode` kernel with its next-row touching off / on
(kernels/downsample.py, _full_row): the same arithmetic, the memory reads not overlapped /
overlapped. `downsample_labels` (the first two columns) touches only on inputs of at least
TOUCH_MIN_BYTES (16 MiB), where it pays.

The runs are interleaved (each round times every implementation once, the best round of each is
kept), so a burst of load from other processes hits them alike. `numpy.sum` over the same array
is the memory-read ceiling: a 256^3 input (128 MiB) does not fit in the caches, so on a busy
machine every figure is bounded by the memory bandwidth left over; `--side 64` (2 MiB, in L3)
shows the kernels' own speed. The 1-minute load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "mcns-s1-shard" / "30720_24576_28672.arrow"


def pin_to_one_core(core: int | None = None) -> int:
    core = sorted(os.sched_getaffinity(0))[-1] if core is None else core
    os.sched_setaffinity(0, {core})
    return core


def volumes(side: int) -> dict[str, np.ndarray]:
    from dvid2ng.dvidexport.synthetic import synthetic_volume

    n = side + 1
    out = {
        "s0-like (~30 labels/block)": synthetic_volume((n, n, n), n_labels=30, seed=1)[1:, 1:, 1:],
        "dense (~300 labels/block)": synthetic_volume((n, n, n), n_labels=300, seed=2)[1:, 1:, 1:],
    }
    real = mcns_volume(side)
    if real is not None:
        out[f"mCNS s1 fixture ({(side // 64) ** 3} blocks)"] = real
    rng = np.random.default_rng(0)
    out["noise (4 labels)"] = rng.integers(1, 5, size=(side, side, side)).astype(np.uint64)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def mcns_volume(side: int) -> np.ndarray | None:
    """side^3 voxels (side a multiple of 64, at most 384): real mCNS s1 blocks of the fixture
    shard (mapped to bodies) packed in file order. (Their own positions are not used: the
    fixture is an edge shard, mostly empty around its corner.)"""
    n = side // 64
    if not FIXTURE.exists() or side % 64 or n**3 > 258:
        return None
    from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
    from dvid2ng.kernels import decode_dvid_block

    vol = np.zeros((side, side, side), np.uint64)
    with ExportFileReader(str(FIXTURE), None) as reader:
        for k, rec in enumerate(reader):
            if k == n**3:
                break
            bx, by, bz = k % n, (k // n) % n, k // (n * n)
            block = decode_dvid_block(decompress_block(rec, str(FIXTURE)), rec.labels)
            vol[bz * 64 : bz * 64 + 64, by * 64 : by * 64 + 64, bx * 64 : bx * 64 + 64] = block
    return vol


def best_seconds(fns: dict, repeat: int) -> dict[str, float]:
    """Best time of each function over `repeat` interleaved rounds (after one warm-up call each:
    JIT, page faults of the output)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def tie_windows(vol: np.ndarray) -> np.ndarray:
    """Boolean (output-shaped) mask of full windows whose top count is shared by two values."""
    nz, ny, nx = (s // 2 * 2 for s in vol.shape)
    w = vol[:nz, :ny, :nx].reshape(nz // 2, 2, ny // 2, 2, nx // 2, 2)
    w = w.transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    counts = (w[:, :, None] == w[:, None, :]).sum(axis=2)
    top = counts.max(axis=1, keepdims=True)
    n_top_values = ((counts == top).sum(axis=1)) // top[:, 0]
    mask = np.zeros(tuple((s + 1) // 2 for s in vol.shape), bool)
    mask[: nz // 2, : ny // 2, : nx // 2] = (n_top_values > 1).reshape(nz // 2, ny // 2, nx // 2)
    return mask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--side", type=int, default=256, help="cube side of the synthetic volumes")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (best kept)")
    ap.add_argument("--core", type=int, help="the core to pin to (default: the last one)")
    args = ap.parse_args()
    core = pin_to_one_core(args.core)

    import tensorstore as ts
    import tinybrain

    from dvid2ng.kernels import downsample_labels, warm_up
    from dvid2ng.kernels.downsample import _downsample_kernel

    warm_up()
    ctx = ts.Context({"data_copy_concurrency": {"limit": 1}})
    print(
        f"pinned to core {core}; best of {args.repeat} interleaved rounds; G input voxels/s per "
        f"core; load average {os.getloadavg()[0]:.1f}\n"
    )
    header = (
        f"{'volume':34} {'dvid2ng mode':>13} {'dvid2ng dvid':>13} {'no touch':>9} {'touch':>6} {'tinybrain':>10} "
        f"{'TS mode':>8} {'numpy.sum':>10}   checks"
    )
    print(header)
    print("-" * len(header))
    for name, vol in volumes(args.side).items():
        gvox = vol.size / 1e9
        out = np.empty(tuple((s + 1) // 2 for s in vol.shape), np.uint64)
        t = best_seconds(
            {
                "mode": lambda v=vol, o=out: downsample_labels(v, "mode", out=o),
                "dvid": lambda v=vol, o=out: downsample_labels(v, "dvid", out=o),
                "untouched": lambda v=vol, o=out: _downsample_kernel(v, o, False, False),
                "touched": lambda v=vol, o=out: _downsample_kernel(v, o, False, True),
                "tinybrain": lambda v=vol: tinybrain.downsample_segmentation(v.T, (2, 2, 2))[0],
                "ts": lambda v=vol: (
                    ts.downsample(ts.array(v, context=ctx), [2, 2, 2], "mode").read().result()
                ),
                "sum": lambda v=vol: v.sum(),
            },
            args.repeat,
        )
        ref = downsample_labels(vol, "mode")
        ts_out = np.asarray(ts.downsample(ts.array(vol), [2, 2, 2], "mode").read().result())
        tb_out = tinybrain.downsample_segmentation(vol.T, (2, 2, 2))[0].T
        tb_wrong_order = tinybrain.downsample_segmentation(vol, (2, 2, 2))[0]
        ties = tie_windows(vol)
        differ = tb_out != ref
        checks = (
            f"TS {'==' if np.array_equal(ts_out, ref) else '!='} ours; "
            f"tinybrain differs in {int(differ.sum()):,} windows "
            f"({int((differ & ~ties).sum())} without a tie); "
            f"C-order input: {int((tb_wrong_order != ref).sum()):,} wrong"
        )
        print(
            f"{name:34} {gvox / t['mode']:13.3f} {gvox / t['dvid']:13.3f} {gvox / t['untouched']:9.3f} {gvox / t['touched']:6.3f} "
            f"{gvox / t['tinybrain']:10.3f} {gvox / t['ts']:8.3f} {gvox / t['sum']:10.3f}   {checks}"
        )
    print(f"\nload average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

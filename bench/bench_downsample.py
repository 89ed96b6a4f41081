"""2x2x2 label downsampling speed, input voxels/s per core: dvid2ng's kernel vs tinybrain vs
TensorStore's `mode` view, side by side in one run.

    .venv/bin/python bench/bench_downsample.py                 # all volumes, 256^3, best of 7
    .venv/bin/python bench/bench_downsample.py --side 128 --repeat 15

The process pins itself to one core first (TensorStore's threads included), so every figure is
per core. Volumes (ZYX uint64):
* s0-like:  Voronoi cells, ~30 labels per 64^3 block, shifted by one voxel so that label
            boundaries fall inside 2x2x2 windows (synthetic_volume works on 2^3 granules,
            which would otherwise make every window uniform);
* dense:    the same with ~300 labels per block;
* mCNS s1:  real DVID blocks of the fixture shard (decoded, 4x3x4 blocks), when
            ../shared/fixtures is present;
* noise:    4 labels uniformly at random (almost every window mixed; the worst case).

tinybrain (PyPI, C++) assumes Fortran (x, y, z) order: it is handed `vol.T` (a view, no
copy) and its result transposed back. Given the C-ordered array itself it silently returns a
wrong answer (reported below). It breaks ties by scan order, TensorStore and we by the smallest
value, so its output is checked against ours only on windows without a tie.
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


def pin_to_one_core() -> int:
    core = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {core})
    return core


def volumes(side: int) -> dict[str, np.ndarray]:
    from dvid2ng.dvidexport.synthetic import synthetic_volume

    n = side + 1
    out = {
        "s0-like (~30 labels/block)": synthetic_volume((n, n, n), n_labels=30, seed=1)[1:, 1:, 1:],
        "dense (~300 labels/block)": synthetic_volume((n, n, n), n_labels=300, seed=2)[1:, 1:, 1:],
    }
    real = mcns_volume()
    if real is not None:
        out["mCNS s1 fixture (4x3x4 blocks)"] = real
    rng = np.random.default_rng(0)
    out["noise (4 labels)"] = rng.integers(1, 5, size=(side, side, side)).astype(np.uint64)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def mcns_volume() -> np.ndarray | None:
    """256 x 192 x 256 voxels (z, y, x) of real mCNS s1 blocks mapped to bodies."""
    if not FIXTURE.exists():
        return None
    from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
    from dvid2ng.kernels import decode_dvid_block

    vol = np.zeros((256, 192, 256), np.uint64)
    origin = (499, 413, 469)
    with ExportFileReader(str(FIXTURE), None) as reader:
        for rec in reader:
            bx, by, bz = rec.x - origin[0], rec.y - origin[1], rec.z - origin[2]
            if 0 <= bx < 4 and 0 <= by < 3 and 0 <= bz < 4:
                block = decode_dvid_block(decompress_block(rec, str(FIXTURE)), rec.labels)
                vol[bz * 64 : bz * 64 + 64, by * 64 : by * 64 + 64, bx * 64 : bx * 64 + 64] = block
    return vol


def best_seconds(fn, repeat: int) -> float:
    fn()  # warm up (JIT, page faults of the output)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
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
    args = ap.parse_args()
    core = pin_to_one_core()

    import tensorstore as ts
    import tinybrain

    from dvid2ng.kernels import downsample_labels, warm_up

    warm_up()
    ctx = ts.Context({"data_copy_concurrency": {"limit": 1}})
    print(f"pinned to core {core}; best of {args.repeat}; G input voxels/s per core\n")
    header = f"{'volume':34} {'dvid2ng mode':>13} {'dvid2ng dvid':>13} {'tinybrain':>10} {'TS mode':>8}   checks"
    print(header)
    print("-" * len(header))
    for name, vol in volumes(args.side).items():
        gvox = vol.size / 1e9
        out = np.empty(tuple((s + 1) // 2 for s in vol.shape), np.uint64)
        ours = best_seconds(lambda v=vol, o=out: downsample_labels(v, "mode", out=o), args.repeat)
        ours_dvid = best_seconds(
            lambda v=vol, o=out: downsample_labels(v, "dvid", out=o), args.repeat
        )
        tb = best_seconds(
            lambda v=vol: tinybrain.downsample_segmentation(v.T, (2, 2, 2))[0], args.repeat
        )
        tsv = best_seconds(
            lambda v=vol: (
                ts.downsample(ts.array(v, context=ctx), [2, 2, 2], "mode").read().result()
            ),
            max(1, args.repeat // 3),
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
            f"{name:34} {gvox / ours:13.3f} {gvox / ours_dvid:13.3f} {gvox / tb:10.3f} "
            f"{gvox / tsv:8.3f}   {checks}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

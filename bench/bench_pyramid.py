"""End-to-end downsampling of one full s1 shard (32^3 output chunks from 8 full s0 shards),
output chunks/s per core and peak RSS, dvid2ng against TensorStore doing the same job, on two
inputs side by side in one run.

    .venv/bin/python bench/bench_pyramid.py                # both inputs; s0 generated once (cached)
    .venv/bin/python bench/bench_pyramid.py --volume mcns --baseline-chunks 512
    .venv/bin/python bench/bench_pyramid.py --chunks 2048   # partial shard, nothing committed

Inputs: s0 of 4096^3 voxels (8 shards of 32^3 chunks, mCNS geometry: 64^3 chunks, preshift 9,
minishard 6) written straight into the sharded volume with our encoder; s1 = one 2048^3 shard.
* dense:  the worst case. Chunk (x, y, z) holds block (x % 8, y % 8, z % 8) of a 512^3 Voronoi
          segmentation (~30 labels per 64^3 block, boundaries off the even grid), so every s1
          chunk meets ~8x that: ~24 KB per gzipped s1 chunk, 7x mCNS's.
* mcns:   realistic label density, from the 258 real mCNS s1 blocks of the fixture shard
          (../shared/fixtures; skipped without it): output chunk k is made of fixture block
          k mod 258 (in a fixed shuffled order) upsampled 2x and shifted by one voxel (rolled
          within the block, so label boundaries fall inside 2x2x2 windows as in a real s0),
          split into its 8 s0 chunks. The s1 output is then 5.4 KB per gzipped chunk (the
          shift adds boundary ties): a little denser than the fixture's own blocks (3.6 KB
          mean) and mCNS's s1 average (~3.4 KB), so its peak RSS errs on the safe side.

Each measurement runs in a fresh process pinned to ONE core (TensorStore's threads included);
peak RSS is that process's VmHWM; the 1-minute load average is printed before each one.
* dvid2ng:  worker.downsample.downsample_shard: for each output chunk the stored (gzipped)
            parent chunks are read by byte range through a TensorStore kvstore, gunzipped
            (libdeflate), voted straight from their cseg bytes (Numba), encoded with our cseg
            encoder, gzipped (libdeflate, level 6) and written into one transaction on the
            sharded kvstore, committed once.
* baseline: TensorStore alone: `ts.downsample(s0, [2, 2, 2, 1], "mode")` written into s1
            through the neuroglancer_precomputed driver in one transaction per shard (its cseg
            encoder and gzip at commit). The transaction holds raw uint64 output (2 MiB per
            chunk), so a full shard (64 GiB) cannot be done this way; the baseline writes the
            first --baseline-chunks output chunks (a box of whole minishards) in one
            transaction and its chunks/s is compared per chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
FIXTURE = REPO.parent / "shared" / "fixtures" / "mcns-s1-shard" / "30720_24576_28672.arrow"
VOLUMES = ("dense", "mcns")

SPEC = {
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "s0",
            "size": [4096, 4096, 4096],
            "resolution": [8, 8, 8],
            "chunk_sizes": [[64, 64, 64]],
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 9,
                "minishard_bits": 6,
                "shard_bits": 3,
            },
        },
        {
            "key": "s1",
            "size": [2048, 2048, 2048],
            "resolution": [16, 16, 16],
            "chunk_sizes": [[64, 64, 64]],
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 9,
                "minishard_bits": 6,
                "shard_bits": 0,
            },
        },
    ],
}


def pin_to_one_core() -> int:
    core = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {core})
    return core


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def dense_pool(period: int = 8, labels: int = 30) -> Callable[[int, int, int], bytes]:
    """s0 chunk (x, y, z) -> its gzipped cseg bytes, for the dense worst case."""
    from dvid2ng.dvidexport.synthetic import synthetic_volume
    from dvid2ng.kernels import encode_cseg
    from dvid2ng.worker.transcode import gzip_bytes

    side = 64 * period
    vol = synthetic_volume((side + 1,) * 3, n_labels=labels, seed=11)[1:, 1:, 1:]
    pool = {}
    for z in range(period):
        for y in range(period):
            for x in range(period):
                block = np.ascontiguousarray(
                    vol[z * 64 : z * 64 + 64, y * 64 : y * 64 + 64, x * 64 : x * 64 + 64]
                )
                pool[x, y, z] = gzip_bytes(encode_cseg(block), 6)
    return lambda x, y, z: pool[x % period, y % period, z % period]


def fixture_blocks() -> list[np.ndarray]:
    """The real mCNS s1 blocks of the fixture shard (64^3 ZYX, mapped to bodies)."""
    from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
    from dvid2ng.kernels import decode_dvid_block

    with ExportFileReader(str(FIXTURE), None) as reader:
        return [
            decode_dvid_block(decompress_block(rec, str(FIXTURE)), rec.labels) for rec in reader
        ]


def mcns_pool() -> Callable[[int, int, int], bytes]:
    """s0 chunk (x, y, z) -> its gzipped cseg bytes, realistic density (see the docstring)."""
    from dvid2ng.kernels import encode_cseg
    from dvid2ng.worker.transcode import gzip_bytes

    blocks = fixture_blocks()
    pool = []  # per fixture block: its 8 s0 chunks by octant (x + 2y + 4z)
    for block in blocks:
        up = np.repeat(np.repeat(np.repeat(block, 2, 0), 2, 1), 2, 2)
        # a one-voxel shift puts label boundaries inside 2x2x2 windows, as in a real s0 (a pure
        # 2x upsampling would make every window uniform and flatter the vote)
        up = np.roll(up, 1, axis=(0, 1, 2))
        pool.append(
            [
                gzip_bytes(
                    encode_cseg(
                        np.ascontiguousarray(
                            up[
                                oz * 64 : oz * 64 + 64,
                                oy * 64 : oy * 64 + 64,
                                ox * 64 : ox * 64 + 64,
                            ]
                        )
                    ),
                    6,
                )
                for oz in (0, 1)
                for oy in (0, 1)
                for ox in (0, 1)
            ]
        )
    order = np.random.default_rng(5).permutation(len(pool))

    def chunk(x: int, y: int, z: int) -> bytes:
        k = (x // 2) + 32 * ((y // 2) + 32 * (z // 2))
        return pool[order[k % len(pool)]][(x % 2) + 2 * (y % 2) + 4 * (z % 2)]

    return chunk


def make_s0(dest: Path, volume: str) -> None:
    """Write the 8 s0 shards of `volume` (cached: skipped when all 8 files exist)."""
    from dvid2ng.schemas.sharding import num_shards, shard_bounds
    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.worker.output import ScaleStore, io_context, write_info

    spec = VolumeSpec.from_json(SPEC)
    s0 = spec.scales[0]
    if len(list((dest / "s0").glob("*.shard"))) == num_shards(s0):
        return
    print(f"generating the {volume} s0 in {dest} (once) ...", file=sys.stderr)
    write_info(str(dest), spec.info())
    chunk = dense_pool() if volume == "dense" else mcns_pool()
    store = ScaleStore(str(dest), s0, io_context())
    tx, ty, tz = store.morton_tables
    for shard in range(num_shards(s0)):
        t = time.monotonic()
        lo, hi = shard_bounds(s0, shard)
        writer = store.begin_shard(shard)
        for z in range(lo[2], hi[2]):
            for y in range(lo[1], hi[1]):
                for x in range(lo[0], hi[0]):
                    writer.write(tx[x] | ty[y] | tz[z], chunk(x, y, z))
        writer.commit()
        print(
            f"  s0 shard {shard}: {writer.chunks} chunks in {time.monotonic() - t:.1f} s",
            file=sys.stderr,
        )


def run_ours(src: str, out: str, limit: int = 0) -> dict:
    """The full shard, or with `limit` only its first output chunks (then nothing is committed:
    the rate is comparable, the peak RSS is not the full shard's)."""
    from dvid2ng.kernels import warm_up
    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.schemas.task import ShardTask
    from dvid2ng.worker.downsample import ParentReader, downsample_shard
    from dvid2ng.worker.output import ScaleStore, io_context

    warm_up()
    spec = VolumeSpec.from_json(SPEC)
    parent = ParentReader(src, spec.scales[0])
    store = ScaleStore(out, spec.scales[1], io_context())
    task = ShardTask(
        run_id="bench", scale=1, shard=0, shard_name="0", kind="downsample", sources=(),
        dest=out, chunks_expected=32768, downsample_method="mode",
    )  # fmt: skip
    from dvid2ng.worker.errors import Interrupted

    seen = [0]

    def stop() -> bool:
        seen[0] += 1
        return bool(limit) and seen[0] > limit

    t = time.monotonic()
    try:
        o = downsample_shard(task, parent, store, should_stop=stop)
    except Interrupted:
        wall = time.monotonic() - t
        return {
            "chunks": limit,
            "written": limit,
            "seconds": wall,
            "bytes": 0,
            "encoded_bytes": 0,
            "peak_rss": vm_hwm(),
        }
    wall = time.monotonic() - t
    return {
        "chunks": o.chunks_read,
        "written": o.chunks_written,
        "seconds": wall,
        "bytes": o.bytes_written,
        "encoded_bytes": o.encoded_bytes,
        "peak_rss": vm_hwm(),
    }


def run_baseline(src: str, out: str, chunks: int) -> dict:
    import tensorstore as ts

    from dvid2ng.worker.output import kvstore_spec

    ctx = ts.Context({"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 1}})
    s0 = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": kvstore_spec(src), "scale_index": 0},
        context=ctx,
    ).result()
    s1 = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": kvstore_spec(out), "scale_index": 1},
        context=ctx,
    ).result()
    view = ts.downsample(s0, [2, 2, 2, 1], "mode")
    # whole minishards: 512 chunks = a Morton cube of 8^3 chunks; more = a row of such cubes
    n = max(1, chunks // 512)
    box = (8 * n * 64, 8 * 64, 8 * 64)
    t = time.monotonic()
    with ts.Transaction() as txn:
        s1.with_transaction(txn)[: box[0], : box[1], : box[2], :] = view[
            : box[0], : box[1], : box[2], :
        ]
    wall = time.monotonic() - t
    done = (box[0] // 64) * (box[1] // 64) * (box[2] // 64)
    return {"chunks": done, "written": done, "seconds": wall, "peak_rss": vm_hwm()}


def child(args: argparse.Namespace) -> int:
    pin_to_one_core()
    if args.child == "ours":
        res = run_ours(args.src, args.out, args.chunks)
    else:
        res = run_baseline(args.src, args.out, args.baseline_chunks)
    print(json.dumps(res))
    return 0


def measure(which: str, src: Path, out: Path, baseline_chunks: int, chunks: int) -> dict:
    import shutil

    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.worker.output import write_info

    shutil.rmtree(out, ignore_errors=True)
    write_info(str(out), VolumeSpec.from_json(SPEC).info())
    cmd = [sys.executable, __file__, "--child", which, "--src", str(src), "--out", str(out),
           "--baseline-chunks", str(baseline_chunks), "--chunks", str(chunks)]  # fmt: skip
    got = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(got.stdout.strip().splitlines()[-1])


def source_dir(work: Path, volume: str) -> Path:
    return work / ("s0-volume" if volume == "dense" else f"s0-{volume}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, default=OUT / "pyramid", help="where s0 and outputs go")
    ap.add_argument(
        "--volume", choices=[*VOLUMES, "both"], default="both", help="input (default: both)"
    )
    ap.add_argument(
        "--baseline-chunks", type=int, default=512, help="output chunks for the baseline"
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement (best kept)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument(
        "--chunks", type=int, default=0,
        help="dvid2ng: stop after this many output chunks (0: the full shard, committed)",
    )  # fmt: skip
    ap.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    volumes = list(VOLUMES) if args.volume == "both" else [args.volume]
    if "mcns" in volumes and not FIXTURE.exists():
        print(f"skipping the mcns input: {FIXTURE} is absent", file=sys.stderr)
        volumes.remove("mcns")
    for volume in volumes:
        make_s0(source_dir(args.work, volume), volume)
    rows = []
    for volume in volumes:
        src = source_dir(args.work, volume)
        for which in ["ours"] + ([] if args.skip_baseline else ["baseline"]):
            runs = []
            for _ in range(args.repeat):
                load = os.getloadavg()[0]
                out = args.work / f"out-{volume}-{which}"
                r = measure(which, src, out, args.baseline_chunks, args.chunks)
                r["load"] = load
                runs.append(r)
                print(f"  {volume} {which}: {json.dumps(r)}", file=sys.stderr)
            best = min(runs, key=lambda r: r["seconds"] / r["chunks"])
            best["peak_rss"] = max(r["peak_rss"] for r in runs)
            rows.append((volume, which, best))
    print(
        f"\n{'input':6} {'pipeline':9} {'load':>5} {'chunks':>7} {'seconds':>8} "
        f"{'chunks/s/core':>14} {'peak RSS':>10} {'gzipped output':>15} {'B/chunk':>8}"
    )
    for volume, which, r in rows:
        enc = r.get("encoded_bytes", 0)
        print(
            f"{volume:6} {which:9} {r['load']:5.1f} {r['chunks']:7d} {r['seconds']:8.1f} "
            f"{r['chunks'] / r['seconds']:14.1f} {r['peak_rss'] / 2**20:6.0f} MiB "
            + (
                f"{enc / 2**20:11.0f} MiB {enc / max(1, r['written']):8,.0f}"
                if enc
                else f"{'-':>15} {'-':>8}"
            )
        )
    print()
    for volume in volumes:
        got = {w: r for v, w, r in rows if v == volume}
        if len(got) == 2:
            ours, base = got["ours"], got["baseline"]
            speedup = (ours["chunks"] / ours["seconds"]) / (base["chunks"] / base["seconds"])
            print(f"{volume}: dvid2ng / baseline {speedup:.2f}x per core")
        if "ours" in got and got["ours"]["bytes"]:
            r = got["ours"]
            print(
                f"{volume}: dvid2ng stored {r['written']} chunks, shard file "
                f"{r['bytes'] / 2**20:.0f} MiB; peak RSS - gzipped output = "
                f"{(r['peak_rss'] - r['encoded_bytes']) / 2**20:.0f} MiB"
            )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pyramid.json").write_text(json.dumps([[v, w, r] for v, w, r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end s0 conversion speed and memory, per core, against the TensorStore baseline.

    .venv/bin/python bench/bench_s0.py                      # both cases, writes bench/out/results.json
    .venv/bin/python bench/bench_s0.py --case fixture       # the real mCNS shard (needs ../shared)
    .venv/bin/python bench/bench_s0.py --case synthetic --chunks 32768

Each measurement runs in a fresh process pinned to ONE core (TensorStore's threads included), so
"chunks/s" is per core and "peak RSS" is that process's high-water mark (VmHWM).

* ours:     worker.transcode.transcode_shard: stream records, zstd, Numba DVID->cseg transcode,
            gzip, one TensorStore transaction on the neuroglancer_uint64_sharded kvstore.
* baseline: decode each block to a uint64 array (our decoder) and write it through TensorStore's
            neuroglancer_precomputed driver (its own cseg encoder + gzip), one transaction per
            shard, committed once. The raw arrays stay in the transaction until the commit
            (2 MiB per chunk), so the baseline is run on at most --baseline-chunks chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out"
FIXTURE = REPO.parent / "shared" / "fixtures"
FIXTURE_STEM = "30720_24576_28672"

# One 2048^3 shard of 32^3 chunks, mCNS s0 geometry (preshift 9, minishard 6).
SYNTH_SPEC = {
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "s0",
            "size": [2048, 2048, 2048],
            "resolution": [8, 8, 8],
            "chunk_sizes": [[64, 64, 64]],
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 9,
                "minishard_bits": 6,
                "shard_bits": 0,
            },
        }
    ],
}


def make_synthetic_shard(
    chunks: int, labels_per_chunk: int = 30, seed: int = 0, root: Path = OUT
) -> Path:
    """An s0-like DVID export file of `chunks` records (cached under `root`). Blocks come from
    a pool cut from a synthetic segmentation; each record gets its own body ids through
    `labels`."""
    from dvid2ng.dvidexport.synthetic import synthetic_volume
    from dvid2ng.dvidexport.writer import write_export_file
    from dvid2ng.kernels import dvid_block_table
    from dvid2ng.kernels.dvid_encode import encode_dvid_block

    src = root / f"synthetic-{chunks}-{labels_per_chunk}labels" / "s0"
    arrow = src / "0_0_0.arrow"
    if arrow.exists():
        return src.parent
    src.mkdir(parents=True, exist_ok=True)
    vol = synthetic_volume((384, 384, 384), n_labels=labels_per_chunk, seed=seed)
    rng = np.random.default_rng(seed)
    pool = []
    for z in range(0, 384, 64):
        for y in range(0, 384, 64):
            for x in range(0, 384, 64):
                block = encode_dvid_block(
                    np.ascontiguousarray(vol[z : z + 64, y : y + 64, x : x + 64]), rng=rng
                )
                pool.append((block, dvid_block_table(block)))
    order = rng.permutation(32 * 32 * 32)[:chunks]

    def records():
        for i, flat in enumerate(order):
            block, table = pool[i % len(pool)]
            cx, cy, cz = int(flat % 32), int(flat // 32 % 32), int(flat // 1024)
            bodies = np.where(
                table == 0, 0, table // 3 + np.uint64(i % 97)
            )  # merges, per-chunk ids
            yield cx, cy, cz, bodies.astype(np.uint64), table, block

    write_export_file(arrow, arrow.with_suffix(".csv"), records(), csv_layout="batch")
    (src.parent / "spec.json").write_text(json.dumps(SYNTH_SPEC))
    return src.parent


def _pin_one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def measure_ours(source: Path, spec_path: Path, scale: int, dest: Path) -> dict:
    _pin_one_core()
    import dvid2ng.kernels as kernels
    from dvid2ng.dispatcher.plan import plan_transcode
    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.worker.memory import peak_rss_bytes, reset_peak_rss
    from dvid2ng.worker.output import ScaleStore, io_context, write_info
    from dvid2ng.worker.transcode import transcode_shard

    kernels.warm_up()
    spec = VolumeSpec.load(spec_path)
    (task,) = plan_transcode(source, str(dest), spec, scales=[scale]).tasks
    write_info(str(dest), spec.info())
    store = ScaleStore(str(dest), spec.scales[scale], io_context(threads=1))
    reset_peak_rss()
    t = time.perf_counter()
    out = transcode_shard(task, store)
    seconds = time.perf_counter() - t
    return {
        "chunks": out.chunks_read,
        "seconds": seconds,
        "chunks_per_s": out.chunks_read / seconds,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "shard_bytes": out.bytes_written,
    }


def measure_baseline(source: Path, spec_path: Path, scale: int, dest: Path, limit: int) -> dict:
    _pin_one_core()
    import tensorstore as ts

    import dvid2ng.kernels as kernels
    from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.worker.memory import peak_rss_bytes, reset_peak_rss
    from dvid2ng.worker.output import io_context, kvstore_spec, write_info

    kernels.warm_up()
    spec = VolumeSpec.load(spec_path)
    write_info(str(dest), spec.info())
    sc = spec.scales[scale]
    arrow = next((source / f"s{scale}").glob("*.arrow"))
    vol = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": kvstore_spec(str(dest)),
            "scale_index": scale,
        },
        context=io_context(threads=1),
    ).result()
    reset_peak_rss()
    t = time.perf_counter()
    txn = ts.Transaction()
    n = 0
    with ExportFileReader(arrow, arrow.with_suffix(".csv")) as reader:
        for rec in reader:
            if n >= limit:
                break
            block = kernels.decode_dvid_block(decompress_block(rec, str(arrow)), rec.labels)
            ex, ey, ez = sc.chunk_extent((rec.x, rec.y, rec.z))
            if 0 in (ex, ey, ez):
                continue
            x0, y0, z0 = rec.x * 64, rec.y * 64, rec.z * 64
            view = vol.with_transaction(txn)[x0 : x0 + ex, y0 : y0 + ey, z0 : z0 + ez, 0]
            view.write(block[:ez, :ey, :ex].transpose(2, 1, 0)).result()
            n += 1
    txn.commit_async().result()
    seconds = time.perf_counter() - t
    return {
        "chunks": n,
        "seconds": seconds,
        "chunks_per_s": n / seconds,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
    }


def _child(args: argparse.Namespace) -> None:
    source, spec_path, dest = Path(args.source), Path(args.spec), Path(args.dest)
    if args.child == "ours":
        result = measure_ours(source, spec_path, args.scale, dest)
    else:
        result = measure_baseline(source, spec_path, args.scale, dest, args.baseline_chunks)
    print(json.dumps(result))


def run_child(
    kind: str, source: Path, spec: Path, scale: int, tag: str, baseline_chunks: int
) -> dict:
    import shutil

    dest = OUT / f"dest-{tag}-{kind}"
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--source",
        str(source),
        "--spec",
        str(spec),
        "--scale",
        str(scale),
        "--dest",
        str(dest),
        "--baseline-chunks",
        str(baseline_chunks),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    shutil.rmtree(dest, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fixture_source() -> Path:
    src = OUT / "fixture" / "s1"
    src.mkdir(parents=True, exist_ok=True)
    for suffix, name in (
        (".arrow", f"{FIXTURE_STEM}.arrow"),
        (".csv", f"{FIXTURE_STEM}-newformat.csv"),
    ):
        link = src / f"{FIXTURE_STEM}{suffix}"
        if not link.exists():
            link.symlink_to(FIXTURE / "mcns-s1-shard" / name)
    return src.parent


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--case", choices=["fixture", "synthetic", "all"], default="all")
    p.add_argument("--chunks", type=int, default=32768, help="records in the synthetic shard")
    p.add_argument(
        "--labels", type=int, default=30, help="labels per chunk in the synthetic shard (s0: 10-50)"
    )
    p.add_argument(
        "--baseline-chunks",
        type=int,
        default=1024,
        help="cap for the baseline (raw arrays in memory)",
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the best is reported"
    )
    p.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--dest", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    if args.case in ("fixture", "all"):
        if FIXTURE.is_dir():
            cases.append(
                (
                    "mcns-fixture",
                    fixture_source(),
                    FIXTURE / "volume-specs/mcns-export-specs.json",
                    1,
                )
            )
        else:
            print(f"skipping the fixture case: {FIXTURE} not found", file=sys.stderr)
    if args.case in ("synthetic", "all"):
        src = make_synthetic_shard(args.chunks, args.labels)
        cases.append((f"synthetic-{args.chunks}-{args.labels}labels", src, src / "spec.json", 0))
    results = {}
    for tag, source, spec, scale in cases:
        for kind in ("ours", "baseline"):
            runs = [
                run_child(kind, source, spec, scale, tag, args.baseline_chunks)
                for _ in range(args.repeat)
            ]
            best = max(runs, key=lambda r: r["chunks_per_s"])
            best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
            results[f"{tag}/{kind}"] = best
            print(
                f"{tag:>28} {kind:>8}: {best['chunks']:>6} chunks  {best['chunks_per_s']:8.1f} chunks/s/core  "
                f"peak RSS {best['peak_rss_mib']:7.1f} MiB  ({best['seconds']:.2f} s)",
                flush=True,
            )
    old = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    (OUT / "results.json").write_text(json.dumps({**old, **results}, indent=2))


if __name__ == "__main__":
    main()

"""Speed of the Z-compressed conversion (--z-compress N) against the normal one, per core.

    .venv/bin/python bench/bench_zcompress.py [--chunks 4096] [--labels 30]

* kernels: blocks/s of the direct DVID->cseg transcode (N=0) and of the Z-stride path (decode
  the kept slices, then cseg-encode the 64x64x64/(N+1) chunk) for N = 1 and 3, on synthetic
  s0-like blocks mapped to bodies;
* end to end: one generated shard file (bench_s0.py's synthetic s0-like shard) converted by
  worker.transcode.transcode_shard, as a 64^3 scale (N=0) and as a Z-compressed s0 (N=1, the
  destination spec halves Z and has chunk 64x64x32), each in a fresh process pinned to one core.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
OUT = REPO / "bench" / "out"


def kernel_rates(labels: int, repeat: int = 3) -> dict[str, float]:
    import dvid2ng.kernels as K
    from dvid2ng.dvidexport.synthetic import synthetic_volume
    from dvid2ng.kernels.dvid_encode import encode_dvid_block
    from dvid2ng.kernels.zstride import dvid_block_to_cseg_zstride

    K.warm_up()
    vol = synthetic_volume((256, 256, 256), n_labels=labels, seed=1)
    rng = np.random.default_rng(0)
    pool = []
    for z in range(0, 256, 64):
        for y in range(0, 256, 64):
            for x in range(0, 256, 64):
                block = encode_dvid_block(
                    np.ascontiguousarray(vol[z : z + 64, y : y + 64, x : x + 64]), rng=rng
                )
                table = K.dvid_block_table(block)
                pool.append((block, np.where(table == 0, 0, table // 3 + np.uint64(1))))
    cases = {
        "N=0 transcode": lambda b, t: K.dvid_block_to_cseg(b, t),
        "N=1 z-stride": lambda b, t: dvid_block_to_cseg_zstride(b, t, 2),
        "N=3 z-stride": lambda b, t: dvid_block_to_cseg_zstride(b, t, 4),
    }
    out = {}
    for name, fn in cases.items():
        fn(*pool[0])
        best = 0.0
        for _ in range(repeat):
            t = time.perf_counter()
            for b, tb in pool * 4:
                fn(b, tb)
            best = max(best, 4 * len(pool) / (time.perf_counter() - t))
        out[name] = best
    return out


def _child(source: Path, spec_path: Path, z: int, dest: Path) -> dict:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import dvid2ng.kernels as kernels
    from dvid2ng.dispatcher.plan import plan_transcode
    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.worker.memory import peak_rss_bytes, reset_peak_rss
    from dvid2ng.worker.output import ScaleStore, io_context, write_info
    from dvid2ng.worker.transcode import transcode_shard

    kernels.warm_up()
    spec = VolumeSpec.load(spec_path)
    (task,) = plan_transcode(source, str(dest), spec, z_compress=z).tasks
    write_info(str(dest), spec.info())
    store = ScaleStore(str(dest), spec.scales[0], io_context(threads=1))
    reset_peak_rss()
    t = time.perf_counter()
    out = transcode_shard(task, store)
    seconds = time.perf_counter() - t
    return {
        "chunks": out.chunks_read,
        "chunks_per_s": out.chunks_read / seconds,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--chunks", type=int, default=4096)
    p.add_argument("--labels", type=int, default=30)
    p.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        source, spec, z, dest = args.child
        print(json.dumps(_child(Path(source), Path(spec), int(z), Path(dest))))
        return 0
    from bench_s0 import SYNTH_SPEC, make_synthetic_shard

    rates = kernel_rates(args.labels)
    source = make_synthetic_shard(args.chunks, args.labels)
    native = copy.deepcopy(SYNTH_SPEC)
    native["scales"][0].update(size=[2048, 2048, 1024], chunk_sizes=[[64, 64, 32]])
    specs = {0: source / "spec.json", 1: OUT / "zcompress-native-spec.json"}
    specs[1].write_text(json.dumps(native))
    e2e = {}
    for z, spec in specs.items():
        dest = OUT / f"dest-zcompress-{z}"
        shutil.rmtree(dest, ignore_errors=True)
        cmd = [sys.executable, __file__, "--child", str(source), str(spec), str(z), str(dest)]
        e2e[z] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    print(f"kernels (blocks/s, one core, best of 3, {args.labels} labels per block)")
    for name, r in rates.items():
        print(f"  {name:<16} {r:>9,.0f}")
    print(f"end to end, transcode_shard, {args.chunks:,} chunks, one core")
    print(f"  {'':<16} {'chunks/s':>9} {'peak RSS MiB':>13}")
    for z, r in e2e.items():
        print(f"  {'N=' + str(z):<16} {r['chunks_per_s']:>9,.0f} {r['peak_rss_mib']:>13,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where should gzip happen? One shard of N chunks committed through TensorStore's
neuroglancer_uint64_sharded kvstore in one transaction, two ways:

* ts-gzip: kvstore opened with data_encoding gzip; raw chunk bytes go in, TensorStore gzips
  (level 9) during the commit and holds every raw chunk until then;
* pre-gzip: we gzip each chunk (libdeflate level 6) and open the kvstore with data_encoding raw
  (what dvid2ng does; the published info says gzip, which is what the bytes are).

    .venv/bin/python bench/bench_commit.py [--chunks 32768] [--chunk-kib 20]

Each way runs in a fresh process pinned to one core; peak RSS is that process's VmHWM. The
payload is real cseg data: the mCNS fixture's chunks, cycled (or synthetic bytes without it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARROW = REPO.parent / "shared/fixtures/mcns-s1-shard/30720_24576_28672.arrow"


def payloads(kib: int) -> list[bytes]:
    if ARROW.exists():
        from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
        from dvid2ng.kernels import dvid_block_to_cseg

        with ExportFileReader(ARROW, None) as r:
            return [
                bytes(dvid_block_to_cseg(decompress_block(rec, str(ARROW)), rec.labels, None)[0])
                for rec in r
            ]
    import numpy as np

    rng = np.random.default_rng(0)
    return [bytes(rng.integers(0, 4, kib * 1024, dtype=np.uint8)) for _ in range(64)]


def child(way: str, chunks: int, kib: int) -> dict:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import deflate
    import tensorstore as ts

    from dvid2ng.worker.memory import peak_rss_bytes, reset_peak_rss

    data = payloads(kib)
    with tempfile.TemporaryDirectory() as tmp:
        md = {
            "@type": "neuroglancer_uint64_sharded_v1",
            "hash": "identity",
            "preshift_bits": 9,
            "minishard_bits": 6,
            "shard_bits": 0,
            "minishard_index_encoding": "gzip",
            "data_encoding": "gzip" if way == "ts-gzip" else "raw",
        }
        ctx = ts.Context(
            {"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 1}}
        )
        kv = ts.KvStore.open(
            {
                "driver": "neuroglancer_uint64_sharded",
                "base": {"driver": "file", "path": tmp + "/"},
                "metadata": md,
            },
            context=ctx,
        ).result()
        reset_peak_rss()
        t0 = time.perf_counter()
        txn = ts.Transaction()
        kvt = kv.with_transaction(txn)
        for cid in range(chunks):
            raw = data[cid % len(data)]
            value = raw if way == "ts-gzip" else bytes(deflate.gzip_compress(raw, 6))
            kvt.write(cid.to_bytes(8, "big"), value).result()
        t1 = time.perf_counter()
        txn.commit_async().result()
        t2 = time.perf_counter()
        size = os.path.getsize(os.path.join(tmp, "0.shard"))
    return {
        "stage_s": t1 - t0,
        "commit_s": t2 - t1,
        "total_s": t2 - t0,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "shard_mib": size / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--chunks", type=int, default=32768)
    p.add_argument(
        "--chunk-kib", type=int, default=20, help="synthetic payload size without the fixture"
    )
    p.add_argument("--child", choices=["ts-gzip", "pre-gzip"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.chunks, a.chunk_kib)))
        return
    for way in ("ts-gzip", "pre-gzip"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                way,
                "--chunks",
                str(a.chunks),
                "--chunk-kib",
                str(a.chunk_kib),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{way:>9}: {a.chunks} chunks  stage {r['stage_s']:6.2f} s  commit {r['commit_s']:6.2f} s  "
            f"total {r['total_s']:6.2f} s  peak RSS {r['peak_rss_mib']:7.1f} MiB  shard {r['shard_mib']:6.1f} MiB"
        )


if __name__ == "__main__":
    main()

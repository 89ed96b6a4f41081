"""A large export + converted volume made of tiny shards, for verify's scale test and bench.

N DVID export files (one tiny record each, or a few) and N matching output shards holding the
same chunks, at mCNS s0 geometry (118,404 possible shards of 32^3 chunks). Files are stamped
from one template written by our DVID export writer (only the chunk coordinates change), and
shards are encoded by `schemas.shard_format.encode_shard`, so 26,000 of each take seconds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from dvid2ng.kernels import encode_cseg
from dvid2ng.schemas.shard_format import encode_shard
from dvid2ng.schemas.sharding import (
    compressed_morton_code,
    dvid_file_stem,
    shard_and_minishard,
    shard_bounds,
    shard_name,
)
from dvid2ng.schemas.spec import VolumeSpec

# mCNS s0 geometry (formats.md §7.1): 94088 x 78317 x 134576 voxels, 9/6/19 bits.
BIG_SPEC = {
    "@type": "neuroglancer_multiscale_volume",
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "8x8x8",
            "size": [94088, 78317, 134576],
            "resolution": [8, 8, 8],
            "voxel_offset": [0, 0, 0],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "compressed_segmentation_block_size": [8, 8, 8],
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 9,
                "minishard_bits": 6,
                "shard_bits": 19,
                "minishard_index_encoding": "gzip",
                "data_encoding": "gzip",
            },
        }
    ],
}
LABEL = 7


def _solid_block(label: int) -> bytes:
    return struct.pack("<4I", 8, 8, 8, 1) + struct.pack("<Q", label)


def _template(tmp: Path, n_chunks: int) -> tuple[bytes, list[int], str]:
    """(arrow bytes, byte offsets of every chunk_x/y/z value, CSV text with {x0}.. fields)."""
    from dvid2ng.dvidexport.writer import write_export_file

    def write(base: int, name: str) -> tuple[bytes, str]:
        recs = [
            (
                base + 3 * i,
                base + 3 * i + 1,
                base + 3 * i + 2,
                [LABEL],
                [LABEL],
                _solid_block(LABEL),
            )
            for i in range(n_chunks)
        ]
        write_export_file(tmp / f"{name}.arrow", tmp / f"{name}.csv", recs, batch_size=n_chunks)
        return (tmp / f"{name}.arrow").read_bytes(), (tmp / f"{name}.csv").read_text()

    a, csv_a = write(1000, "a")
    b, _ = write(2000, "b")
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    # each differing int32 starts at a position whose value in `a` is 1000 + k
    offsets = [i for i in diff if struct.unpack_from("<i", a, i)[0] - 1000 in range(3 * n_chunks)]
    offsets.sort(key=lambda i: struct.unpack_from("<i", a, i)[0])
    assert len(offsets) == 3 * n_chunks, "template coordinates not found"
    lines = csv_a.splitlines()
    rows = [",".join(["{}", "{}", "{}", *ln.split(",")[3:]]) for ln in lines[2:]]
    return a, offsets, "\n".join([*lines[:2], *rows]) + "\n"


def make_many_shards(
    root: Path, n_shards: int, *, chunks_per_shard: int = 1, write_output: bool = True
) -> tuple[Path, Path, Path]:
    """(source, dest, spec path) with `n_shards` export files and their converted shards."""
    spec = VolumeSpec.from_json(BIG_SPEC)
    scale = spec.scales[0]
    source, dest = root / "export", root / "volume"
    (source / "s0").mkdir(parents=True, exist_ok=True)
    (source / "export.log").write_text("made by tests/many_shards.py\n")
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(BIG_SPEC))
    arrow, offsets, csv = _template(root, chunks_per_shard)
    cseg = encode_cseg(np.full((64, 64, 64), LABEL, np.uint64)).tobytes()
    import zlib

    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk_bytes = gz.compress(cseg) + gz.flush()
    if write_output:
        (dest / scale.key).mkdir(parents=True, exist_ok=True)
        (dest / "info").write_text(json.dumps(spec.info()))
    shard = 0
    made = 0
    buf = bytearray(arrow)
    while made < n_shards:
        lo, hi = shard_bounds(scale, shard)
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            shard += 1
            continue
        # chunks spread over minishards: a minishard is 8^3 chunks (preshift 9)
        chunks = [
            (lo[0] + (8 * i) % 32, lo[1] + 8 * (i // 4 % 4), lo[2] + 8 * (i // 16))
            for i in range(chunks_per_shard)
        ]
        chunks = [c for c in chunks if all(c[d] < hi[d] for d in range(3))] or [lo]
        if len(chunks) != chunks_per_shard:
            shard += 1
            continue
        for i, c in enumerate(chunks):
            for d in range(3):
                struct.pack_into("<i", buf, offsets[3 * i + d], c[d])
        stem = dvid_file_stem(scale, lo)
        (source / "s0" / f"{stem}.arrow").write_bytes(buf)
        (source / "s0" / f"{stem}.csv").write_text(csv.format(*(v for c in chunks for v in c)))
        if write_output:
            ids = {compressed_morton_code(c, scale.bits): c for c in chunks}
            minis = {cid: shard_and_minishard(scale, c)[1] for cid, c in ids.items()}
            blob = encode_shard(
                dict.fromkeys(ids, chunk_bytes), minis, scale.sharding.minishard_bits
            )
            (dest / scale.key / f"{shard_name(scale, shard)}.shard").write_bytes(blob)
        made += 1
        shard += 1
    return source, dest, spec_path


# VmHWM of the child's own address space: ru_maxrss would carry over the parent's RSS at fork
# (Linux keeps it across exec), so a child of a big pytest process would report pytest's size.
_MEASURE = """
import json, sys, time
from dvid2ng.dispatcher.cli import main
from dvid2ng.worker.memory import peak_rss_bytes
t = time.perf_counter()
code = main(sys.argv[2:])
seconds = time.perf_counter() - t
peak = peak_rss_bytes()
open(sys.argv[1], "w").write(json.dumps({"code": code, "seconds": seconds, "peak_rss": peak}))
"""


def run_measured(argv: list[str], out: Path, env: dict | None = None) -> dict:
    """Run `dvid2ng <argv>` in a fresh process; its exit code, wall seconds (after imports)
    and its own peak RSS in bytes."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(out), *argv],
        capture_output=True,
        text=True,
        env=env,
    )
    if not out.exists():
        raise RuntimeError(f"dvid2ng {argv} crashed: {proc.stderr[-2000:]}")
    result = json.loads(out.read_text())
    result["stdout"], result["stderr"] = proc.stdout, proc.stderr
    return result

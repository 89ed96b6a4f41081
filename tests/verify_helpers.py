"""Helpers for the verify / validate-dvid tests: an export with background regions (so some
shards have no source file), its conversion, and shard surgery through our shard format code
(which tests/test_shard_format.py checks against TensorStore)."""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dvid2ng.dispatcher.demo import DEMO_SPEC
from dvid2ng.dvidexport.synthetic import synthetic_agglomeration, synthetic_volume
from dvid2ng.dvidexport.writer import write_export, write_export_file
from dvid2ng.schemas.shard_format import (
    decode_minishard_index,
    encode_shard,
    parse_shard_index,
    shard_index_bytes,
    split_chunk_ids,
)
from dvid2ng.schemas.sharding import shard_name, shard_of_chunk
from dvid2ng.schemas.spec import VolumeSpec


def _scale(key, size, res, preshift, minishard, shard):
    s = copy.deepcopy(DEMO_SPEC["scales"][0])
    s.update(key=key, size=size, resolution=res)
    s["sharding"].update(preshift_bits=preshift, minishard_bits=minishard, shard_bits=shard)
    return s


# s0: grid 5x4x4 chunks, cubic shards of 2^3 chunks (preshift 2 + minishard 1 = 3 bits), 12
# shards in the grid; s1: grid 3x2x2, one 2^3-chunk shard column (2 shards).
VERIFY_SPEC = {
    **{k: v for k, v in DEMO_SPEC.items() if k != "scales"},
    "scales": [
        _scale("8x8x8", [300, 256, 250], [8, 8, 8], 2, 1, 4),
        _scale("16x16x16", [150, 128, 125], [16, 16, 16], 2, 1, 1),
    ],
}
BACKGROUND_FROM_X = 256  # voxels x >= 256 are background at s0: the shards there get no file


@dataclass
class Conversion:
    source: Path
    dest: Path
    spec_path: Path
    spec: VolumeSpec
    bodies: dict[int, np.ndarray]


def make_verify_export(
    root: Path, seed: int = 11, checker_holes: bool = False
) -> tuple[Path, Path, VolumeSpec, dict]:
    """checker_holes: background on every other voxel of a 32^3 corner, so the 2x2x2 windows
    there hold 4 background voxels: TensorStore's mode picks 0, DVID's rule the label."""
    spec = VolumeSpec.from_json(VERIFY_SPEC)
    size = spec.scales[0].size
    s0 = synthetic_volume((size[2], size[1], size[0]), n_labels=40, seed=seed, big_ids=True)
    s0[:, :, BACKGROUND_FROM_X:] = 0
    if checker_holes:
        z, y, x = np.indices((32, 32, 32))
        s0[:32, :32, :32][(x + y + z) % 2 == 0] = 0
    s1 = np.ascontiguousarray(s0[::2, ::2, ::2])
    to_body = synthetic_agglomeration(np.unique(s0), seed=seed)
    source = root / "export"
    write_export(source, spec, {0: s0, 1: s1}, labels_of=to_body, seed=seed)
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(VERIFY_SPEC))
    return source, spec_path, spec, {0: to_body(s0), 1: to_body(s1)}


def convert(source: Path, dest: Path, spec: VolumeSpec, state: Path, **plan_kw) -> None:
    from dvid2ng.dispatcher.embedded import run_embedded
    from dvid2ng.dispatcher.plan import plan_transcode

    plan = plan_transcode(source, str(dest), spec, **plan_kw)
    summary = run_embedded(plan, workers=2, state_dir=state)
    assert summary.exit_code == 0, summary.failed


# --- shard surgery ------------------------------------------------------------------------------


def read_shard(path: Path, minishard_bits: int, preshift_bits: int) -> dict[int, bytes]:
    data = path.read_bytes()
    n = shard_index_bytes(minishard_bits)
    index = parse_shard_index(data[:n], minishard_bits)
    out = {}
    for m in index.nonempty:
        s, e = int(index.starts[m]), int(index.ends[m])
        mi = decode_minishard_index(
            data[s:e], encoding="gzip", index_bytes=n, index_start=s, max_entries=1 << preshift_bits
        )
        for cid, start, size in zip(mi.chunk_ids, mi.starts, mi.sizes, strict=True):
            out[int(cid)] = data[int(start) : int(start + size)]
    return out


def write_shard(path: Path, chunks: dict[int, bytes], spec: VolumeSpec, scale: int) -> None:
    sh = spec.scales[scale].sharding
    ids = np.array(sorted(chunks), np.uint64)
    _, minis = split_chunk_ids(ids, sh.preshift_bits, sh.minishard_bits, sh.shard_bits)
    path.write_bytes(
        encode_shard(
            chunks, dict(zip(sorted(chunks), minis.tolist(), strict=True)), sh.minishard_bits
        )
    )


def shard_file(dest: Path, spec: VolumeSpec, scale: int, chunk) -> Path:
    sc = spec.scales[scale]
    return dest / sc.key / f"{shard_name(sc, shard_of_chunk(sc, chunk))}.shard"


def write_background_file(arrow: Path, chunks, mixed_stale: bool = True) -> None:
    """An export file of all-background records, as DVID wrote them before it skipped such
    blocks: solid 0 blocks with labels [0], and (mixed_stale) one block whose table holds a
    stale non-zero entry no voxel uses, so only decoding shows it is background."""
    solid0 = struct.pack("<4I", 8, 8, 8, 1) + struct.pack("<Q", 0)
    recs = [(c[0], c[1], c[2], [0], [0], solid0) for c in chunks]
    if mixed_stale:  # a 2-entry table [0, 77] whose second entry no sub-block uses
        two = struct.pack("<4I", 8, 8, 8, 2) + struct.pack("<2Q", 0, 77)
        counts = struct.pack("<512H", *([1] * 512))
        indices = struct.pack("<512I", *([0] * 512))
        block = two + counts + indices
        x, y, z = recs[-1][:3]
        recs[-1] = (x, y, z, [0, 77], [0, 77], block)
    write_export_file(arrow, arrow.with_suffix(".csv"), recs)

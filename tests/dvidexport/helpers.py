"""Shared helpers for the dvidexport tests: small generated records and raw Arrow writers
for files our own writer refuses to (or would never) produce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from dvid2ng.schemas.dvid import DVID_ARROW_SCHEMA


def random_records(
    n: int, seed: int = 0, *, max_labels: int = 6, max_block: int = 300
) -> list[tuple[int, int, int, np.ndarray, np.ndarray, bytes]]:
    """`n` records with distinct chunk coordinates in random order; the "DVID block" is random
    bytes (the reader never decodes it)."""
    rng = np.random.default_rng(seed)
    side = max(2, int(np.ceil(n ** (1 / 3))) + 1)
    flat = rng.choice(side**3, size=n, replace=False)
    out = []
    for f in flat.tolist():
        x, y, z = f % side, (f // side) % side, f // side**2
        k = int(rng.integers(1, max_labels + 1))
        sv = rng.integers(0, 2**64 - 1, size=k, dtype=np.uint64, endpoint=True)
        labels = sv // np.uint64(3)
        block = rng.bytes(int(rng.integers(1, max_block + 1)))
        out.append((x + 100, y + 200, z + 300, labels, sv, block))
    return out


def same_record(rec, raw) -> bool:
    x, y, z, labels, sv, _ = raw
    return (
        rec.chunk == (x, y, z)
        and np.array_equal(rec.labels, labels)
        and np.array_equal(rec.supervoxels, sv)
    )


def write_raw_stream(path: Path, batches: list[pa.RecordBatch], schema: pa.Schema) -> None:
    """Write record batches with an arbitrary schema as an IPC stream (no checks)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        for b in batches:
            w.write_batch(b)


def dvid_batch(
    xs, ys, zs, labels, supervoxels, blocks, sizes, schema: pa.Schema = DVID_ARROW_SCHEMA
) -> pa.RecordBatch:
    """A record batch from plain lists, unchecked (labels/supervoxels are lists of lists)."""
    cols = {
        "chunk_x": pa.array(xs, pa.int32()),
        "chunk_y": pa.array(ys, pa.int32()),
        "chunk_z": pa.array(zs, pa.int32()),
        "labels": pa.array(labels, pa.list_(pa.uint64())),
        "supervoxels": pa.array(supervoxels, pa.list_(pa.uint64())),
        "dvid_compressed_block": pa.array(blocks, pa.binary()),
        "uncompressed_size": pa.array(sizes, pa.uint32()),
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)

"""Which chunk ids a TensorStore `neuroglancer_uint64_sharded` kvstore holds, without its list().

TensorStore's sharded `list()` intermittently never completes (about once in a thousand
one-shard stores here, on no particular spec, and `result(timeout=)` does not return either),
which hung CI twice. Point reads never did, in 5,000 examples of the geometry test's strategy.
"""

from __future__ import annotations

import struct

import tensorstore as ts


def grid_bits(grid: list[int] | tuple[int, ...]) -> list[int]:
    """Bits per axis of a chunk grid (what the compressed Morton code of its chunks uses)."""
    return [max(0, (g - 1).bit_length()) for g in grid]


def chunk_ids_in(sharded: ts.KvStore, bits: list[int] | tuple[int, ...]) -> set[int]:
    """The chunk ids `sharded` holds among every id a grid of `bits` allows (all ids below
    2**sum(bits)): no chunk of the volume can hide from the reads, and the key space comes from
    the grid alone, not from our Morton code."""
    reads = [(cid, sharded.read(struct.pack(">Q", cid))) for cid in range(1 << sum(bits))]
    return {cid for cid, read in reads if read.result().state == "value"}

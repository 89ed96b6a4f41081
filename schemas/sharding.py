"""Neuroglancer sharding geometry for one scale (identity hash), in plain Python.

The bulk versions for many chunks at once are the Numba kernels in `kernels.morton`; tests keep
the two equal. The rules follow TensorStore's `GetShardChunkHierarchy` and DVID's export naming.
"""

from __future__ import annotations

import math

from dvid2ng.schemas.spec import DVID_BLOCK, Scale

Chunk = tuple[int, int, int]


def compressed_morton_code(chunk: Chunk, bits: tuple[int, int, int]) -> int:
    code = 0
    j = 0
    for i in range(max(bits)):
        for d in range(3):
            if i < bits[d]:
                code |= ((chunk[d] >> i) & 1) << j
                j += 1
    return code


def morton_axis_tables(scale: Scale) -> tuple[list[int], list[int], list[int]]:
    """Per-axis contributions to the compressed Morton code: code(x, y, z) = tx[x] | ty[y] | tz[z].

    The code only interleaves bits, so each axis adds its own bits independently; with these
    tables a chunk id costs three lookups instead of a bit loop.
    """
    tables = []
    for d in range(3):
        unit = [0, 0, 0]
        row = []
        for v in range(scale.grid[d]):
            unit[d] = v
            row.append(compressed_morton_code(tuple(unit), scale.bits))  # type: ignore[arg-type]
        tables.append(row)
    return tables[0], tables[1], tables[2]


def split_code(scale: Scale, code: int) -> tuple[int, int]:
    """(shard, minishard) of a chunk id under the identity hash."""
    sh = scale.sharding
    h = code >> sh.preshift_bits if sh.preshift_bits < 64 else 0
    minishard = h & ((1 << sh.minishard_bits) - 1)
    shard = (h >> sh.minishard_bits) & ((1 << sh.shard_bits) - 1)
    return shard, minishard


def shard_of_code(scale: Scale, code: int) -> int:
    return split_code(scale, code)[0]


def shard_and_minishard(scale: Scale, chunk: Chunk) -> tuple[int, int]:
    return split_code(scale, compressed_morton_code(chunk, scale.bits))


def shard_of_chunk(scale: Scale, chunk: Chunk) -> int:
    return shard_and_minishard(scale, chunk)[0]


def shard_name(scale: Scale, shard: int) -> str:
    """Lowercase hex, zero-padded to ceil(shard_bits / 4) digits ("0" when shard_bits is 0)."""
    width = math.ceil(scale.sharding.shard_bits / 4)
    return format(shard, f"0{width}x") if width else format(shard, "x")


def _consume(cur: list[int], bits: tuple[int, int, int], d: int) -> int:
    """Consume one Morton bit: advance to the next axis with bits left; returns the axis used."""
    for _ in range(3):
        if cur[d] < bits[d]:
            break
        d = (d + 1) % 3
    cur[d] += 1
    return d


def _walk(scale: Scale, nbits: int) -> tuple[list[int], int]:
    cur = [0, 0, 0]
    d = 0
    for _ in range(min(nbits, scale.total_bits)):
        d = (_consume(cur, scale.bits, d) + 1) % 3
    return cur, d


def shard_shape(scale: Scale) -> Chunk:
    """Chunks per shard along each axis (clipped to the grid)."""
    sh = scale.sharding
    cur, _ = _walk(scale, sh.preshift_bits + sh.minishard_bits)
    return tuple(min(g, 1 << c) for g, c in zip(scale.grid, cur, strict=True))  # type: ignore[return-value]


def shard_origin(scale: Scale, shard: int) -> Chunk:
    """First chunk (x, y, z) of shard `shard`."""
    sh = scale.sharding
    cur, d = _walk(scale, sh.preshift_bits + sh.minishard_bits)
    origin = [0, 0, 0]
    remaining = scale.total_bits - min(scale.total_bits, sh.preshift_bits + sh.minishard_bits)
    for i in range(min(sh.shard_bits, remaining)):
        for _ in range(3):
            if cur[d] < scale.bits[d]:
                break
            d = (d + 1) % 3
        if (shard >> i) & 1:
            origin[d] += 1 << cur[d]
        cur[d] += 1
        d = (d + 1) % 3
    return tuple(origin)  # type: ignore[return-value]


def shard_bounds(scale: Scale, shard: int) -> tuple[Chunk, Chunk]:
    """[lo, hi) chunk bounds of a shard, clipped to the grid (empty when hi <= lo on an axis)."""
    lo = shard_origin(scale, shard)
    shape = shard_shape(scale)
    hi = tuple(min(g, o + s) for g, o, s in zip(scale.grid, lo, shape, strict=True))
    return lo, hi  # type: ignore[return-value]


def shard_chunk_count(scale: Scale, shard: int) -> int:
    lo, hi = shard_bounds(scale, shard)
    return math.prod(max(0, h - low) for low, h in zip(lo, hi, strict=True))


def num_shards(scale: Scale) -> int:
    sh = scale.sharding
    eff = min(sh.shard_bits, max(0, scale.total_bits - sh.preshift_bits - sh.minishard_bits))
    return 1 << eff


# --- DVID export-shards naming ---------------------------------------------------------------


def dvid_shard_dim_voxels(scale: Scale) -> int:
    """DVID's single cubic shard side D in voxels: max over axes of shard extent (chunks) * 64."""
    return max(shard_shape(scale)) * DVID_BLOCK


def dvid_file_stem(scale: Scale, chunk: Chunk) -> str:
    """The `X_Y_Z` name DVID gives the export file holding `chunk` (voxel origin of its shard)."""
    dim = dvid_shard_dim_voxels(scale)
    return "_".join(str((c * DVID_BLOCK) // dim * dim) for c in chunk)


def dvid_name_collision(scale: Scale) -> tuple[int, int, str] | None:
    """Two shards DVID's cubic file naming would put into one export file, or None.

    DVID names a shard's file after the cube of side D (its largest shard extent) holding its
    first block. Along an axis where shards are thinner than D and the grid holds more than one
    of them, neighbouring shards fall into one cube and both are appended to one file
    (formats.md §2.7.2). Returns (shard_a, shard_b, file stem) for the first such pair.
    """
    shape = shard_shape(scale)
    side = max(shape)
    for d in range(3):
        if shape[d] < side and scale.grid[d] > shape[d]:
            second = [0, 0, 0]
            second[d] = shape[d]
            a = shard_of_chunk(scale, (0, 0, 0))
            b = shard_of_chunk(scale, tuple(second))  # type: ignore[arg-type]
            return a, b, dvid_file_stem(scale, (0, 0, 0))
    return None


def parse_dvid_file_stem(stem: str) -> tuple[int, int, int]:
    parts = stem.split("_")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{stem!r} is not a DVID export file name of the form X_Y_Z (voxels)")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def shard_of_dvid_file(scale: Scale, stem: str, z_compress: int = 0) -> int:
    """Neuroglancer shard number of the DVID export file `X_Y_Z` (voxel origin of its shard)."""
    x, y, z = parse_dvid_file_stem(stem)
    z //= z_compress + 1
    chunk = (x // scale.chunk_size[0], y // scale.chunk_size[1], z // scale.chunk_size[2])
    if any(c >= g for c, g in zip(chunk, scale.grid, strict=True)):
        raise ValueError(
            f"DVID file {stem}: origin chunk {chunk} is outside the scale {scale.index} grid {scale.grid}"
        )
    return shard_of_chunk(scale, chunk)

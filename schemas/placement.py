"""Where the chunks of one DVID export file may go: the output shard its name stands for, and
the region DVID's cubic naming lets it cover (formats.md §2.4-2.5, §2.7.2, §7.3, §8).

Pure geometry, shared by validate-dvid and verify; the worker applies the same rules
(`worker.transcode`): a record inside the named shard is converted; one past the volume edge
but inside the file's DVID region is clipped away (DVID exports such blocks); anything else
belongs to another shard, which happens when DVID's cubic file names collide.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from dvid2ng.schemas.sharding import (
    Chunk,
    dvid_shard_dim_voxels,
    parse_dvid_file_stem,
    shard_name,
    shard_of_chunk,
    shard_of_dvid_file,
    shard_origin,
    shard_shape,
)
from dvid2ng.schemas.spec import DVID_BLOCK, Scale

INSIDE, OUTSIDE_VOLUME, MISPLACED = "inside", "outside-volume", "misplaced"


@dataclass(frozen=True)
class FilePlacement:
    scale: Scale
    stem: str
    shard: int
    lo: Chunk  # chunk bounds [lo, hi) of the named shard, clipped to the grid
    hi: Chunk
    dvid_lo: Chunk  # chunk region [dvid_lo, dvid_hi) DVID may put into this file
    dvid_hi: Chunk

    @property
    def shard_name(self) -> str:
        return shard_name(self.scale, self.shard)

    def where(self, chunk: Chunk) -> str:
        """INSIDE the named shard, OUTSIDE_VOLUME (past the volume edge inside the file's
        region: clipped, as the worker does) or MISPLACED (belongs to another shard)."""
        if all(self.lo[d] <= chunk[d] < self.hi[d] for d in range(3)):
            return INSIDE
        if 0 in self.scale.chunk_extent(chunk) and all(
            self.dvid_lo[d] <= chunk[d] < self.dvid_hi[d] for d in range(3)
        ):
            return OUTSIDE_VOLUME
        return MISPLACED

    def shard_of(self, chunk: Chunk) -> int | None:
        """The output shard a chunk inside the grid belongs to (None outside the grid)."""
        if any(c < 0 or c >= g for c, g in zip(chunk, self.scale.grid, strict=True)):
            return None
        return shard_of_chunk(self.scale, chunk)


@functools.lru_cache(maxsize=256)
def _geometry(scale: Scale) -> tuple[Chunk, int, tuple[tuple[int, int], ...]]:
    """(shard shape, DVID cube side in chunks, per shard bit the (axis, shift) it sets in the
    shard origin): the bit walk of `schemas.sharding.shard_origin`, done once per scale."""
    shape = shard_shape(scale)
    side = dvid_shard_dim_voxels(scale) // DVID_BLOCK
    bits = []
    for i in range(scale.sharding.shard_bits):
        origin = shard_origin(scale, 1 << i)
        axes = [(d, o.bit_length() - 1) for d, o in enumerate(origin) if o]
        if not axes:
            break  # bits past the grid's: every higher shard number is outside it
        bits.append(axes[0])
    return shape, side, tuple(bits)


def fast_shard_bounds(scale: Scale, shard: int) -> tuple[Chunk, Chunk]:
    """`schemas.sharding.shard_bounds` with the bit walk cached per scale (tests keep the two
    equal); verify calls it once per shard of a 26,000-shard listing."""
    shape, _, bits = _geometry(scale)
    lo = [0, 0, 0]
    for i, (d, shift) in enumerate(bits):
        if (shard >> i) & 1:
            lo[d] |= 1 << shift
    hi = tuple(min(g, o + s) for g, o, s in zip(scale.grid, lo, shape, strict=True))
    return tuple(lo), hi  # type: ignore[return-value]


def place_dvid_file(scale: Scale, stem: str, z_compress: int = 0) -> FilePlacement:
    """Placement of DVID file `stem` (X_Y_Z voxel origin at DVID's resolution) in the output
    `scale`; `z_compress` is the scale's own (0 except for a Z-compressed s0). Raises ValueError
    when the name is not X_Y_Z or points outside the grid."""
    shard = shard_of_dvid_file(scale, stem, z_compress)
    lo, hi = fast_shard_bounds(scale, shard)
    origin = parse_dvid_file_stem(stem)
    # DVID blocks are 64^3 at DVID's resolution; with z-compress one block is one output chunk,
    # so DVID block coordinates are output chunk coordinates in both cases.
    side = _geometry(scale)[1]
    dvid_lo = tuple(o // DVID_BLOCK for o in origin)
    dvid_hi = tuple(v + side for v in dvid_lo)
    return FilePlacement(scale, stem, shard, lo, hi, dvid_lo, dvid_hi)  # type: ignore[arg-type]


def naming_collision_risk(scale: Scale) -> str:
    """Why DVID's cubic file names can put several output shards into one file at this scale
    ('' when they cannot): shards narrower than DVID's cube side D along an axis that holds more
    than one of them (formats.md §2.7.2)."""
    shape = shard_shape(scale)
    side = dvid_shard_dim_voxels(scale) // DVID_BLOCK
    axes = [
        "xyz"[d]
        for d in range(3)
        if shape[d] < side and scale.grid[d] > shape[d] and min(side, scale.grid[d]) > shape[d]
    ]
    if not axes:
        return ""
    return (
        f"shards are {shape[0]}x{shape[1]}x{shape[2]} chunks but DVID names files on a cubic grid "
        f"of {side} chunks, so along {', '.join(axes)} several shards share one file name "
        "(preshift_bits + minishard_bits is not a multiple of 3)"
    )

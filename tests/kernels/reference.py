"""Slow, obvious reference implementations written straight from formats.md (§5, §7.3, §7.5).

Plain Python / numpy, no Numba; used by the tests to cross-check the kernels.
"""

from __future__ import annotations

import struct

import numpy as np

# --------------------------------------------------------------------------------------
# DVID compressed label block (§5)


def decode_dvid_block_reference(block: bytes, table=None) -> np.ndarray:
    """Decode a DVID block (§5.3 pseudo-code). Raises ValueError on any inconsistency."""
    block = bytes(block)
    if len(block) < 16:
        raise ValueError("header truncated")
    gx, gy, gz, n = struct.unpack_from("<4I", block, 0)
    if min(gx, gy, gz) < 1:
        raise ValueError("bad grid")
    if n == 0:
        raise ValueError("0 labels")
    if len(block) < 16 + 8 * n:
        raise ValueError("table truncated")
    labels = list(struct.unpack_from(f"<{n}Q", block, 16))
    if table is not None:
        table = [int(v) for v in table]
        if len(table) != n:
            raise ValueError("table length")
        labels = table
    out = np.zeros((8 * gz, 8 * gy, 8 * gx), dtype=np.uint64)
    if n == 1:
        out[...] = labels[0]
        return out
    nsb = gx * gy * gz
    pos = 16 + 8 * n
    if len(block) < pos + 2 * nsb:
        raise ValueError("counts truncated")
    counts = struct.unpack_from(f"<{nsb}H", block, pos)
    pos += 2 * nsb
    total = sum(counts)
    if len(block) < pos + 4 * total:
        raise ValueError("indices truncated")
    indices = struct.unpack_from(f"<{total}I", block, pos)
    pos += 4 * total
    values = block[pos:]
    bitpos = 0
    ip = 0
    sb = 0
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                c = counts[sb]
                sb += 1
                if any(indices[ip + j] >= n for j in range(c)):
                    raise ValueError("index out of range")
                pal = [labels[indices[ip + j]] for j in range(c)]
                ip += c
                region = out[8 * sz : 8 * sz + 8, 8 * sy : 8 * sy + 8, 8 * sx : 8 * sx + 8]
                if c == 0:
                    region[...] = 0
                elif c == 1:
                    region[...] = pal[0]
                else:
                    b = (c - 1).bit_length()
                    for z in range(8):
                        for y in range(8):
                            for x in range(8):
                                byte = bitpos >> 3
                                off = bitpos & 7
                                if off + b > 8:
                                    if byte + 1 >= len(values):
                                        raise ValueError("values truncated")
                                    w = (values[byte] << 8) | values[byte + 1]
                                    v = (w >> (16 - off - b)) & ((1 << b) - 1)
                                else:
                                    if byte >= len(values):
                                        raise ValueError("values truncated")
                                    v = (values[byte] >> (8 - off - b)) & ((1 << b) - 1)
                                bitpos += b
                                if v >= c:
                                    raise ValueError("value out of range")
                                region[z, y, x] = pal[v]
                    bitpos = (bitpos + 7) // 8 * 8
    if bitpos // 8 != len(values):
        raise ValueError("size mismatch")
    return out


def _first_appearance(values) -> list[int]:
    seen: dict[int, None] = {}
    for v in values:
        seen.setdefault(int(v), None)
    return list(seen)


def encode_dvid_block_reference(volume_zyx: np.ndarray, table_order=None) -> bytes:
    """Encode a ZYX uint64 volume (sides multiples of 8) like DVID's MakeBlock + MarshalBinary.

    Sub-block palettes are in order of first appearance (scan z, y, x); the block table is
    `table_order` if given (it must contain every label; extra entries are kept), else the
    union of the palettes in order of first appearance. A block holding a single label is
    written as a 24-byte solid block.
    """
    vol = np.asarray(volume_zyx, dtype=np.uint64)
    nz, ny, nx = vol.shape
    assert nz % 8 == 0 and ny % 8 == 0 and nx % 8 == 0 and min(vol.shape) > 0
    gx, gy, gz = nx // 8, ny // 8, nz // 8
    subs = []
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                sub = vol[8 * sz : 8 * sz + 8, 8 * sy : 8 * sy + 8, 8 * sx : 8 * sx + 8].reshape(-1)
                subs.append(sub)
    palettes = [_first_appearance(s) for s in subs]
    distinct = _first_appearance(v for p in palettes for v in p)
    if len(distinct) == 1:
        return struct.pack("<4IQ", gx, gy, gz, 1, distinct[0])
    table = distinct if table_order is None else [int(v) for v in table_order]
    pos_of: dict[int, int] = {}
    for i, v in enumerate(table):
        pos_of.setdefault(v, i)
    missing = set(distinct) - set(pos_of)
    if missing:
        raise ValueError(f"table_order lacks labels {sorted(missing)[:5]}")
    out = bytearray(struct.pack("<4I", gx, gy, gz, len(table)))
    out += struct.pack(f"<{len(table)}Q", *table)
    out += struct.pack(f"<{len(palettes)}H", *(len(p) for p in palettes))
    for p in palettes:
        out += struct.pack(f"<{len(p)}I", *(pos_of[v] for v in p))
    for sub, p in zip(subs, palettes, strict=True):
        if len(p) < 2:
            continue
        b = (len(p) - 1).bit_length()
        local = {v: i for i, v in enumerate(p)}
        idx = np.array([local[int(v)] for v in sub], dtype=np.int64)
        # each index as b bits, most significant first; one MSB-first bitstream, zero padded
        bits = (idx[:, None] >> np.arange(b - 1, -1, -1)[None, :]) & 1
        out += np.packbits(bits.reshape(-1).astype(np.uint8)).tobytes()
    return bytes(out)


# --------------------------------------------------------------------------------------
# compressed_segmentation (§7.5)


def encode_cseg_reference(volume_zyx: np.ndarray, block_size=(8, 8, 8)) -> bytes:
    vol = np.asarray(volume_zyx, dtype=np.uint64)
    nz, ny, nx = vol.shape
    bx, by, bz = block_size
    gx, gy, gz = -(-nx // bx), -(-ny // by), -(-nz // bz)
    nblocks = gx * gy * gz
    words: list[int] = [0] * (2 * nblocks)  # counted from byte 4
    written_tables: dict[tuple[int, ...], int] = {}
    for kz in range(gz):
        for ky in range(gy):
            for kx in range(gx):
                sub = vol[kz * bz : (kz + 1) * bz, ky * by : (ky + 1) * by, kx * bx : (kx + 1) * bx]
                table = tuple(sorted({int(v) for v in sub.reshape(-1)}))
                m = len(table)
                bits = 0
                if m > 1:
                    bits = 1
                    while (1 << bits) < m:
                        bits *= 2
                index = {v: i for i, v in enumerate(table)}
                nvals = bx * by * bz
                packed = [0] * ((bits * nvals + 31) // 32)
                if bits:
                    for z in range(sub.shape[0]):
                        for y in range(sub.shape[1]):
                            for x in range(sub.shape[2]):
                                k = x + bx * (y + by * z)
                                p = k * bits
                                packed[p // 32] |= index[int(sub[z, y, x])] << (p % 32)
                values_off = len(words)
                words.extend(packed)
                if table in written_tables:
                    table_off = written_tables[table]
                else:
                    table_off = len(words)
                    written_tables[table] = table_off
                    for v in table:
                        words.extend((v & 0xFFFFFFFF, v >> 32))
                h = kx + gx * (ky + gy * kz)
                words[2 * h] = table_off | (bits << 24)
                words[2 * h + 1] = values_off
    return struct.pack(f"<{1 + len(words)}I", 1, *words)


# --------------------------------------------------------------------------------------
# compressed Morton code (§7.3)


def compressed_morton_reference(coord, bits) -> int:
    code = 0
    j = 0
    for i in range(max(bits)):
        for d in range(3):
            if i < bits[d]:
                code |= ((int(coord[d]) >> i) & 1) << j
                j += 1
    return code


def shard_and_minishard_reference(code: int, preshift: int, minishard_bits: int, shard_bits: int):
    h = 0 if preshift >= 64 else code >> preshift
    minishard = h & ((1 << minishard_bits) - 1)
    shard = 0 if shard_bits == 0 else (h >> minishard_bits) & ((1 << shard_bits) - 1)
    return shard, minishard


def assemble_dvid_block(grid, table, palettes, values) -> bytes:
    """Lay out a DVID block (N >= 2 layout, §5.1) from explicit parts, for blocks DVID's own
    encoder would not write (palette entries no voxel uses, repeated indices, n = 0).

    grid = (gx, gy, gz); table: the label table; palettes[i]: sub-block i's indices into the
    table; values[i]: 512 palette-local values (z, y, x order) for sub-blocks with >= 2
    entries (ignored otherwise). Values are packed MSB first with bit_length(n - 1) bits.
    """
    gx, gy, gz = grid
    nsb = gx * gy * gz
    assert len(palettes) == nsb == len(values)
    out = bytearray(struct.pack("<4I", gx, gy, gz, len(table)))
    out += struct.pack(f"<{len(table)}Q", *(int(v) for v in table))
    out += struct.pack(f"<{nsb}H", *(len(p) for p in palettes))
    for p in palettes:
        out += struct.pack(f"<{len(p)}I", *(int(i) for i in p))
    for p, vals in zip(palettes, values, strict=True):
        if len(p) < 2:
            continue
        b = (len(p) - 1).bit_length()
        idx = np.asarray(vals, dtype=np.int64).reshape(-1)
        assert idx.shape == (512,)
        bits = (idx[:, None] >> np.arange(b - 1, -1, -1)[None, :]) & 1
        out += np.packbits(bits.reshape(-1).astype(np.uint8)).tobytes()
    return bytes(out)


def decode_cseg_pypi(data: bytes, shape_zyx) -> np.ndarray:
    """Decode with the independent PyPI `compressed_segmentation` package (C++).

    Its decompress() takes the volume size as (x, y, z) and returns an array indexed
    [x, y, z] (whatever `order`), so transpose back to ZYX."""
    import compressed_segmentation as cs

    nz, ny, nx = shape_zyx
    xyz = cs.decompress(bytes(data), (nx, ny, nz), np.uint64, (8, 8, 8), order="C")
    return np.asarray(xyz).reshape(nx, ny, nz).transpose(2, 1, 0)


# --------------------------------------------------------------------------------------
# 2x2x2 label downsampling (§9)


def vote_reference(values, method: str) -> int:
    """The winner of one window's values: `mode` = most frequent, ties to the smallest;
    `dvid` = the same among non-zero values, 0 only when every value is 0."""
    counts: dict[int, int] = {}
    for v in values:
        v = int(v)
        if method == "dvid" and v == 0:
            continue
        counts[v] = counts.get(v, 0) + 1
    if not counts:
        return 0
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


def downsample_reference(vol: np.ndarray, method: str = "mode") -> np.ndarray:
    """2x2x2 downsampling one window at a time; edge windows use the voxels that exist."""
    nz, ny, nx = vol.shape
    out = np.zeros(((nz + 1) // 2, (ny + 1) // 2, (nx + 1) // 2), dtype=np.uint64)
    for z in range(out.shape[0]):
        for y in range(out.shape[1]):
            for x in range(out.shape[2]):
                window = vol[2 * z : 2 * z + 2, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2]
                out[z, y, x] = vote_reference(window.reshape(-1), method)
    return out

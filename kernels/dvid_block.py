"""DVID compressed label blocks: validation, decoding and direct transcoding to
neuroglancer compressed_segmentation.

Block layout (all little-endian, see formats.md §5.1):

    u32 gx, gy, gz            sub-blocks per axis (sub-blocks are 8x8x8 voxels)
    u32 N                     label-table entries
    u64 table[N]              (N <= 1: the block ends here, every voxel = table[0])
    u16 counts[gx*gy*gz]      palette size per sub-block (z slowest, x fastest)
    u32 indices[sum(counts)]  per sub-block, its palette as indices into table
    bytes values              per sub-block with count >= 2: 512 palette indices of
                              bit_length(count-1) bits, one MSB-first bitstream, byte aligned
                              per sub-block

Every read is bounds-checked: the structure (sizes, counts, indices) is validated against the
buffer length before anything is allocated or decoded, and decoded palette values are checked
against the sub-block palette size. The kernels return status codes; the wrappers raise
CorruptBlockError with a precise message.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._buffers import as_u8, as_u64_table
from ._cseg_core import (
    EMIT_OFFSET_OVERFLOW,
    bits_for,
    block_need,
    emit_block,
    emit_table,
    new_dedup,
    rank_of,
    sort_unique,
)
from .errors import CorruptBlockError, KernelError

__all__ = [
    "MAX_BLOCK_VOXELS",
    "MAX_SUBBLOCKS_PER_AXIS",
    "decode_dvid_block",
    "dvid_block_header",
    "dvid_block_table",
    "dvid_block_to_cseg",
]

#: DVID's MaxBlockSize is 1024 voxels per axis = 128 sub-blocks.
MAX_SUBBLOCKS_PER_AXIS = 128
#: Refuse headers describing more voxels than this (guards solid 24-byte blocks whose header
#: would otherwise make decode_dvid_block allocate gigabytes). 256^3 = 128 MiB of uint64.
MAX_BLOCK_VOXELS = 256**3

_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U8 = np.uint64(8)
_LO32 = np.uint64(0xFFFFFFFF)
# bit-reversed bytes: DVID packs MSB-first, compressed_segmentation LSB-first
# for a byte of four 2-bit values: the bitmask of the values present
_USED2 = np.array(
    [
        (1 << (i >> 6)) | (1 << ((i >> 4) & 3)) | (1 << ((i >> 2) & 3)) | (1 << (i & 3))
        for i in range(256)
    ],
    dtype=np.uint64,
)
_REV8 = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint64)

# status codes --------------------------------------------------------------------------
_OK = 0
_HEADER_TRUNC = 1  # e: have
_BAD_GRID = 2
_TOO_MANY_VOXELS = 3
_NO_LABELS = 4
_TABLE_TRUNC = 5  # e: need, have
_COUNTS_TRUNC = 6  # e: need, have
_PALETTE_TOO_BIG = 7  # e: sub-block, count
_INDICES_TRUNC = 8  # e: S, need, have
_VALUES_TRUNC = 9  # e: vbytes, need, have
_TRAILING = 10  # e: need, have
_INDEX_RANGE = 11  # e: sub-block, j, index
_VALUE_RANGE = 12  # e: sub-block, x, y, z, value, count
_TABLE_LEN = 13  # e: given length
_BAD_EXTENT = 14
_OFFSET_OVERFLOW = 15
_INTERNAL = 16  # e: sub-block

# info layout
_I_GX, _I_GY, _I_GZ, _I_N, _I_NSB, _I_S, _I_OFF_COUNTS, _I_OFF_IDX, _I_OFF_VALS, _I_END = range(10)
_I_E = 10  # error details start here
_INFO_LEN = 18


@njit(cache=True, nogil=True)
def _rd16(buf, p):
    return np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8)


@njit(cache=True, nogil=True)
def _rd32(buf, p):
    return (
        np.int64(buf[p])
        | (np.int64(buf[p + 1]) << 8)
        | (np.int64(buf[p + 2]) << 16)
        | (np.int64(buf[p + 3]) << 24)
    )


@njit(cache=True, nogil=True)
def _rd64(buf, p):
    v = np.uint64(0)
    for b in range(7, -1, -1):
        v = (v << _U8) | np.uint64(buf[p + b])
    return v


@njit(cache=True, nogil=True)
def _bitlen(v):
    b = 0
    while v > 0:
        b += 1
        v >>= 1
    return b


@njit(cache=True, nogil=True)
def _parse(buf, info, max_voxels):
    """Validate the block structure against the buffer length. Fills info; returns status."""
    n = buf.shape[0]
    info[:] = 0
    if n < 16:
        info[_I_E] = n
        return _HEADER_TRUNC
    gx = _rd32(buf, 0)
    gy = _rd32(buf, 4)
    gz = _rd32(buf, 8)
    nl = _rd32(buf, 12)
    info[_I_GX] = gx
    info[_I_GY] = gy
    info[_I_GZ] = gz
    info[_I_N] = nl
    if gx < 1 or gy < 1 or gz < 1 or gx > 128 or gy > 128 or gz > 128:
        return _BAD_GRID
    nsb = gx * gy * gz
    info[_I_NSB] = nsb
    if nsb * 512 > max_voxels:
        return _TOO_MANY_VOXELS
    if nl == 0:
        return _NO_LABELS
    need = 16 + 8 * nl
    if n < need:
        info[_I_E] = need
        info[_I_E + 1] = n
        return _TABLE_TRUNC
    if nl == 1:
        info[_I_END] = need
        return _OK
    off_counts = need
    need = off_counts + 2 * nsb
    if n < need:
        info[_I_E] = need
        info[_I_E + 1] = n
        return _COUNTS_TRUNC
    s = 0
    vbytes = 0
    for i in range(nsb):
        c = _rd16(buf, off_counts + 2 * i)
        if c > 512:
            info[_I_E] = i
            info[_I_E + 1] = c
            return _PALETTE_TOO_BIG
        s += c
        if c >= 2:
            vbytes += 64 * _bitlen(c - 1)
    info[_I_S] = s
    off_idx = need
    need = off_idx + 4 * s
    if n < need:
        info[_I_E] = s
        info[_I_E + 1] = need
        info[_I_E + 2] = n
        return _INDICES_TRUNC
    off_vals = need
    need = off_vals + vbytes
    if n < need:
        info[_I_E] = vbytes
        info[_I_E + 1] = need
        info[_I_E + 2] = n
        return _VALUES_TRUNC
    if n > need:
        info[_I_E] = need
        info[_I_E + 1] = n
        return _TRAILING
    p = off_idx
    for i in range(nsb):
        c = _rd16(buf, off_counts + 2 * i)
        for j in range(c):
            ix = _rd32(buf, p)
            p += 4
            if ix >= nl:
                info[_I_E] = i
                info[_I_E + 1] = j
                info[_I_E + 2] = ix
                return _INDEX_RANGE
    info[_I_OFF_COUNTS] = off_counts
    info[_I_OFF_IDX] = off_idx
    info[_I_OFF_VALS] = off_vals
    info[_I_END] = need
    return _OK


@njit(cache=True, nogil=True)
def _read_table(buf, nl):
    t = np.empty(nl, np.uint64)
    for i in range(nl):
        t[i] = _rd64(buf, 16 + 8 * i)
    return t


@njit(cache=True, nogil=True)
def _effective_table(buf, info, override, use_override):
    """The table to decode with; None-equivalent signalled by status via info."""
    nl = info[_I_N]
    if use_override:
        if override.shape[0] != nl:
            info[_I_E] = override.shape[0]
            return _TABLE_LEN, override
        return _OK, override
    return _OK, _read_table(buf, nl)


# Hot loops below index with unsigned integers: Numba then skips its negative-index
# fix-ups, which otherwise cost a compare and a conditional move per access and block
# vectorisation. Every index is still in range: the block structure (hence the start and
# length of each sub-block's packed values) has been validated against len(buf) by _parse.


@njit(cache=True, nogil=True)
def _unpack(buf, p, d, vals):
    """Unpack 512 MSB-first d-bit values (1 <= d <= 9) from buf[p : p + 64*d] into vals.
    The caller has checked p + 64*d <= len(buf). Returns the largest value."""
    vmax = 0
    q = np.uint64(p)
    ud = np.uint64(d)
    mask = (_U1 << ud) - _U1
    if d <= 8:
        k = _U0
        for _g in range(64):
            acc = _U0
            for _b in range(d):
                acc = (acc << _U8) | np.uint64(buf[q])
                q += _U1
            sh = np.uint64(7 * d)
            for _j in range(8):
                v = np.int64((acc >> sh) & mask)
                vals[k] = v
                vmax = max(vmax, v)
                k += _U1
                sh -= ud
    else:
        bitpos = _U0
        for k in range(512):
            byte = q + (bitpos >> np.uint64(3))
            off = bitpos & np.uint64(7)
            # d = 9 > 8 - off: the value always spans this byte and the next, both inside
            # the sub-block's 64*d bytes
            w = (np.uint64(buf[byte]) << _U8) | np.uint64(buf[byte + _U1])
            v = np.int64((w >> (np.uint64(16) - off - ud)) & mask)
            vals[np.uint64(k)] = v
            vmax = max(vmax, v)
            bitpos += ud
    return vmax


@njit(cache=True, nogil=True)
def _pack_1bit(buf, p, swap, out, pos):
    """Fast path for a full 8^3 sub-block with a 2-entry palette mapping to 2 distinct values:
    the 64 DVID bytes become 16 cseg words by bit-reversing each byte (inverted if the palette
    order is the reverse of the sorted order). Returns the bitmask of palette entries used."""
    or_all = _U0
    and_all = np.uint64(255)
    inv = np.uint64(0xFFFFFFFF) if swap else _U0
    q = np.uint64(p)
    o = np.uint64(pos)
    for wi in range(16):
        b0 = buf[q]
        b1 = buf[q + _U1]
        b2 = buf[q + np.uint64(2)]
        b3 = buf[q + np.uint64(3)]
        q += np.uint64(4)
        or_all |= np.uint64(b0 | b1 | b2 | b3)
        and_all &= np.uint64(b0 & b1 & b2 & b3)
        w = (
            _REV8[b0]
            | (_REV8[b1] << _U8)
            | (_REV8[b2] << np.uint64(16))
            | (_REV8[b3] << np.uint64(24))
        )
        out[o + np.uint64(wi)] = w ^ inv
    used = 0
    if and_all != np.uint64(255):
        used |= 1
    if or_all != _U0:
        used |= 2
    return used


@njit(cache=True, nogil=True)
def _pack_2bit(buf, p, remap, bits, lut, out, pos):
    """Fast path for a full sub-block with 2-bit DVID values (palette of 3 or 4) written as
    cseg values of `bits` (1 or 2) bits. A 16-entry table built from `remap` turns each
    nibble (two values, MSB-first) into 2*bits output bits. Returns the bitmask of palette
    values seen."""
    ub = np.uint64(bits)
    for nib in range(16):
        lut[nib] = np.uint64(remap[nib >> 2]) | (np.uint64(remap[nib & 3]) << ub)
    used = _U0
    q = np.uint64(p)
    o = np.uint64(pos)
    bsh = np.uint64(4 * bits)  # output bits per DVID byte
    per = 8 // bits  # DVID bytes per output word
    for wi in range(16 * bits):
        w = _U0
        sh = _U0
        for _j in range(per):
            byte = buf[q]
            q += _U1
            used |= _USED2[byte]
            w |= (lut[byte >> np.uint8(4)] | (lut[byte & np.uint8(15)] << (ub + ub))) << sh
            sh += bsh
        out[o + np.uint64(wi)] = w
    return np.int64(used)


@njit(cache=True, nogil=True)
def _pack_fused(buf, p, d, remap, bits, out, pos):
    """Unpack a full sub-block's 512 d-bit DVID values (2 <= d <= 6) and write them remapped
    as cseg values of `bits` bits (1..8) at out[pos : pos + 16*bits], in one pass.
    Returns the bitmask of palette values seen (bit v set if some voxel has value v)."""
    ud = np.uint64(d)
    ub = np.uint64(bits)
    dmask = (_U1 << ud) - _U1
    used = _U0
    acc = _U0
    sh = _U0
    q = np.uint64(p)
    wpos = np.uint64(pos)
    gbits = np.uint64(8 * bits)
    for _g in range(64):
        a = _U0
        for _b in range(d):
            a = (a << _U8) | np.uint64(buf[q])
            q += _U1
        s = np.uint64(7 * d)
        o = _U0
        gs = _U0
        for _j in range(8):
            v = (a >> s) & dmask
            s -= ud
            used |= _U1 << v
            gs |= np.uint64(remap[v]) << o
            o += ub
        if bits == 8:  # a group of 8 values fills two words
            out[wpos] = gs & _LO32
            out[wpos + _U1] = gs >> np.uint64(32)
            wpos += np.uint64(2)
        else:
            acc |= gs << sh
            sh += gbits
            if sh == np.uint64(32):
                out[wpos] = acc
                wpos += _U1
                acc = _U0
                sh = _U0
    return np.int64(used)


@njit(cache=True, nogil=True)
def _value_error(vals, c, sb, info):
    for k in range(512):
        if vals[k] >= c:
            info[_I_E] = sb
            info[_I_E + 1] = k & 7
            info[_I_E + 2] = (k >> 3) & 7
            info[_I_E + 3] = k >> 6
            info[_I_E + 4] = vals[k]
            info[_I_E + 5] = c
            break
    return _VALUE_RANGE


@njit(cache=True, nogil=True)
def _decode_kernel(buf, override, use_override, info, max_voxels):
    """Returns (status, volume). volume is (8gz, 8gy, 8gx) uint64 on success."""
    empty = np.zeros((0, 0, 0), np.uint64)
    st = _parse(buf, info, max_voxels)
    if st != _OK:
        return st, empty
    st, tbl = _effective_table(buf, info, override, use_override)
    if st != _OK:
        return st, empty
    gx = info[_I_GX]
    gy = info[_I_GY]
    gz = info[_I_GZ]
    out = np.empty((8 * gz, 8 * gy, 8 * gx), np.uint64)
    if info[_I_N] == 1:
        out[:] = tbl[0]
        return _OK, out
    n = buf.shape[0]
    nx = 8 * gx
    ny = 8 * gy
    flat = out.reshape(-1)
    pc = info[_I_OFF_COUNTS]
    pi = info[_I_OFF_IDX]
    pv = info[_I_OFF_VALS]
    pal = np.empty(512, np.uint64)
    vals = np.empty(512, np.int64)
    zero = np.uint64(0)
    sb = 0
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                c = _rd16(buf, pc)
                pc += 2
                for j in range(c):
                    pal[j] = tbl[_rd32(buf, pi + 4 * j)]
                pi += 4 * c
                # unsigned flat indices (see above): row r of the sub-block starts at
                # ((8sz + z) * ny + 8sy + y) * nx + 8sx
                ob = np.uint64(((8 * sz) * ny + 8 * sy) * nx + 8 * sx)
                if c <= 1:
                    v = zero if c == 0 else pal[0]
                    for z in range(8):
                        for y in range(8):
                            r = ob + np.uint64(z * ny * nx + y * nx)
                            for x in range(8):
                                flat[r + np.uint64(x)] = v
                else:
                    d = _bitlen(c - 1)
                    if pv + 64 * d > n:
                        info[_I_E] = sb
                        return _INTERNAL, empty
                    vmax = _unpack(buf, pv, d, vals)
                    pv += 64 * d
                    if vmax >= c:
                        return _value_error(vals, c, sb, info), empty
                    k = _U0
                    for z in range(8):
                        for y in range(8):
                            r = ob + np.uint64(z * ny * nx + y * nx)
                            for x in range(8):
                                flat[r + np.uint64(x)] = pal[np.uint64(vals[k])]
                                k += _U1
                sb += 1
    return _OK, out


@njit(cache=True, nogil=True)
def _transcode_kernel(buf, override, use_override, nx, ny, nz, info, max_voxels):
    """DVID block -> compressed_segmentation words. Returns (status, words, nwords, nonzero).

    Sub-blocks are visited in DVID order (z, y, x), which is also cseg header order; those
    outside the extent are skipped after their values are range-checked (so that errors do
    not depend on the extent, exactly like decode_dvid_block)."""
    empty = np.zeros(0, np.uint32)
    st = _parse(buf, info, max_voxels)
    if st != _OK:
        return st, empty, 0, False
    st, tbl = _effective_table(buf, info, override, use_override)
    if st != _OK:
        return st, empty, 0, False
    gx = info[_I_GX]
    gy = info[_I_GY]
    gz = info[_I_GZ]
    if nx == 0 and ny == 0 and nz == 0:  # whole block
        nx = 8 * gx
        ny = 8 * gy
        nz = 8 * gz
    if nx < 1 or ny < 1 or nz < 1 or nx > 8 * gx or ny > 8 * gy or nz > 8 * gz:
        return _BAD_EXTENT, empty, 0, False
    n = buf.shape[0]
    solid = info[_I_N] == 1
    cgx = (nx + 7) // 8
    cgy = (ny + 7) // 8
    cgz = (nz + 7) // 8
    nb = cgx * cgy * cgz
    # capacity: headers + an upper bound per block from the palette sizes
    cap = 1 + 2 * nb
    if solid:
        cap += 2 * nb
    else:
        pc = info[_I_OFF_COUNTS]
        sb = 0
        for sz in range(gz):
            for sy in range(gy):
                for sx in range(gx):
                    if sx < cgx and sy < cgy and sz < cgz:
                        c = _rd16(buf, pc + 2 * sb)
                        cap += block_need(max(c, 1), 512)
                    sb += 1
    out = np.empty(cap, np.uint32)
    out[0] = 1
    pos = 1 + 2 * nb
    ht_hash, ht_off, ht_len = new_dedup(nb)
    pal = np.empty(513, np.uint64)
    sv = np.empty(513, np.uint64)
    used_a = np.zeros(513, np.bool_)
    remap = np.zeros(513, np.int64)
    vals = np.empty(512, np.int64)
    rl = np.empty(512, np.uint8)
    lut = np.empty(16, np.uint64)
    zero = np.uint64(0)
    nonzero = False
    pc = info[_I_OFF_COUNTS]
    pi = info[_I_OFF_IDX]
    pv = info[_I_OFF_VALS]
    sbi = -1
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                sbi += 1
                if solid:
                    c = 1
                    pal[0] = tbl[0]
                else:
                    c = _rd16(buf, pc)
                    pc += 2
                    for j in range(c):
                        pal[j] = tbl[_rd32(buf, pi + 4 * j)]
                    pi += 4 * c
                d = _bitlen(c - 1) if c >= 2 else 0
                vstart = pv
                if d > 0:
                    if pv + 64 * d > n:  # cannot happen after _parse; never read past the end
                        info[_I_E] = sbi
                        return _INTERNAL, empty, 0, False
                    pv += 64 * d
                checked = (c & (c - 1)) == 0  # every d-bit value < c: nothing to check
                inside = sx < cgx and sy < cgy and sz < cgz
                if not inside:
                    # not encoded, but range-checked like decode_dvid_block would
                    if not checked and _unpack(buf, vstart, d, vals) >= c:
                        return _value_error(vals, c, sbi, info), empty, 0, False
                    continue
                hdr = sx + cgx * (sy + cgy * sz)
                if c <= 1:
                    sv[0] = zero if c == 0 else pal[0]
                    pos = emit_table(out, pos, hdr, pos - 1, 0, sv, 1, ht_hash, ht_off, ht_len)
                    if pos == EMIT_OFFSET_OVERFLOW:
                        return _OFFSET_OVERFLOW, empty, 0, False
                    if sv[0] != zero:
                        nonzero = True
                    continue
                ex = min(8, nx - 8 * sx)
                ey = min(8, ny - 8 * sy)
                ez = min(8, nz - 8 * sz)
                full = ex == 8 and ey == 8 and ez == 8
                if full and c <= 63:
                    # fast path: assume every palette entry is used (always true for DVID's
                    # encoder), verify that while packing, fall back to the general path if not
                    for j in range(c):
                        sv[j] = pal[j]
                    m = sort_unique(sv, c)
                    bits = bits_for(m)
                    done = False
                    if bits == 0:
                        # every entry maps to the same value: only the range check remains
                        if not checked and _unpack(buf, vstart, d, vals) >= c:
                            return _value_error(vals, c, sbi, info), empty, 0, False
                        done = True
                    elif bits <= 8:
                        for j in range(c):
                            remap[j] = rank_of(sv, m, pal[j])
                        if d == 1:
                            used = _pack_1bit(buf, vstart, remap[0] == 1, out, pos)
                        elif d == 2 and bits <= 2:
                            used = _pack_2bit(buf, vstart, remap, bits, lut, out, pos)
                        else:
                            used = _pack_fused(buf, vstart, d, remap, bits, out, pos)
                        if (used >> c) != 0:  # some value >= palette size
                            _unpack(buf, vstart, d, vals)
                            return _value_error(vals, c, sbi, info), empty, 0, False
                        done = used == (np.int64(1) << c) - 1
                    if done:
                        pos = emit_table(
                            out, pos + 16 * bits, hdr, pos - 1, bits, sv, m, ht_hash, ht_off, ht_len
                        )
                        if pos == EMIT_OFFSET_OVERFLOW:
                            return _OFFSET_OVERFLOW, empty, 0, False
                        if sv[m - 1] != zero:
                            nonzero = True
                        continue
                # general path: partial extent, unused palette entries, or a large palette
                if _unpack(buf, vstart, d, vals) >= c:
                    return _value_error(vals, c, sbi, info), empty, 0, False
                for j in range(c):
                    used_a[j] = False
                if full:
                    for k in range(512):
                        used_a[vals[k]] = True
                else:
                    k = 0
                    for z in range(8):
                        for y in range(8):
                            for x in range(8):
                                if x < ex and y < ey and z < ez:
                                    used_a[vals[k]] = True
                                else:
                                    vals[k] = c  # sentinel -> index 0
                                k += 1
                m = 0
                for j in range(c):
                    if used_a[j]:
                        sv[m] = pal[j]
                        m += 1
                m = sort_unique(sv, m)
                for j in range(c):
                    remap[j] = rank_of(sv, m, pal[j]) if used_a[j] else 0
                remap[c] = 0
                if sv[m - 1] != zero:
                    nonzero = True
                pos = emit_block(
                    out, pos, hdr, sv, m, vals, remap, 512, rl, ht_hash, ht_off, ht_len
                )
                if pos == EMIT_OFFSET_OVERFLOW:
                    return _OFFSET_OVERFLOW, empty, 0, False
    return _OK, out, pos, nonzero


# Python wrappers ---------------------------------------------------------------------

_EMPTY_TABLE = np.zeros(0, np.uint64)
_EMPTY_TABLE.flags.writeable = False


def _sb_name(sb: int, info) -> str:
    gx, gy = int(info[_I_GX]), int(info[_I_GY])
    return f"sub-block {sb} (sx={sb % gx},sy={(sb // gx) % gy},sz={sb // (gx * gy)})"


def _raise(st: int, info: np.ndarray, extent=None) -> None:
    i = [int(v) for v in info]
    e = i[_I_E:]
    gx, gy, gz, nl = i[_I_GX], i[_I_GY], i[_I_GZ], i[_I_N]
    if st == _HEADER_TRUNC:
        msg = f"DVID block truncated: header needs 16 bytes, buffer has {e[0]}"
    elif st == _BAD_GRID:
        msg = (
            f"DVID block header invalid: sub-block grid gx={gx} gy={gy} gz={gz}; "
            f"gx, gy, gz must each be 1..{MAX_SUBBLOCKS_PER_AXIS}"
        )
    elif st == _TOO_MANY_VOXELS:
        msg = (
            f"DVID block header invalid: gx={gx} gy={gy} gz={gz} means "
            f"{512 * gx * gy * gz} voxels, more than the limit MAX_BLOCK_VOXELS={MAX_BLOCK_VOXELS}"
        )
    elif st == _NO_LABELS:
        msg = "DVID block invalid: label table has 0 entries (N=0 is not allowed)"
    elif st == _TABLE_TRUNC:
        msg = (
            f"DVID block truncated: label table of {nl} entries needs {e[0]} bytes, "
            f"buffer has {e[1]}"
        )
    elif st == _COUNTS_TRUNC:
        msg = (
            f"DVID block truncated: {gx * gy * gz} sub-block palette counts after a table of "
            f"{nl} labels need {e[0]} bytes, buffer has {e[1]}"
        )
    elif st == _PALETTE_TOO_BIG:
        msg = (
            f"DVID block corrupt: {_sb_name(e[0], info)} palette size {e[1]} exceeds 512 "
            f"(a sub-block has only 512 voxels)"
        )
    elif st == _INDICES_TRUNC:
        msg = (
            f"DVID block truncated: {e[0]} sub-block palette indices need {e[1]} bytes "
            f"in total, buffer has {e[2]}"
        )
    elif st == _VALUES_TRUNC:
        msg = (
            f"DVID block truncated: {e[0]} bytes of packed sub-block values make the block "
            f"{e[1]} bytes, buffer has {e[2]}"
        )
    elif st == _TRAILING:
        msg = (
            f"DVID block corrupt: block with {nl} labels should be exactly {e[0]} bytes, "
            f"buffer has {e[1]} ({e[1] - e[0]} unexpected trailing bytes)"
        )
    elif st == _INDEX_RANGE:
        msg = (
            f"DVID block corrupt: {_sb_name(e[0], info)} palette index {e[2]} (entry {e[1]}) "
            f"out of range: block has {nl} labels"
        )
    elif st == _VALUE_RANGE:
        msg = (
            f"DVID block corrupt: {_sb_name(e[0], info)} voxel (x={e[1]},y={e[2]},z={e[3]}) "
            f"has palette value {e[4]} out of range: sub-block palette has {e[5]} entries"
        )
    elif st == _TABLE_LEN:
        msg = (
            f"label table given for the DVID block has {e[0]} entries, the block's own "
            f"table has {nl}; they must match by position"
        )
    elif st == _BAD_EXTENT:
        raise KernelError(
            f"extent {tuple(extent)} (x, y, z) invalid for a DVID block of "
            f"{8 * gx}x{8 * gy}x{8 * gz} voxels (x, y, z): each must be 1..block side"
        )
    elif st == _OFFSET_OVERFLOW:  # pragma: no cover - impossible for <= 1024^3 blocks of 8^3
        msg = "DVID block too large for compressed_segmentation: offset exceeds 24 bits"
    else:  # pragma: no cover
        msg = f"DVID block decoder internal error (status {st}, sub-block {e[0]})"
    raise CorruptBlockError(msg)


def _prep(block, table):
    buf = as_u8(block, "DVID block", CorruptBlockError)
    if table is None:
        return buf, _EMPTY_TABLE, False
    return buf, as_u64_table(table, "label table", CorruptBlockError), True


def dvid_block_header(block) -> tuple[int, int, int, int]:
    """(gx, gy, gz, n_labels) of a DVID block, after validating its whole structure
    (sizes, counts and palette indices; not the packed values)."""
    buf = as_u8(block, "DVID block", CorruptBlockError)
    info = np.zeros(_INFO_LEN, np.int64)
    st = _parse(buf, info, MAX_BLOCK_VOXELS)
    if st != _OK:
        _raise(st, info)
    return int(info[_I_GX]), int(info[_I_GY]), int(info[_I_GZ]), int(info[_I_N])


def dvid_block_table(block) -> np.ndarray:
    """A copy of the block's label table (uint64), after validating the block structure."""
    buf = as_u8(block, "DVID block", CorruptBlockError)
    info = np.zeros(_INFO_LEN, np.int64)
    st = _parse(buf, info, MAX_BLOCK_VOXELS)
    if st != _OK:
        _raise(st, info)
    nl = int(info[_I_N])
    return np.frombuffer(buf, dtype="<u8", count=nl, offset=16).astype(np.uint64)


def decode_dvid_block(block, table: np.ndarray | None = None) -> np.ndarray:
    """Decode a DVID compressed label block into a uint64 volume of shape
    (8*gz, 8*gy, 8*gx), ZYX C-order. `table`, if given, replaces the block's label table by
    position (supervoxel -> body mapping); its length must equal the block's N."""
    buf, tbl, use = _prep(block, table)
    info = np.zeros(_INFO_LEN, np.int64)
    st, out = _decode_kernel(buf, tbl, use, info, MAX_BLOCK_VOXELS)
    if st != _OK:
        _raise(st, info)
    return out


def dvid_block_to_cseg(
    block, table: np.ndarray | None = None, extent: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, bool]:
    """Transcode a DVID block straight into a one-channel uint64 compressed_segmentation
    chunk (block size 8x8x8), without materialising the voxel volume.

    table: replaces the block's label table by position (length must equal N).
    extent: (nx, ny, nz) voxels to keep, each 1..block side (the chunk clipped at the volume
    edge); default the whole block.
    Returns (cseg bytes as a 1-D np.uint8 array, nonzero), where nonzero tells whether any
    in-extent voxel is non-zero. The bytes equal
    encode_cseg(decode_dvid_block(block, table)[:nz, :ny, :nx]).
    """
    buf, tbl, use = _prep(block, table)
    if extent is None:
        nx = ny = nz = 0  # the kernel reads 0,0,0 as "the whole block"
    else:
        try:
            nx, ny, nz = (int(v) for v in extent)
        except (TypeError, ValueError):
            raise KernelError(
                f"extent must be three integers (nx, ny, nz), got {extent!r}"
            ) from None
        if not all(1 <= v <= 8 * MAX_SUBBLOCKS_PER_AXIS for v in (nx, ny, nz)):
            raise KernelError(f"extent {extent!r} (x, y, z) invalid: each must be 1..block side")
    info = np.zeros(_INFO_LEN, np.int64)
    st, out, nwords, nonzero = _transcode_kernel(buf, tbl, use, nx, ny, nz, info, MAX_BLOCK_VOXELS)
    if st != _OK:
        _raise(st, info, extent)
    if out.shape[0] > nwords + nwords // 4 + 64:
        res = out[:nwords].copy().view(np.uint8)
    else:
        res = out[:nwords].view(np.uint8)
    return res, bool(nonzero)

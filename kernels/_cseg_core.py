"""Numba helpers shared by the compressed_segmentation encoder and the DVID->cseg transcoder.

Both writers build the output as an array of native (little-endian) uint32 words:

    word 0                       channel offset (always 1)
    words 1 .. 2*nblocks         block headers (table offset | bits << 24, values offset)
    then per block, in header order: encoded values, then its lookup table if new.

All offsets are counted in uint32 words from word 1 (byte 4), exactly as TensorStore does.
Lookup tables are deduplicated across the whole chunk: TensorStore keeps a hash map keyed on
the sorted table content and reuses the offset of the first identical table it wrote.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_MUL = np.uint64(0x9E3779B97F4A7C15)
_LO32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)
_U29 = np.uint64(29)
_U31 = np.uint64(31)

MAX_OFFSET = 0xFFFFFF  # table and values offsets are 24-bit fields in TensorStore's reader

# emit_block return codes (negative; >= 0 is the new write position)
EMIT_OFFSET_OVERFLOW = -1


@njit(cache=True, nogil=True)
def bits_for(m):
    """Encoded bits for a block with m distinct values: 0 for one value, else the smallest
    power of two b with 2**b >= m (TensorStore's rule)."""
    if m <= 1:
        return 0
    b = 1
    while (1 << b) < m:
        b *= 2
    return b


@njit(cache=True, nogil=True)
def values_words(bits, nvox):
    return (bits * nvox + 31) // 32


_GAPS = np.array([701, 301, 132, 57, 23, 10, 4, 1], dtype=np.int64)  # Ciura's shell-sort gaps


@njit(cache=True, nogil=True)
def sort_unique(vals, m):
    """Sort vals[:m] ascending in place (no allocation) and drop duplicates; return the new
    length. Insertion sort for short tables, shell sort for long ones."""
    if m <= 1:
        return m
    for gi in range(_GAPS.shape[0]):
        gap = _GAPS[gi]
        if gap > 1 and (m <= 24 or gap >= m):
            continue
        for i in range(gap, m):
            v = vals[i]
            j = i
            while j >= gap and vals[j - gap] > v:
                vals[j] = vals[j - gap]
                j -= gap
            vals[j] = v
    k = 1
    for i in range(1, m):
        if vals[i] != vals[k - 1]:
            vals[k] = vals[i]
            k += 1
    return k


@njit(cache=True, nogil=True)
def rank_of(sv, m, v):
    """Index of v in the sorted distinct sv[:m] (v must be present)."""
    lo = 0
    hi = m - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if sv[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def table_hash(sv, m):
    h = np.uint64(m) * _MUL
    for i in range(m):
        h = (h ^ sv[i]) * _MUL
        h ^= h >> _U29
    return h


@njit(cache=True, nogil=True)
def new_dedup(nblocks):
    """Open-addressing table of written lookup tables (at most one insert per block)."""
    size = 16
    while size < 2 * nblocks + 2:
        size *= 2
    ht_hash = np.zeros(size, np.uint64)
    ht_off = np.full(size, -1, np.int64)
    ht_len = np.zeros(size, np.int64)
    return ht_hash, ht_off, ht_len


@njit(cache=True, nogil=True)
def ensure_capacity(out, pos, need):
    """Return `out`, or a larger copy of out[:pos], so that out has room for `need` more words."""
    if pos + need <= out.shape[0]:
        return out
    cap = max(out.shape[0] * 2, 64)
    while cap < pos + need:
        cap *= 2
    new = np.empty(cap, np.uint32)
    new[:pos] = out[:pos]
    return new


@njit(cache=True, nogil=True)
def block_need(m, nvox):
    """Upper bound of the words emit_block may append for a block with m distinct values."""
    return values_words(bits_for(m), nvox) + 2 * m


_M16_2 = np.uint64(0x0003000300030003)
_M32_2 = np.uint64(0x0000000F0000000F)
_M16_4 = np.uint64(0x000F000F000F000F)
_M32_4 = np.uint64(0x000000FF000000FF)
_M16_8 = np.uint64(0x00FF00FF00FF00FF)
_M32_8 = np.uint64(0x0000FFFF0000FFFF)
_MASK8 = np.uint64(0xFF)
_MASK16 = np.uint64(0xFFFF)


@njit(cache=True, nogil=True)
def _squeeze(x, b):
    """SWAR: eight byte lanes each holding a b-bit value (b in 1, 2, 4) -> the 8b-bit
    little-endian concatenation of the values (lane 0 in the lowest bits)."""
    if b == 1:
        x = (x | (x >> np.uint64(7))) & _M16_2
        x = (x | (x >> np.uint64(14))) & _M32_2
        return (x | (x >> np.uint64(28))) & _MASK8
    if b == 2:
        x = (x | (x >> np.uint64(6))) & _M16_4
        x = (x | (x >> np.uint64(12))) & _M32_4
        return (x | (x >> np.uint64(24))) & _MASK16
    x = (x | (x >> np.uint64(4))) & _M16_8
    x = (x | (x >> np.uint64(8))) & _M32_8
    return (x | (x >> np.uint64(16))) & _LO32


@njit(cache=True, nogil=True)
def pack_rl(out, pos, bits, rl, nvox):
    """Write block values given as one uint8 table index per position (rl[k], k < nvox) at
    out[pos:] with `bits` (1, 2, 4 or 8) bits each, LSB first in uint32 words.
    Returns the new position."""
    nwords = (bits * nvox + 31) // 32
    if nvox % 32 == 0:
        if bits == 8:
            w32 = rl.view(np.uint32)
            for i in range(nwords):
                out[pos + i] = w32[i]
            return pos + nwords
        lanes = rl.view(np.uint64)
        per = 4 // bits  # 8-value lanes per output word (1, 2 or 4)
        sh = np.uint64(8 * bits)
        li = 0
        for i in range(nwords):
            w = np.uint64(0)
            for j in range(per):
                w |= _squeeze(lanes[li + j], bits) << (sh * np.uint64(j))
            li += per
            out[pos + i] = w
        return pos + nwords
    w = 0
    sh = 0
    wi = pos
    for k in range(nvox):
        w |= np.int64(rl[k]) << sh
        sh += bits
        if sh == 32:
            out[wi] = w
            wi += 1
            w = 0
            sh = 0
    if sh > 0:
        out[wi] = w
        wi += 1
    return wi


@njit(cache=True, nogil=True)
def pack_values(out, pos, bits, loc, remap, nvox, rl):
    """Write the encoded values of one block at out[pos:] (bits > 0): position k holds
    remap[loc[k]] at bit bits*k, LSB first in uint32 words. rl is a uint8 scratch array of
    length nvox. Returns the new position."""
    if bits <= 8:
        for k in range(nvox):
            rl[k] = remap[loc[k]]
        return pack_rl(out, pos, bits, rl, nvox)
    k = 0
    w = 0
    sh = 0
    wi = pos
    while k < nvox:
        w |= remap[loc[k]] << sh
        k += 1
        sh += bits
        if sh == 32:
            out[wi] = w
            wi += 1
            w = 0
            sh = 0
    if sh > 0:
        out[wi] = w
        wi += 1
    return wi


@njit(cache=True, nogil=True)
def emit_table(out, pos, hdr, values_off, bits, sv, m, ht_hash, ht_off, ht_len):
    """Append the lookup table sv[:m] at out[pos:] unless an identical table was written
    before (then reuse its offset), and fill block header `hdr`. Returns the new position,
    or EMIT_OFFSET_OVERFLOW if an offset does not fit in 24 bits."""
    h = table_hash(sv, m)
    mask = ht_hash.shape[0] - 1
    slot = np.int64(h & np.uint64(mask))
    toff = -1
    while ht_off[slot] >= 0:
        if ht_hash[slot] == h and ht_len[slot] == m:
            base = 1 + ht_off[slot]
            same = True
            for i in range(m):
                v = np.uint64(out[base + 2 * i]) | (np.uint64(out[base + 2 * i + 1]) << _U32)
                if v != sv[i]:
                    same = False
                    break
            if same:
                toff = ht_off[slot]
                break
        slot = (slot + 1) & mask
    if toff < 0:
        toff = pos - 1
        for i in range(m):
            v = sv[i]
            out[pos + 2 * i] = v & _LO32
            out[pos + 2 * i + 1] = v >> _U32
        pos += 2 * m
        ht_hash[slot] = h
        ht_off[slot] = toff
        ht_len[slot] = m
    if toff > MAX_OFFSET or values_off > MAX_OFFSET:
        return EMIT_OFFSET_OVERFLOW
    out[1 + 2 * hdr] = toff | (bits << 24)
    out[2 + 2 * hdr] = values_off
    return pos


@njit(cache=True, nogil=True)
def emit_block(out, pos, hdr, sv, m, loc, remap, nvox, rl, ht_hash, ht_off, ht_len):
    """Append one block at word `pos` and fill header `hdr`.

    sv[:m]: the block's sorted distinct values; loc[k] (k = x + bsx*(y + bsy*z), k < nvox) a
    local id per block position and remap[local id] its index into sv (out-of-volume
    positions carry a local id whose remap is 0); rl is a uint8 scratch of length nvox.
    The caller guarantees out.shape[0] >= pos + block_need(m, nvox). Returns the new
    position, or EMIT_OFFSET_OVERFLOW if an offset does not fit in 24 bits.
    """
    bits = bits_for(m)
    values_off = pos - 1
    if bits > 0:
        pos = pack_values(out, pos, bits, loc, remap, nvox, rl)
    return emit_table(out, pos, hdr, values_off, bits, sv, m, ht_hash, ht_off, ht_len)

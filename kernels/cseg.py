"""Neuroglancer compressed_segmentation (uint64, one channel): encoder and decoder.

The encoder is byte-identical to TensorStore's (checked in tests/kernels against TensorStore
itself): sorted distinct lookup tables, power-of-two bit widths, LSB-first uint32 words,
partial edge blocks padded to a full block with index 0, tables deduplicated on content
across the chunk (the first identical table written is reused), and per block the encoded
values followed by the table if it is new.

Axis conventions: volumes are numpy arrays in ZYX order (shape (nz, ny, nx), X fastest).
`block_size` is given in XYZ order like neuroglancer's `compressed_segmentation_block_size`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._buffers import as_u8
from ._cseg_core import (
    EMIT_OFFSET_OVERFLOW,
    block_need,
    emit_block,
    emit_table,
    ensure_capacity,
    new_dedup,
    pack_rl,
    rank_of,
    sort_unique,
)
from .errors import CsegDecodeError, KernelError

__all__ = ["decode_cseg", "encode_cseg"]

_MUL = np.uint64(0x9E3779B97F4A7C15)
_U0 = np.uint64(0)

# ---------------------------------------------------------------------------------------
# encoder


@njit(cache=True, nogil=True, inline="always")
def _row_known(flat, row, ex, k0, k1, k2, k3):
    """True if every value of flat[row : row + ex] is one of k0..k3.

    Unsigned indices throughout: Numba then emits no negative-index fix-ups, and LLVM can
    unroll and vectorise the constant-length loop (3-4x faster than signed indexing)."""
    unknown = _U0
    r = np.uint64(row)
    if ex == 8:
        for x in range(8):
            v = flat[r + np.uint64(x)]
            unknown |= (
                np.uint64(v != k0) & np.uint64(v != k1) & np.uint64(v != k2) & np.uint64(v != k3)
            )
    else:
        for x in range(ex):
            v = flat[r + np.uint64(x)]
            unknown |= (
                np.uint64(v != k0) & np.uint64(v != k1) & np.uint64(v != k2) & np.uint64(v != k3)
            )
    return unknown == _U0


@njit(cache=True, nogil=True)
def _scan_small(flat, base, nx, ny, ex, ey, ez, seen):
    """Distinct values of a block if there are at most 4 (-> seen[:m], returns m), else 0.

    Branch-light: a row of voxels is tested for membership in the (at most 4) known values
    with plain comparisons; only rows holding a new value take the slow per-voxel path."""
    k0 = flat[base]
    k1 = k0
    k2 = k0
    k3 = k0
    m = 1
    for z in range(ez):
        for y in range(ey):
            row = base + (z * ny + y) * nx
            if _row_known(flat, row, ex, k0, k1, k2, k3):
                continue
            for x in range(ex):
                v = flat[row + x]
                if v != k0 and v != k1 and v != k2 and v != k3:
                    if m == 4:
                        return 0
                    if m == 1:
                        k1 = v
                    elif m == 2:
                        k2 = v
                    else:
                        k3 = v
                    m += 1
    seen[0] = k0
    seen[1] = k1
    seen[2] = k2
    seen[3] = k3
    return m


@njit(cache=True, nogil=True)
def _ranks_small(flat, base, nx, ny, ex, ey, ez, bsx, bsy, sv, m, rl):
    """rl[k] = index of the block value at position k in the sorted distinct sv[:m]
    (2 <= m <= 4), computed without branches. Out-of-volume positions are left alone."""
    # sv is sorted and every in-volume value is one of sv[:m], so the index of v is the number
    # of sv[1..m-1] that are <= v: a few comparisons, no branches
    s1 = sv[1]
    s2 = sv[2] if m > 2 else s1
    s3 = sv[3] if m > 3 else s2
    for z in range(ez):
        for y in range(ey):
            r = np.uint64(base + (z * ny + y) * nx)
            kb = np.uint64(bsx * (y + bsy * z))
            if m == 2:
                for x in range(ex):
                    ux = np.uint64(x)
                    rl[kb + ux] = np.uint8(flat[r + ux] >= s1)
            elif m == 3:
                for x in range(ex):
                    ux = np.uint64(x)
                    v = flat[r + ux]
                    rl[kb + ux] = np.uint8(v >= s1) + np.uint8(v >= s2)
            else:
                for x in range(ex):
                    ux = np.uint64(x)
                    v = flat[r + ux]
                    rl[kb + ux] = np.uint8(v >= s1) + np.uint8(v >= s2) + np.uint8(v >= s3)


@njit(cache=True, nogil=True)
def _scan_block(
    flat, base, nx, ny, ex, ey, ez, bsx, bsy, loc, seen, slots, hkey, hval, hshift, hsize
):
    """General case (any number of distinct values): distinct values of one block in order
    of first appearance -> seen[:m]; loc[k] = local id of block position k. Returns m."""
    first = flat[base]
    seen[0] = first
    s = np.int64((first * _MUL) >> hshift)
    hkey[s] = first
    hval[s] = 1
    slots[0] = s
    m = 1
    prev = first
    prev_id = 0
    prev2 = first  # the value before prev: boundaries often alternate between two labels
    prev2_id = 0
    for z in range(ez):
        for y in range(ey):
            r = np.uint64(base + (z * ny + y) * nx)
            kb = np.uint64(bsx * (y + bsy * z))
            for x in range(ex):
                ux = np.uint64(x)
                v = flat[r + ux]
                if v != prev:
                    if v == prev2:
                        prev2 = prev
                        prev = v
                        t = prev2_id
                        prev2_id = prev_id
                        prev_id = t
                    else:
                        prev2 = prev
                        prev2_id = prev_id
                        prev = v
                        s = np.int64((v * _MUL) >> hshift)
                        while True:
                            hv = hval[s]
                            if hv == 0:
                                hkey[s] = v
                                hval[s] = m + 1
                                seen[m] = v
                                slots[m] = s
                                prev_id = m
                                m += 1
                                break
                            if hkey[s] == v:
                                prev_id = hv - 1
                                break
                            s = (s + 1) & (hsize - 1)
                loc[kb + ux] = prev_id
    for i in range(m):
        hval[slots[i]] = 0
    return m


@njit(cache=True, nogil=True)
def _encode_kernel(vol, bsx, bsy, bsz):
    """Returns (status, words, nwords). status 0 ok, 1 offset overflow (chunk too large)."""
    nz, ny, nx = vol.shape
    gx = (nx + bsx - 1) // bsx
    gy = (ny + bsy - 1) // bsy
    gz = (nz + bsz - 1) // bsz
    nb = gx * gy * gz
    nvox = bsx * bsy * bsz
    out = np.empty(1 + 2 * nb + 20 * nb + 64, np.uint32)  # grown on demand
    out[0] = 1
    pos = 1 + 2 * nb
    ht_hash, ht_off, ht_len = new_dedup(nb)

    # per-block distinct-value hash (value -> local id), cleared after each block
    hbits = 4
    while (1 << hbits) < 2 * nvox:
        hbits += 1
    hsize = 1 << hbits
    hshift = np.uint64(64 - hbits)
    hkey = np.zeros(hsize, np.uint64)
    hval = np.zeros(hsize, np.int64)  # local id + 1; 0 = empty
    seen = np.empty(max(nvox, 4), np.uint64)
    slots = np.empty(nvox, np.int64)
    flat = vol.reshape(-1)
    sv = np.empty(max(nvox, 4), np.uint64)
    remap = np.zeros(nvox + 1, np.int64)
    loc = np.empty(nvox, np.int32)
    rl = np.empty(nvox, np.uint8)
    sentinel = nvox

    for bz in range(gz):
        z0 = bz * bsz
        ez = min(bsz, nz - z0)
        for by in range(gy):
            y0 = by * bsy
            ey = min(bsy, ny - y0)
            for bx in range(gx):
                x0 = bx * bsx
                ex = min(bsx, nx - x0)
                hdr = bx + gx * (by + gy * bz)
                partial = ex < bsx or ey < bsy or ez < bsz
                base = (z0 * ny + y0) * nx + x0
                m = _scan_small(flat, base, nx, ny, ex, ey, ez, seen)
                if m >= 1:
                    # at most 4 distinct values: ranks computed directly, no local ids
                    for i in range(m):
                        sv[i] = seen[i]
                    sort_unique(sv, m)
                    out = ensure_capacity(out, pos, block_need(m, nvox))
                    bits = 0
                    values_off = pos - 1
                    if m > 1:
                        bits = 1 if m == 2 else 2
                        if partial:
                            rl[:] = 0
                        _ranks_small(flat, base, nx, ny, ex, ey, ez, bsx, bsy, sv, m, rl)
                        pos = pack_rl(out, pos, bits, rl, nvox)
                    pos = emit_table(
                        out, pos, hdr, values_off, bits, sv, m, ht_hash, ht_off, ht_len
                    )
                    if pos == EMIT_OFFSET_OVERFLOW:
                        return 1, out, 0
                    continue
                if partial:
                    loc[:] = sentinel
                m = _scan_block(
                    flat,
                    base,
                    nx,
                    ny,
                    ex,
                    ey,
                    ez,
                    bsx,
                    bsy,
                    loc,
                    seen,
                    slots,
                    hkey,
                    hval,
                    hshift,
                    hsize,
                )
                if m == 1:
                    sv[0] = seen[0]
                    remap[0] = 0
                else:
                    for i in range(m):
                        sv[i] = seen[i]
                    sort_unique(sv, m)
                    for i in range(m):
                        remap[i] = rank_of(sv, m, seen[i])
                remap[sentinel] = 0
                out = ensure_capacity(out, pos, block_need(m, nvox))
                pos = emit_block(
                    out, pos, hdr, sv, m, loc, remap, nvox, rl, ht_hash, ht_off, ht_len
                )
                if pos == EMIT_OFFSET_OVERFLOW:
                    return 1, out, 0
    return 0, out, pos


_MAX_BLOCK_VOXELS = 64**3  # neuroglancer uses 8^3; this only bounds the scratch memory


def _check_block_size(block_size, exc=KernelError):
    try:
        bs = tuple(int(b) for b in block_size)
    except (TypeError, ValueError):
        raise exc(
            f"block_size must be three positive integers (x, y, z), got {block_size!r}"
        ) from None
    if len(bs) != 3 or any(b < 1 for b in bs):
        raise exc(f"block_size must be three positive integers (x, y, z), got {block_size!r}")
    if bs[0] * bs[1] * bs[2] > _MAX_BLOCK_VOXELS:
        raise exc(f"block_size {bs} too large: at most {_MAX_BLOCK_VOXELS} voxels per block")
    return bs


def _trim(out: np.ndarray, nwords: int) -> np.ndarray:
    """out[:nwords] as a 1-D uint8 array; copy when the buffer is much larger than needed."""
    if out.shape[0] > nwords + nwords // 4 + 64:
        return out[:nwords].copy().view(np.uint8)
    return out[:nwords].view(np.uint8)


def encode_cseg(volume: np.ndarray, block_size=(8, 8, 8)) -> np.ndarray:
    """Encode a uint64 ZYX volume (shape (nz, ny, nx)) as a one-channel neuroglancer
    compressed_segmentation buffer, byte-identical to TensorStore. block_size is (x, y, z).
    Returns a 1-D np.uint8 array."""
    if not isinstance(volume, np.ndarray):
        raise KernelError(f"volume must be a numpy array, got {type(volume).__name__}")
    if volume.ndim != 3:
        raise KernelError(f"volume must be 3-D (z, y, x), got shape {volume.shape}")
    if volume.dtype.kind != "u" or volume.dtype.itemsize != 8:
        raise KernelError(f"volume must have dtype uint64, got {volume.dtype}")
    if min(volume.shape) < 1:
        raise KernelError(f"volume must have at least 1 voxel per axis, got shape {volume.shape}")
    bsx, bsy, bsz = _check_block_size(block_size)
    vol = np.asarray(volume)  # drop ndarray subclasses (memmap, ...)
    if not vol.dtype.isnative:
        vol = vol.astype(np.uint64)
    if not vol.flags.c_contiguous:
        vol = np.ascontiguousarray(vol)
    vol = vol.view()
    vol.flags.writeable = False
    status, out, nwords = _encode_kernel(vol, bsx, bsy, bsz)
    if status != 0:
        raise KernelError(
            f"volume of shape {volume.shape} is too large for one compressed_segmentation chunk: "
            f"an offset exceeds the 24-bit limit of 2**24 words"
        )
    return _trim(out, nwords)


# ---------------------------------------------------------------------------------------
# decoder

_D_OK = 0
_D_HEADERS = 1  # info: need words, have words
_D_BITS = 2  # info: block, bits
_D_VALUES_OFF = 3  # info: block, values offset, need words, channel words
_D_TABLE_OFF = 4  # info: block, table offset, channel words
_D_EMPTY_TABLE = 5  # info: block, table offset
_D_INDEX = 6  # info: block, x, y, z, index, table size
_D_CHANNEL = 7  # info: channel offset, total words
_D_VOFF24 = 8  # info: block, values word


@njit(cache=True, nogil=True)
def _decode_kernel(words, nz, ny, nx, bsx, bsy, bsz, out, info):
    nwords = words.shape[0]
    chan = np.int64(words[0])
    if chan > nwords or chan < 1:
        info[0] = chan
        info[1] = nwords
        return _D_CHANNEL
    cw = nwords - chan  # words available to the channel
    gx = (nx + bsx - 1) // bsx
    gy = (ny + bsy - 1) // bsy
    gz = (nz + bsz - 1) // bsz
    nb = gx * gy * gz
    nvox = bsx * bsy * bsz
    if 2 * nb > cw:
        info[0] = 2 * nb
        info[1] = cw
        return _D_HEADERS
    for bz in range(gz):
        z0 = bz * bsz
        ez = min(bsz, nz - z0)
        for by in range(gy):
            y0 = by * bsy
            ey = min(bsy, ny - y0)
            for bx in range(gx):
                x0 = bx * bsx
                ex = min(bsx, nx - x0)
                hdr = bx + gx * (by + gy * bz)
                h0 = np.int64(words[chan + 2 * hdr])
                voff = np.int64(words[chan + 2 * hdr + 1])
                toff = h0 & 0xFFFFFF
                bits = h0 >> 24
                if (
                    bits != 0
                    and bits != 1
                    and bits != 2
                    and bits != 4
                    and bits != 8
                    and bits != 16
                    and bits != 32
                ):
                    info[0] = hdr
                    info[1] = bits
                    return _D_BITS
                if voff > 0xFFFFFF:
                    info[0] = hdr
                    info[1] = voff
                    return _D_VOFF24
                if toff > cw:
                    info[0] = hdr
                    info[1] = toff
                    info[2] = cw
                    return _D_TABLE_OFF
                tsize = (cw - toff) // 2
                vneed = (bits * nvox + 31) // 32
                if voff > cw or vneed > cw - voff:
                    info[0] = hdr
                    info[1] = voff
                    info[2] = vneed
                    info[3] = cw
                    return _D_VALUES_OFF
                tb = chan + toff
                if bits == 0:
                    if tsize < 1:
                        info[0] = hdr
                        info[1] = toff
                        return _D_EMPTY_TABLE
                    v = np.uint64(words[tb]) | (np.uint64(words[tb + 1]) << np.uint64(32))
                    for z in range(ez):
                        for y in range(ey):
                            for x in range(ex):
                                out[z0 + z, y0 + y, x0 + x] = v
                    continue
                vb = chan + voff
                vmask = (np.int64(1) << bits) - 1
                for z in range(ez):
                    for y in range(ey):
                        for x in range(ex):
                            k = x + bsx * (y + bsy * z)
                            bitpos = k * bits
                            idx = (np.int64(words[vb + (bitpos >> 5)]) >> (bitpos & 31)) & vmask
                            if idx >= tsize:
                                info[0] = hdr
                                info[1] = x
                                info[2] = y
                                info[3] = z
                                info[4] = idx
                                info[5] = tsize
                                return _D_INDEX
                            t = tb + 2 * idx
                            out[z0 + z, y0 + y, x0 + x] = np.uint64(words[t]) | (
                                np.uint64(words[t + 1]) << np.uint64(32)
                            )
    return _D_OK


def _block_name(hdr: int, gx: int, gy: int) -> str:
    bx = hdr % gx
    by = (hdr // gx) % gy
    bz = hdr // (gx * gy)
    return f"block {hdr} (bx={bx},by={by},bz={bz})"


def decode_cseg(data, shape_zyx, block_size=(8, 8, 8), out: np.ndarray | None = None) -> np.ndarray:
    """Decode a one-channel uint64 compressed_segmentation buffer into a ZYX volume of shape
    shape_zyx = (nz, ny, nx). block_size is (x, y, z). Raises CsegDecodeError on any bad
    offset, bit width, index or truncation. `out` (uint64, that shape, any strides, e.g. a
    slice of a larger array) is filled instead of a new array; on error its content is
    undefined."""
    try:
        shape = tuple(int(s) for s in shape_zyx)
    except (TypeError, ValueError):
        raise CsegDecodeError(f"shape_zyx must be three integers, got {shape_zyx!r}") from None
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise CsegDecodeError(f"shape_zyx must be three integers >= 1, got {shape_zyx!r}")
    bsx, bsy, bsz = _check_block_size(block_size, CsegDecodeError)
    nz, ny, nx = shape
    buf = as_u8(data, "compressed_segmentation data", CsegDecodeError)
    n = buf.shape[0]
    if n < 4 or n % 4 != 0:
        raise CsegDecodeError(
            f"compressed_segmentation data must be a non-empty multiple of 4 bytes, got {n} bytes"
        )
    if buf.ctypes.data % 4 != 0:
        buf = buf.copy()
    words = buf.view(np.uint32)
    words.flags.writeable = False
    gx = -(-nx // bsx)
    gy = -(-ny // bsy)
    gz = -(-nz // bsz)
    if 2 * gx * gy * gz > words.shape[0]:
        # check before allocating the output volume
        raise CsegDecodeError(
            f"compressed_segmentation data truncated: {gx * gy * gz} block headers need "
            f"{8 * gx * gy * gz + 4} bytes, buffer has {n}"
        )
    if out is None:
        out = np.empty(shape, dtype=np.uint64)
    elif (
        not isinstance(out, np.ndarray)
        or out.shape != shape
        or out.dtype != np.uint64
        or not out.flags.writeable
    ):
        raise CsegDecodeError(
            f"out must be a writeable uint64 array of shape {shape}, got "
            f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out).__name__)}"
        )
    info = np.zeros(8, dtype=np.int64)
    st = _decode_kernel(words, nz, ny, nx, bsx, bsy, bsz, out, info)
    if st == _D_OK:
        return out
    i = [int(v) for v in info]
    if st == _D_CHANNEL:
        msg = f"channel offset {i[0]} invalid: buffer has {i[1]} words"
    elif st == _D_HEADERS:
        msg = f"truncated: block headers need {i[0]} words after the channel offset, have {i[1]}"
    elif st == _D_BITS:
        msg = (
            f"{_block_name(i[0], gx, gy)} has invalid encoded bits {i[1]} (must be 0,1,2,4,8,16,32)"
        )
    elif st == _D_VOFF24:
        msg = f"{_block_name(i[0], gx, gy)} values offset {i[1]} exceeds 24 bits"
    elif st == _D_TABLE_OFF:
        msg = (
            f"{_block_name(i[0], gx, gy)} table offset {i[1]} is past the end of the "
            f"channel data ({i[2]} words)"
        )
    elif st == _D_VALUES_OFF:
        msg = (
            f"{_block_name(i[0], gx, gy)} encoded values at offset {i[1]} need {i[2]} words, "
            f"channel data has {i[3]} words"
        )
    elif st == _D_EMPTY_TABLE:
        msg = f"{_block_name(i[0], gx, gy)} lookup table at offset {i[1]} is empty (end of buffer)"
    elif st == _D_INDEX:
        msg = (
            f"{_block_name(i[0], gx, gy)} voxel (x={i[1]},y={i[2]},z={i[3]}) index {i[4]} out of "
            f"range: only {i[5]} table entries fit in the buffer"
        )
    else:  # pragma: no cover
        msg = f"unknown decoder status {st}"
    raise CsegDecodeError("compressed_segmentation " + msg)

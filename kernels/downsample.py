"""2x2x2 downsampling of uint64 label volumes (ZYX C-order, any shape), two voting rules.

* `mode` (TensorStore's `downsample(..., "mode")`): the most frequent value of each 2x2x2
  window; 0 votes like any label; ties go to the smallest value; windows at odd edges use only
  the voxels that exist (a 1x2x2 window votes with its 4 voxels).
* `dvid` (DVID's own downres, formats.md §9.2): 0 does not vote unless every present voxel is
  0; ties go to the smallest non-zero label.

Output shape is ceil(n / 2) per axis; output voxel (z, y, x) is the vote of input voxels
[2z, 2z + 2) x [2y, 2y + 2) x [2x, 2x + 2) clipped to the input.

Speed (bench/bench_downsample.py, one core of a loaded 2-core box: 1.4-2.1 G input voxels/s on
cache-resident segmentation-like data, 0.7-1.3 on 128 MiB inputs read from memory): each
output row is done in passes so that no branch depends on the data. Pass 1 writes v0 of every
full window and appends the positions of windows whose 8 values are not all equal (XOR test,
branch-free compaction); most windows of a segmentation hold one label and cost nothing more.
Pass 2 votes on those assuming two labels (a boundary, ~90% of them): two counts, no branches.
Pass 3 takes the few windows with three or more labels through a 19-comparator sorting network
and picks the first longest run (sorted order makes it the smallest of the most frequent; the
zeros of the `dvid` rule sit at the front, where they get no votes). Edge windows (odd sizes)
go through a small generic path. Only pass 1 reads memory, so on inputs larger than the caches
passes 2-3 touch the next row's input meanwhile (see _full_row).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .errors import KernelError

__all__ = ["DOWNSAMPLE_METHODS", "downsample_labels", "downsampled_shape"]

DOWNSAMPLE_METHODS = ("mode", "dvid")

TOUCH_MIN_BYTES = 16 << 20  # inputs at least this large touch the next row ahead (_full_row)

_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U2 = np.uint64(2)


@njit(cache=True, nogil=True, inline="always")
def _cas(a, b):
    """(min, max) without branches (selects compile to cmov)."""
    lo = a if a < b else b
    hi = b if a < b else a
    return lo, hi


@njit(cache=True, nogil=True, inline="always")
def _vote_sorted8(s0, s1, s2, s3, s4, s5, s6, s7, ignore_zero):
    """Winner of 8 ascending values: first (= smallest) value of the longest run. With
    ignore_zero, zeros (all at the front) get no votes; all zero -> 0."""
    best = s0
    run = np.int64(s0 != 0) if ignore_zero else np.int64(1)
    best_run = run
    # a loop over a homogeneous tuple: Numba unrolls it into plain data flow
    for v, prev in ((s1, s0), (s2, s1), (s3, s2), (s4, s3), (s5, s4), (s6, s5), (s7, s6)):
        run = run * np.int64(v == prev) + 1
        if ignore_zero:
            run = run * np.int64(v != 0)
        take = run > best_run
        best_run = run if take else best_run
        best = v if take else best
    return best


@njit(cache=True, nogil=True)
def _vote8_sorted(v0, v1, v2, v3, v4, v5, v6, v7, ignore_zero):
    """Vote of a full window with 3+ labels (rare). Optimal 19-comparator sorting network
    of depth 6, then the first longest run."""
    v0, v2 = _cas(v0, v2)
    v1, v3 = _cas(v1, v3)
    v4, v6 = _cas(v4, v6)
    v5, v7 = _cas(v5, v7)
    v0, v4 = _cas(v0, v4)
    v1, v5 = _cas(v1, v5)
    v2, v6 = _cas(v2, v6)
    v3, v7 = _cas(v3, v7)
    v0, v1 = _cas(v0, v1)
    v2, v3 = _cas(v2, v3)
    v4, v5 = _cas(v4, v5)
    v6, v7 = _cas(v6, v7)
    v2, v4 = _cas(v2, v4)
    v3, v5 = _cas(v3, v5)
    v1, v4 = _cas(v1, v4)
    v3, v6 = _cas(v3, v6)
    v1, v2 = _cas(v1, v2)
    v3, v4 = _cas(v3, v4)
    v5, v6 = _cas(v5, v6)
    return _vote_sorted8(v0, v1, v2, v3, v4, v5, v6, v7, ignore_zero)


@njit(cache=True, nogil=True, inline="always")
def _count(x, v0, v1, v2, v3, v4, v5, v6, v7):
    return (
        np.int64(v0 == x)
        + np.int64(v1 == x)
        + np.int64(v2 == x)
        + np.int64(v3 == x)
        + np.int64(v4 == x)
        + np.int64(v5 == x)
        + np.int64(v6 == x)
        + np.int64(v7 == x)
    )


@njit(cache=True, nogil=True, inline="always")
def _vote2(v0, v1, v2, v3, v4, v5, v6, v7, ignore_zero):
    """(vote, ok) of a mixed window assuming it holds exactly two labels, a = v0 and
    b = the first value != a, decided by their counts without branches. ok is False
    when the window holds more labels (then the vote is meaningless)."""
    a = v0
    b = v7
    b = v6 if v6 != a else b
    b = v5 if v5 != a else b
    b = v4 if v4 != a else b
    b = v3 if v3 != a else b
    b = v2 if v2 != a else b
    b = v1 if v1 != a else b
    ca = _count(a, v0, v1, v2, v3, v4, v5, v6, v7)
    cb = _count(b, v0, v1, v2, v3, v4, v5, v6, v7)
    ok = ca + cb == 8
    if ignore_zero:
        ca = ca if a != 0 else 0
        cb = cb if b != 0 else 0
    lo = a if a < b else b
    win = a if ca > cb else b
    return (lo if ca == cb else win), ok


@njit(cache=True, nogil=True)
def _vote_buf(buf, n, ignore_zero):
    """Vote of the first n (1..8) values of buf (edge windows). Insertion sort, then the
    first longest run."""
    for i in range(1, n):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    best = buf[0]
    run = 1
    if ignore_zero and best == 0:
        run = 0
    best_run = run
    for i in range(1, n):
        v = buf[i]
        run = run + 1 if v == buf[i - 1] else 1
        if ignore_zero and v == 0:
            run = 0
        if run > best_run:
            best_run = run
            best = v
    return best


@njit(cache=True, nogil=True)
def _edge_window(flat, nx, ny, nz, z0, y0, x0, buf, ignore_zero):
    """Vote of the window at input (z0, y0, x0) clipped to the volume."""
    n = 0
    for z in range(z0, min(z0 + 2, nz)):
        for y in range(y0, min(y0 + 2, ny)):
            for x in range(x0, min(x0 + 2, nx)):
                buf[n] = flat[(z * ny + y) * nx + x]
                n += 1
    return _vote_buf(buf, n, ignore_zero)


@njit(cache=True, nogil=True, inline="always")
def _full_row(flat, out, a, b, c, d, o, half, mixed, ntouch, ignore_zero):
    """Full windows of one output row: input rows a, b (plane z0) and c, d (plane z0 + 1)
    start at flat offsets a..d; output starts at o.

    Three passes (see the module docstring) over ever fewer windows; `mixed` holds the
    positions still to be voted on. Unsigned offsets: no negative-index fix-ups.

    The voting passes also touch the next output row's input (rows b + nx.., d + nx..: one
    cache line of each per window voted, `ntouch` lines each in all, the rest after pass 3) so
    that its memory reads overlap this row's arithmetic instead of stalling the next pass 1
    (1.4-1.7x on 256^3 inputs, bench/bench_downsample.py). Returns the XOR of the touched
    values: a result the compiler must keep, so the loads are not removed."""
    nxt_ab = b + (b - a)
    nxt_cd = d + (b - a)
    sink = _U0
    t = 0
    n = 0
    for ix in range(half):
        i = np.uint64(ix) * _U2
        v0 = flat[a + i]
        diff = (
            (v0 ^ flat[a + i + _U1])
            | (v0 ^ flat[b + i])
            | (v0 ^ flat[b + i + _U1])
            | (v0 ^ flat[c + i])
            | (v0 ^ flat[c + i + _U1])
            | (v0 ^ flat[d + i])
            | (v0 ^ flat[d + i + _U1])
        )
        out[o + np.uint64(ix)] = v0
        mixed[n] = ix
        n += np.int64(diff != _U0)
    # boundary windows: most hold exactly two labels
    m = 0
    for k in range(n):
        if t < ntouch:
            line = np.uint64(8 * t)  # 8 uint64 = one 64-byte cache line
            sink ^= flat[nxt_ab + line] ^ flat[nxt_cd + line]
            t += 1
        ix = mixed[k]
        i = np.uint64(ix) * _U2
        vote, ok = _vote2(
            flat[a + i],
            flat[a + i + _U1],
            flat[b + i],
            flat[b + i + _U1],
            flat[c + i],
            flat[c + i + _U1],
            flat[d + i],
            flat[d + i + _U1],
            ignore_zero,
        )
        out[o + np.uint64(ix)] = vote
        mixed[m] = ix  # m <= k: compacting in place is safe
        m += np.int64(not ok)
    # the rare windows with three or more labels
    for k in range(m):
        ix = mixed[k]
        i = np.uint64(ix) * _U2
        out[o + np.uint64(ix)] = _vote8_sorted(
            flat[a + i],
            flat[a + i + _U1],
            flat[b + i],
            flat[b + i + _U1],
            flat[c + i],
            flat[c + i + _U1],
            flat[d + i],
            flat[d + i + _U1],
            ignore_zero,
        )
    while t < ntouch:
        line = np.uint64(8 * t)
        sink ^= flat[nxt_ab + line] ^ flat[nxt_cd + line]
        t += 1
    return sink


@njit(cache=True, nogil=True)
def _downsample_kernel(vol, out, ignore_zero, touch=True):
    """`touch=False` turns the next-row touching off (bench/bench_downsample.py measures both
    side by side)."""
    nz, ny, nx = vol.shape
    onz, ony, onx = out.shape
    flat = vol.reshape(-1)
    oflat = out.reshape(-1)
    buf = np.empty(8, np.uint64)
    half = nx // 2
    mixed = np.empty(max(half, 1), np.int64)
    sink = _U0
    for oz in range(onz):
        z0 = 2 * oz
        for oy in range(ony):
            y0 = 2 * oy
            o = (oz * ony + oy) * onx
            if z0 + 1 < nz and y0 + 1 < ny:
                a = np.uint64((z0 * ny + y0) * nx)
                b = a + np.uint64(nx)
                c = a + np.uint64(ny * nx)
                d = c + np.uint64(nx)
                # the next output row of this plane pair, if there is one (its 2 rows per plane
                # are 2 * nx values = 2 * nx / 8 cache lines)
                ntouch = (2 * nx + 7) // 8 if touch and y0 + 3 < ny else 0
                sink ^= _full_row(
                    flat, oflat, a, b, c, d, np.uint64(o), half, mixed, ntouch, ignore_zero
                )
                if half < onx:  # odd nx: last window is 1 voxel wide
                    oflat[o + half] = _edge_window(
                        flat, nx, ny, nz, z0, y0, 2 * half, buf, ignore_zero
                    )
            else:
                for ox in range(onx):
                    oflat[o + ox] = _edge_window(flat, nx, ny, nz, z0, y0, 2 * ox, buf, ignore_zero)
    return sink


def downsampled_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """ceil(n / 2) per axis."""
    return tuple((int(n) + 1) // 2 for n in shape)  # type: ignore[return-value]


def downsample_labels(
    volume: np.ndarray, method: str = "mode", out: np.ndarray | None = None
) -> np.ndarray:
    """2x2x2 downsampling of a uint64 ZYX volume by `method` ("mode" or "dvid", see the
    module docstring). Returns an array of shape ceil(shape / 2) (or fills `out`)."""
    if method not in DOWNSAMPLE_METHODS:
        raise KernelError(f"downsample method must be one of {DOWNSAMPLE_METHODS}, got {method!r}")
    if not isinstance(volume, np.ndarray):
        raise KernelError(f"volume must be a numpy array, got {type(volume).__name__}")
    if volume.ndim != 3:
        raise KernelError(f"volume must be 3-D (z, y, x), got shape {volume.shape}")
    if volume.dtype.kind != "u" or volume.dtype.itemsize != 8:
        raise KernelError(f"volume must have dtype uint64, got {volume.dtype}")
    if min(volume.shape) < 1:
        raise KernelError(f"volume must have at least 1 voxel per axis, got shape {volume.shape}")
    vol = np.asarray(volume)
    if not vol.dtype.isnative:
        vol = vol.astype(np.uint64)
    if not vol.flags.c_contiguous:
        vol = np.ascontiguousarray(vol)
    want = downsampled_shape(vol.shape)
    if out is None:
        out = np.empty(want, dtype=np.uint64)
    elif (
        not isinstance(out, np.ndarray)
        or out.shape != want
        or out.dtype != np.uint64
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise KernelError(
            f"out must be a writeable C-contiguous uint64 array of shape {want}, got "
            f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out).__name__)}"
        )
    # touching ahead pays only when the input comes from memory: on cache-resident inputs it
    # is extra loads (5-10% slower at 64^3 = 2 MiB; 1.4-1.6x faster at 256^3 = 128 MiB)
    _downsample_kernel(vol, out, method == "dvid", vol.nbytes >= TOUCH_MIN_BYTES)
    return out


# ---------------------------------------------------------------------------------------
# fused: one compressed_segmentation chunk -> its 2x2x2 vote, without the decoded chunk
#
# A 2x2x2 window never crosses an 8^3 cseg block (blocks start at multiples of 8), so each
# block is voted on alone: a one-value block (the most common kind) just fills its 4^3 output
# voxels; any other is decoded into a 512-value buffer that stays in L1 and voted from there.
# The 2 MiB decoded chunk is never written or read back.

_F_OK = 0
_F_BAD = 1  # any inconsistency: the wrapper re-decodes with decode_cseg for the exact message


@njit(cache=True, nogil=True)
def _vote_block(vals, ex, ey, ez, out, oz0, oy0, ox0, buf, ignore_zero):
    """Vote the windows of one decoded block (vals: 8x8x8, x fastest, extent ex, ey, ez)
    into out[oz0.., oy0.., ox0..]."""
    hz, hy, hx = (ez + 1) // 2, (ey + 1) // 2, (ex + 1) // 2
    for wz in range(hz):
        z = 2 * wz
        for wy in range(hy):
            y = 2 * wy
            full_zy = z + 1 < ez and y + 1 < ey
            for wx in range(hx):
                x = 2 * wx
                if full_zy and x + 1 < ex:
                    k = x + 8 * (y + 8 * z)
                    v0 = vals[k]
                    v1 = vals[k + 1]
                    v2 = vals[k + 8]
                    v3 = vals[k + 9]
                    v4 = vals[k + 64]
                    v5 = vals[k + 65]
                    v6 = vals[k + 72]
                    v7 = vals[k + 73]
                    diff = (
                        (v0 ^ v1)
                        | (v0 ^ v2)
                        | (v0 ^ v3)
                        | (v0 ^ v4)
                        | (v0 ^ v5)
                        | (v0 ^ v6)
                        | (v0 ^ v7)
                    )
                    if diff == _U0:
                        r = v0
                    else:
                        r, ok = _vote2(v0, v1, v2, v3, v4, v5, v6, v7, ignore_zero)
                        if not ok:
                            r = _vote8_sorted(v0, v1, v2, v3, v4, v5, v6, v7, ignore_zero)
                else:
                    n = 0
                    for dz in range(min(2, ez - z)):
                        for dy in range(min(2, ey - y)):
                            for dx in range(min(2, ex - x)):
                                buf[n] = vals[(x + dx) + 8 * ((y + dy) + 8 * (z + dz))]
                                n += 1
                    r = _vote_buf(buf, n, ignore_zero)
                out[oz0 + wz, oy0 + wy, ox0 + wx] = r


@njit(cache=True, nogil=True)
def _vote_block_1bit(words, vb, tb, out, oz0, oy0, ox0, ignore_zero):
    """A full 8^3 block of two table entries (1 bit per voxel): each window's vote is decided by
    how many of its 8 bits are set, without decoding a value. Row (y, z) of the block is byte
    y + 8z of the 16 value words (x = bit)."""
    v0 = np.uint64(words[tb]) | (np.uint64(words[tb + 1]) << np.uint64(32))
    v1 = np.uint64(words[tb + 2]) | (np.uint64(words[tb + 3]) << np.uint64(32))
    lo = v0 if v0 < v1 else v1
    vote0 = not (ignore_zero and v0 == 0)  # does index 0 / 1 get votes?
    vote1 = not (ignore_zero and v1 == 0)
    for wz in range(4):
        for wy in range(4):
            r = 2 * wy + 16 * wz  # byte of row (2wy, 2wz); +1: y + 1; +8: z + 1
            acc = np.int64(0)  # set bits of window wx in nibble wx
            for dr in (0, 1, 8, 9):
                byte = r + dr
                row = (np.int64(words[vb + (byte >> 2)]) >> (8 * (byte & 3))) & 0xFF
                pairs = (row & 0x55) + ((row >> 1) & 0x55)  # 2-bit lanes: set bits per x pair
                acc += (
                    (pairs & 0x3)
                    | ((pairs & 0xC) << 2)
                    | ((pairs & 0x30) << 4)
                    | ((pairs & 0xC0) << 6)
                )
            for wx in range(4):
                c1 = (acc >> (4 * wx)) & 0xF
                n0 = (8 - c1) if vote0 else 0
                n1 = c1 if vote1 else 0
                tie = lo if n0 > 0 else np.uint64(0)  # no votes at all: only uncounted zeros
                win = v0 if n0 > n1 else v1
                out[oz0 + wz, oy0 + wy, ox0 + wx] = tie if n0 == n1 else win


@njit(cache=True, nogil=True)
def _cseg_downsample_kernel(words, nz, ny, nx, out, oz, oy, ox, ignore_zero):
    """8^3-block cseg chunk of shape (nz, ny, nx) -> its vote at out[oz.., oy.., ox..].
    Returns _F_OK or _F_BAD (bounds are checked like decode_cseg's)."""
    nwords = words.shape[0]
    if nwords < 1:
        return _F_BAD
    chan = np.int64(words[0])
    if chan > nwords or chan < 1:
        return _F_BAD
    cw = nwords - chan
    gx = (nx + 7) // 8
    gy = (ny + 7) // 8
    gz = (nz + 7) // 8
    if 2 * gx * gy * gz > cw:
        return _F_BAD
    vals = np.empty(512, np.uint64)
    buf = np.empty(8, np.uint64)
    for bz in range(gz):
        ez = min(8, nz - 8 * bz)
        for by in range(gy):
            ey = min(8, ny - 8 * by)
            for bx in range(gx):
                ex = min(8, nx - 8 * bx)
                hdr = bx + gx * (by + gy * bz)
                h0 = np.int64(words[chan + 2 * hdr])
                voff = np.int64(words[chan + 2 * hdr + 1])
                toff = h0 & 0xFFFFFF
                bits = h0 >> 24
                if bits not in (0, 1, 2, 4, 8, 16, 32) or voff > 0xFFFFFF or toff > cw:
                    return _F_BAD
                tsize = (cw - toff) // 2
                vneed = (bits * 512 + 31) // 32
                if voff > cw or vneed > cw - voff:
                    return _F_BAD
                tb = chan + toff
                oz0 = oz + 4 * bz
                oy0 = oy + 4 * by
                ox0 = ox + 4 * bx
                if bits == 0:
                    if tsize < 1:
                        return _F_BAD
                    v = np.uint64(words[tb]) | (np.uint64(words[tb + 1]) << np.uint64(32))
                    for wz in range((ez + 1) // 2):
                        for wy in range((ey + 1) // 2):
                            for wx in range((ex + 1) // 2):
                                out[oz0 + wz, oy0 + wy, ox0 + wx] = v
                    continue
                vb = chan + voff
                if bits == 1 and tsize >= 2 and ex == 8 and ey == 8 and ez == 8:
                    _vote_block_1bit(words, vb, tb, out, oz0, oy0, ox0, ignore_zero)
                    continue
                vmask = (np.int64(1) << bits) - 1
                for z in range(ez):
                    for y in range(ey):
                        for x in range(ex):
                            k = x + 8 * (y + 8 * z)
                            bitpos = k * bits
                            idx = (np.int64(words[vb + (bitpos >> 5)]) >> (bitpos & 31)) & vmask
                            if idx >= tsize:
                                return _F_BAD
                            t = tb + 2 * idx
                            vals[k] = np.uint64(words[t]) | (
                                np.uint64(words[t + 1]) << np.uint64(32)
                            )
                _vote_block(vals, ex, ey, ez, out, oz0, oy0, ox0, buf, ignore_zero)
    return _F_OK


def downsample_cseg_chunk(
    data,
    shape_zyx: tuple[int, int, int],
    out: np.ndarray,
    offset_zyx=(0, 0, 0),
    method: str = "mode",
) -> None:
    """Vote a compressed_segmentation chunk (8^3 blocks, uint64, one channel) of shape
    shape_zyx straight into out[offset:offset + ceil(shape / 2)], the same result as
    downsample_labels(decode_cseg(data, shape_zyx)) without decoding the chunk. Raises
    CsegDecodeError (as decode_cseg) on a corrupt buffer; out is then partly written."""
    from .cseg import decode_cseg

    if method not in DOWNSAMPLE_METHODS:
        raise KernelError(f"downsample method must be one of {DOWNSAMPLE_METHODS}, got {method!r}")
    nz, ny, nx = (int(s) for s in shape_zyx)
    oz, oy, ox = (int(o) for o in offset_zyx)
    half = downsampled_shape((nz, ny, nx))
    if (
        not isinstance(out, np.ndarray)
        or out.ndim != 3
        or out.dtype != np.uint64
        or not out.flags.writeable
        or min(nz, ny, nx, oz, oy, ox) < 0
        or any(o + h > s for o, h, s in zip((oz, oy, ox), half, out.shape, strict=True))
    ):
        raise KernelError(
            f"out must be a writeable 3-D uint64 array holding {half} voxels at {offset_zyx}, got "
            f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out).__name__)}"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = buf.reshape(-1).view(np.uint8)
    if buf.shape[0] < 4 or buf.shape[0] % 4:
        decode_cseg(data, (nz, ny, nx))  # raises CsegDecodeError with the exact cause
    if buf.ctypes.data % 4:
        buf = buf.copy()
    words = buf.view(np.uint32)
    st = _cseg_downsample_kernel(words, nz, ny, nx, out, oz, oy, ox, method == "dvid")
    if st != _F_OK:
        decode_cseg(data, (nz, ny, nx))  # raises CsegDecodeError with the exact cause
        raise KernelError("compressed_segmentation chunk is inconsistent")  # pragma: no cover

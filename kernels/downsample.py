"""2x2x2 downsampling of uint64 label volumes (ZYX C-order, any shape), two voting rules.

* `mode` (TensorStore's `downsample(..., "mode")`): the most frequent value of each 2x2x2
  window; 0 votes like any label; ties go to the smallest value; windows at odd edges use only
  the voxels that exist (a 1x2x2 window votes with its 4 voxels).
* `dvid` (DVID's own downres, formats.md §9.2): 0 does not vote unless every present voxel is
  0; ties go to the smallest non-zero label.

Output shape is ceil(n / 2) per axis; output voxel (z, y, x) is the vote of input voxels
[2z, 2z + 2) x [2y, 2y + 2) x [2x, 2x + 2) clipped to the input.

Speed (about 1 G input voxels/s per core on s0-like data, bench/bench_downsample.py): each
output row is done in passes so that no branch depends on the data. Pass 1 writes v0 of every
full window and appends the positions of windows whose 8 values are not all equal (XOR test,
branch-free compaction); most windows of a segmentation hold one label and cost nothing more.
Pass 2 votes on those assuming two labels (a boundary, ~90% of them): two counts, no branches.
Pass 3 takes the few windows with three or more labels through a 19-comparator sorting network
and picks the first longest run (sorted order makes it the smallest of the most frequent; the
zeros of the `dvid` rule sit at the front, where they get no votes). Edge windows (odd sizes)
go through a small generic path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .errors import KernelError

__all__ = ["DOWNSAMPLE_METHODS", "downsample_labels", "downsampled_shape"]

DOWNSAMPLE_METHODS = ("mode", "dvid")

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
def _full_row(flat, out, a, b, c, d, o, half, mixed, ignore_zero):
    """Full windows of one output row: input rows a, b (plane z0) and c, d (plane z0 + 1)
    start at flat offsets a..d; output starts at o.

    Three passes (see the module docstring) over ever fewer windows; `mixed` holds the
    positions still to be voted on. Unsigned offsets: no negative-index fix-ups."""
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


@njit(cache=True, nogil=True)
def _downsample_kernel(vol, out, ignore_zero):
    nz, ny, nx = vol.shape
    onz, ony, onx = out.shape
    flat = vol.reshape(-1)
    oflat = out.reshape(-1)
    buf = np.empty(8, np.uint64)
    half = nx // 2
    mixed = np.empty(max(half, 1), np.int64)
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
                _full_row(flat, oflat, a, b, c, d, np.uint64(o), half, mixed, ignore_zero)
                if half < onx:  # odd nx: last window is 1 voxel wide
                    oflat[o + half] = _edge_window(
                        flat, nx, ny, nz, z0, y0, 2 * half, buf, ignore_zero
                    )
            else:
                for ox in range(onx):
                    oflat[o + ox] = _edge_window(flat, nx, ny, nz, z0, y0, 2 * ox, buf, ignore_zero)


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
    _downsample_kernel(vol, out, method == "dvid")
    return out

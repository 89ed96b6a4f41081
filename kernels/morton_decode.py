"""Inverse of the compressed Morton code: chunk coordinates (x, y, z) of chunk ids, many at once.

The plain-numpy reference is `schemas.shard_format.morton_decode`; tests keep the two equal.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .errors import KernelError

__all__ = ["decode_morton_codes"]


@njit(cache=True, nogil=True)
def _decode_kernel(codes, bx, by, bz, out):
    maxb = max(bx, max(by, bz))
    for r in range(codes.shape[0]):
        c = codes[r]
        x = 0
        y = 0
        z = 0
        j = np.uint64(0)
        for i in range(maxb):
            if i < bx:
                x |= np.int64((c >> j) & np.uint64(1)) << i
                j += np.uint64(1)
            if i < by:
                y |= np.int64((c >> j) & np.uint64(1)) << i
                j += np.uint64(1)
            if i < bz:
                z |= np.int64((c >> j) & np.uint64(1)) << i
                j += np.uint64(1)
        out[r, 0] = x
        out[r, 1] = y
        out[r, 2] = z


def decode_morton_codes(codes, bits) -> np.ndarray:
    """(n, 3) int64 chunk coordinates of compressed Morton codes with `bits` = (bx, by, bz)
    bits per axis (bits above sum(bits) are ignored)."""
    try:
        bx, by, bz = (int(b) for b in bits)
    except (TypeError, ValueError):
        raise KernelError(f"bits must be three integers, got {bits!r}") from None
    if min(bx, by, bz) < 0 or bx + by + bz > 64 or max(bx, by, bz) > 62:
        raise KernelError(f"bits {bits!r} out of range (each 0..62, sum at most 64)")
    a = np.ascontiguousarray(np.asarray(codes, dtype=np.uint64).reshape(-1))
    if not a.flags.writeable:
        a = a.copy()
    out = np.zeros((a.shape[0], 3), np.int64)
    _decode_kernel(a, bx, by, bz, out)
    return out

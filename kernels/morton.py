"""Neuroglancer sharded precomputed: compressed Morton codes and shard/minishard ids
(identity hash), as in formats.md §7.3 / TensorStore."""

from __future__ import annotations

import numpy as np
from numba import njit

from .errors import KernelError

__all__ = ["compressed_morton_codes", "shard_and_minishard"]

_ONE = np.uint64(1)


@njit(cache=True, nogil=True)
def _out_of_range(v, b):
    if v < 0:
        return True
    if b >= 63:
        return False
    return (v >> b) != 0


@njit(cache=True, nogil=True)
def _morton_kernel(coords, bx, by, bz, out, bad):
    """Returns -1 on success, else the row of the first coordinate out of range (bad[0] = axis)."""
    maxb = max(bx, max(by, bz))
    for r in range(coords.shape[0]):
        x = coords[r, 0]
        y = coords[r, 1]
        z = coords[r, 2]
        if _out_of_range(x, bx):
            bad[0] = 0
            return r
        if _out_of_range(y, by):
            bad[0] = 1
            return r
        if _out_of_range(z, bz):
            bad[0] = 2
            return r
        code = np.uint64(0)
        j = 0
        for i in range(maxb):
            if i < bx:
                code |= np.uint64((x >> i) & 1) << np.uint64(j)
                j += 1
            if i < by:
                code |= np.uint64((y >> i) & 1) << np.uint64(j)
                j += 1
            if i < bz:
                code |= np.uint64((z >> i) & 1) << np.uint64(j)
                j += 1
        out[r] = code
    return -1


@njit(cache=True, nogil=True)
def _shard_kernel(codes, preshift, mbits, sbits, shard, minishard):
    mmask = np.uint64(0xFFFFFFFFFFFFFFFF) if mbits >= 64 else (_ONE << np.uint64(mbits)) - _ONE
    smask = np.uint64(0xFFFFFFFFFFFFFFFF) if sbits >= 64 else (_ONE << np.uint64(sbits)) - _ONE
    for i in range(codes.shape[0]):
        h = np.uint64(0) if preshift >= 64 else codes[i] >> np.uint64(preshift)
        minishard[i] = h & mmask
        if sbits == 0 or mbits >= 64:
            shard[i] = np.uint64(0)
        else:
            shard[i] = (h >> np.uint64(mbits)) & smask


def _bits3(bits) -> tuple[int, int, int]:
    try:
        b = tuple(int(v) for v in bits)
    except (TypeError, ValueError):
        raise KernelError(f"bits must be three integers (bx, by, bz), got {bits!r}") from None
    if len(b) != 3 or any(v < 0 or v > 64 for v in b):
        raise KernelError(f"bits must be three integers in 0..64 (bx, by, bz), got {bits!r}")
    if sum(b) > 64:
        raise KernelError(f"bits {b} sum to {sum(b)}: a compressed Morton code has at most 64 bits")
    return b  # type: ignore[return-value]


def compressed_morton_codes(coords: np.ndarray, bits) -> np.ndarray:
    """Compressed Morton codes (uint64) of chunk indices coords (n, 3) in x, y, z order.
    bits = (bx, by, bz): bits per axis, normally ceil(log2(grid size)). Each coordinate must be
    in 0 .. 2**bits[d] - 1."""
    bx, by, bz = _bits3(bits)
    c = np.asarray(coords)
    if c.ndim == 1 and c.shape[0] == 3:
        c = c.reshape(1, 3)
    if c.ndim != 2 or c.shape[1] != 3:
        raise KernelError(f"coords must have shape (n, 3) (x, y, z), got {c.shape}")
    if c.shape[0] and c.dtype.kind not in "iu":
        raise KernelError(f"coords must be integers, got dtype {c.dtype}")
    if c.dtype.kind == "u" and c.size and int(c.max()) > np.iinfo(np.int64).max:
        raise KernelError("coords out of range: values exceed int64")
    c = np.ascontiguousarray(c, dtype=np.int64)
    if not c.flags.writeable:  # one Numba specialisation: always a writable array
        c = c.copy()
    out = np.zeros(c.shape[0], np.uint64)
    bad = np.zeros(1, np.int64)
    r = _morton_kernel(c, bx, by, bz, out, bad)
    if r >= 0:
        ax = int(bad[0])
        raise KernelError(
            f"coords row {r} {tuple(int(v) for v in c[r])}: {'xyz'[ax]}={int(c[r, ax])} is "
            f"outside 0..{(1 << (bx, by, bz)[ax]) - 1} ({(bx, by, bz)[ax]} bits)"
        )
    return out


def shard_and_minishard(codes, preshift_bits: int, minishard_bits: int, shard_bits: int):
    """(shard, minishard) uint64 arrays for chunk ids `codes` with the identity hash."""
    p, m, s = int(preshift_bits), int(minishard_bits), int(shard_bits)
    for name, v in (("preshift_bits", p), ("minishard_bits", m), ("shard_bits", s)):
        if v < 0 or v > 64:
            raise KernelError(f"{name} must be 0..64, got {v}")
    a = np.asarray(codes)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise KernelError(f"codes must be 1-D, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise KernelError(f"codes must be integers, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.size and int(a.min()) < 0:
        raise KernelError("codes must be non-negative")
    a = np.ascontiguousarray(a, dtype=np.uint64)
    if not a.flags.writeable:  # one Numba specialisation: always a writable array
        a = a.copy()
    shard = np.empty(a.shape[0], np.uint64)
    minishard = np.empty(a.shape[0], np.uint64)
    _shard_kernel(a, p, m, s, shard, minishard)
    return shard, minishard

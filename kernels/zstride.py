"""Z-compressed conversion (`--z-compress N`): keep every (N+1)-th Z slice of a DVID block.

A source whose Z slices were doubled is converted back to native Z by keeping slices
z = 0, stride, 2*stride, ... of every 64^3 block (formats.md §8). The kernel decodes the DVID
block straight into the kept slices only (the packed values of every sub-block are still
unpacked and range-checked, so a corrupt block fails exactly as in the full decoder), and the
result is encoded as compressed_segmentation by the regular encoder.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._buffers import as_u8, as_u64_table
from .cseg import encode_cseg
from .dvid_block import (
    _I_GX,
    _I_GY,
    _I_GZ,
    _I_N,
    _I_OFF_COUNTS,
    _I_OFF_IDX,
    _I_OFF_VALS,
    _INFO_LEN,
    _INTERNAL,
    _OK,
    MAX_BLOCK_VOXELS,
    _bitlen,
    _effective_table,
    _parse,
    _raise,
    _rd16,
    _rd32,
    _unpack,
    _value_error,
)
from .errors import CorruptBlockError, KernelError

__all__ = ["decode_dvid_block_zstride", "dvid_block_to_cseg_zstride"]

_EMPTY_TABLE = np.zeros(0, np.uint64)


@njit(cache=True, nogil=True)
def _decode_zstride_kernel(buf, override, use_override, stride, info, max_voxels):
    """Returns (status, volume): volume is (8gz/stride, 8gy, 8gx) uint64, slice k = block
    slice k*stride."""
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
    nz_out = (8 * gz) // stride
    out = np.empty((nz_out, 8 * gy, 8 * gx), np.uint64)
    if info[_I_N] == 1:
        out[:] = tbl[0]
        return _OK, out
    n = buf.shape[0]
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
                if c >= 2:
                    d = _bitlen(c - 1)
                    if pv + 64 * d > n:
                        info[10] = sb
                        return _INTERNAL, empty
                    vmax = _unpack(buf, pv, d, vals)
                    pv += 64 * d
                    if vmax >= c:
                        return _value_error(vals, c, sb, info), empty
                for z in range(8):
                    zb = 8 * sz + z
                    if zb % stride:
                        continue
                    zo = zb // stride
                    for y in range(8):
                        yo = 8 * sy + y
                        for x in range(8):
                            if c == 0:
                                v = zero
                            elif c == 1:
                                v = pal[0]
                            else:
                                v = pal[vals[(z * 8 + y) * 8 + x]]
                            out[zo, yo, 8 * sx + x] = v
                sb += 1
    return _OK, out


def _check_stride(stride: int, gz: int | None = None) -> int:
    try:
        s = int(stride)
    except (TypeError, ValueError):
        raise KernelError(f"stride must be an integer, got {stride!r}") from None
    if s < 1 or 64 % s:
        raise KernelError(f"stride {s} must divide 64 (z_compress N = stride - 1)")
    return s


def decode_dvid_block_zstride(block, table: np.ndarray | None, stride: int) -> np.ndarray:
    """Decode a DVID block keeping Z slices 0, stride, 2*stride, ...: a uint64 volume of shape
    (8gz/stride, 8gy, 8gx), ZYX. `table` replaces the block's label table by position."""
    s = _check_stride(stride)
    buf = as_u8(block, "DVID block", CorruptBlockError)
    tbl, use = (
        (_EMPTY_TABLE, False)
        if table is None
        else (as_u64_table(table, "label table", CorruptBlockError), True)
    )
    if buf.shape[0] >= 12:  # the kernel's output has 8gz/stride slices: check before it runs
        gz = int(np.frombuffer(buf[8:12].tobytes(), "<u4")[0])
        if 1 <= gz <= 128 and (8 * gz) % s:
            raise KernelError(f"stride {s} does not divide the block's {8 * gz} Z slices")
    info = np.zeros(_INFO_LEN, np.int64)
    st, out = _decode_zstride_kernel(buf, tbl, use, s, info, MAX_BLOCK_VOXELS)
    if st != _OK:
        _raise(st, info)
    return out


def dvid_block_to_cseg_zstride(
    block, table: np.ndarray | None, stride: int, extent: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, bool]:
    """The compressed_segmentation chunk (8^3 blocks) of the Z-decimated block, clipped to
    `extent` = (nx, ny, nz) voxels of the output chunk; returns (bytes as uint8 array,
    nonzero). Equals encode_cseg(decode_dvid_block(block, table)[::stride][:nz, :ny, :nx])."""
    vol = decode_dvid_block_zstride(block, table, stride)
    if extent is not None:
        nx, ny, nz = (int(v) for v in extent)
        if not (1 <= nx <= vol.shape[2] and 1 <= ny <= vol.shape[1] and 1 <= nz <= vol.shape[0]):
            raise KernelError(
                f"extent {tuple(extent)} (x, y, z) invalid for a Z-decimated block of "
                f"{vol.shape[2]}x{vol.shape[1]}x{vol.shape[0]} voxels (x, y, z)"
            )
        vol = vol[:nz, :ny, :nx]
    return encode_cseg(vol), bool(vol.any())

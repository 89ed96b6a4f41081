"""Numba kernels: DVID block decoding/transcoding, compressed_segmentation, Morton codes,
2x2x2 label downsampling.

All hot loops are @njit(cache=True, nogil=True); the Python wrappers validate inputs and raise
KernelError subclasses with precise messages. Call warm_up() once per process before timing
anything (it compiles or loads every kernel from Numba's on-disk cache).
"""

from __future__ import annotations

import numpy as np

from .cseg import decode_cseg, encode_cseg
from .downsample import DOWNSAMPLE_METHODS, downsample_labels, downsampled_shape
from .dvid_block import (
    MAX_BLOCK_VOXELS,
    decode_dvid_block,
    dvid_block_header,
    dvid_block_table,
    dvid_block_to_cseg,
)
from .errors import CorruptBlockError, CsegDecodeError, KernelError
from .morton import compressed_morton_codes, shard_and_minishard

__all__ = [
    "DOWNSAMPLE_METHODS",
    "MAX_BLOCK_VOXELS",
    "CorruptBlockError",
    "CsegDecodeError",
    "KernelError",
    "compressed_morton_codes",
    "decode_cseg",
    "decode_dvid_block",
    "downsample_labels",
    "downsampled_shape",
    "dvid_block_header",
    "dvid_block_table",
    "dvid_block_to_cseg",
    "encode_cseg",
    "shard_and_minishard",
    "warm_up",
    "warm_up_for_workers",
    "warm_up_transcode",
]


def _tiny_block() -> bytes:
    """A 16^3 DVID block (2x2x2 sub-blocks, 3 labels) exercising n=0, 1, 2 and 3 palettes."""
    import struct

    table = [5, 7, 9]
    counts = [2, 1, 0, 3, 1, 1, 1, 1]
    indices = [0, 1, 2, 0, 1, 2, 0, 0, 0, 0]
    vals = bytes([0x0F] * 64) + bytes([0b00011000] * 128)  # 1 bit, then 2 bits (values 0,1,2)
    return (
        struct.pack("<4I", 2, 2, 2, len(table))
        + struct.pack(f"<{len(table)}Q", *table)
        + struct.pack(f"<{len(counts)}H", *counts)
        + struct.pack(f"<{len(indices)}I", *indices)
        + vals
    )


def warm_up() -> None:
    """Run every kernel once on tiny inputs (compiles, or loads Numba's on-disk cache)."""
    blk = _tiny_block()
    dvid_block_header(blk)
    dvid_block_table(blk)
    vol = decode_dvid_block(blk)
    decode_dvid_block(blk, np.array([1, 2, 3], np.uint64))
    decode_dvid_block(b"\x01\x00\x00\x00" * 3 + b"\x01\x00\x00\x00" + b"\x07" + b"\x00" * 7)
    dvid_block_to_cseg(blk)
    dvid_block_to_cseg(blk, np.array([1, 1, 0], np.uint64), (9, 16, 3))
    enc = encode_cseg(vol)
    for method in DOWNSAMPLE_METHODS:
        downsample_labels(vol[:, :, :15], method)
    decode_cseg(enc, vol.shape)
    codes = compressed_morton_codes(np.array([[1, 2, 3]], np.int64), (2, 2, 2))
    shard_and_minishard(codes, 1, 2, 3)
    _warm_up_scan()


def warm_up_for_workers() -> None:
    """What the worker image's build runs (Dockerfile): warm_up() under the workers' light
    load, so that Numba's runtime is written to its file as well (kernels/nrt_cache.py)."""
    from .cache_load import load_cached_lightly

    load_cached_lightly()
    warm_up()


def warm_up_transcode() -> None:
    """Load only what converting an exported shard calls (the DVID->cseg transcoder and the
    reader's bulk Arrow scan): the worker's start-up pays for these two, not for warm_up()."""
    dvid_block_to_cseg(_tiny_block(), np.array([1, 1, 0], np.uint64), (9, 16, 3))
    _warm_up_scan()


def _warm_up_scan() -> None:
    from .ipc_scan import OUT_COLUMNS, scan_record_batches

    block = np.zeros(16, np.uint8)
    block.flags.writeable = False  # the reader's blocks are read-only: the same specialisation
    fields = np.zeros((7, 2), np.int64)
    scan_record_batches(
        block, 0, 16, fields, 10, 20, np.zeros((1, OUT_COLUMNS), np.int64), np.zeros(1, np.int64)
    )

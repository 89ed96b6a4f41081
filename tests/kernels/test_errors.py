"""Argument checks and the exact error messages of the wrappers."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import dvid2ng.kernels as kernels
from dvid2ng.kernels import (
    CorruptBlockError,
    CsegDecodeError,
    KernelError,
    decode_cseg,
    decode_dvid_block,
    dvid_block_header,
    dvid_block_table,
    dvid_block_to_cseg,
    encode_cseg,
)
from tests.kernels.reference import assemble_dvid_block, encode_dvid_block_reference


def _block(grid=(8, 8, 8), n=5):
    """A valid block with an n-entry table; sub-block i has palette [i % n, (i+1) % n]."""
    nsb = grid[0] * grid[1] * grid[2]
    pal = [[i % n, (i + 1) % n] for i in range(nsb)]
    vals = [np.arange(512) % 2 for _ in range(nsb)]
    return assemble_dvid_block(grid, list(range(100, 100 + n)), pal, vals)


def test_exception_hierarchy():
    assert issubclass(KernelError, ValueError)
    assert issubclass(CorruptBlockError, KernelError)
    assert issubclass(CsegDecodeError, KernelError)


def test_table_truncated_message():
    block = struct.pack("<4I", 8, 8, 8, 18) + bytes(84)
    with pytest.raises(
        CorruptBlockError,
        match=r"^DVID block truncated: label table of 18 entries needs 160 bytes, buffer has 100$",
    ):
        decode_dvid_block(block)


def test_header_truncated_message():
    with pytest.raises(CorruptBlockError, match="header needs 16 bytes, buffer has 7"):
        dvid_block_header(b"\x08" * 7)


def test_bad_grid_message():
    with pytest.raises(
        CorruptBlockError, match=r"gx=0 gy=8 gz=8; gx, gy, gz must each be 1\.\.128"
    ):
        decode_dvid_block(struct.pack("<4IQ", 0, 8, 8, 1, 5))
    with pytest.raises(CorruptBlockError, match="gx=129"):
        decode_dvid_block(struct.pack("<4IQ", 129, 8, 8, 1, 5))


def test_too_many_voxels_message():
    with pytest.raises(CorruptBlockError, match="MAX_BLOCK_VOXELS"):
        decode_dvid_block(struct.pack("<4IQ", 128, 128, 128, 1, 5))


def test_zero_labels():
    with pytest.raises(CorruptBlockError, match="0 entries"):
        decode_dvid_block(struct.pack("<4I", 8, 8, 8, 0))


def test_palette_index_out_of_range_message():
    block = bytearray(_block(n=5))
    n, nsb = 5, 512
    off = 16 + 8 * n + 2 * nsb + 4 * (2 * 37 + 1)  # sub-block 37, second palette entry
    block[off : off + 4] = struct.pack("<I", 7)
    with pytest.raises(
        CorruptBlockError,
        match=r"sub-block 37 \(sx=5,sy=4,sz=0\) palette index 7 \(entry 1\) out of range: block has 5 labels",
    ):
        decode_dvid_block(bytes(block))
    with pytest.raises(CorruptBlockError, match="sub-block 37"):
        dvid_block_to_cseg(bytes(block))
    with pytest.raises(CorruptBlockError, match="sub-block 37"):
        dvid_block_header(bytes(block))


def test_value_out_of_range_message():
    # sub-block 3 with a 3-entry palette (2 bits) holding the value 3 at voxel (x=1, y=0, z=0)
    pal = [[0]] * 8
    vals = [None] * 8
    pal[3] = [0, 1, 2]
    v = np.zeros(512, np.int64)
    v[1] = 3
    vals[3] = v
    block = assemble_dvid_block((2, 2, 2), [5, 6, 7], pal, vals)
    msg = (
        r"sub-block 3 \(sx=1,sy=1,sz=0\) voxel \(x=1,y=0,z=0\) has palette value 3 out of "
        r"range: sub-block palette has 3 entries"
    )
    with pytest.raises(CorruptBlockError, match=msg):
        decode_dvid_block(block)
    with pytest.raises(CorruptBlockError, match=msg):
        dvid_block_to_cseg(block)
    # outside the extent the error is still reported (the block is corrupt either way)
    with pytest.raises(CorruptBlockError, match=msg):
        dvid_block_to_cseg(block, extent=(8, 8, 8))


def test_palette_larger_than_512():
    block = bytearray(_block(grid=(1, 1, 1), n=2))
    block[16 + 16 : 16 + 18] = struct.pack("<H", 513)
    with pytest.raises(CorruptBlockError, match="palette size 513 exceeds 512"):
        decode_dvid_block(bytes(block))


def test_truncation_messages():
    block = _block(grid=(1, 1, 1), n=2)  # 16 + 16 + 2 + 8 + 64 = 106 bytes
    assert len(block) == 106
    with pytest.raises(CorruptBlockError, match=r"palette counts .* need 34 bytes, buffer has 33"):
        decode_dvid_block(block[:33])
    with pytest.raises(
        CorruptBlockError, match="palette indices need 42 bytes in total, buffer has 41"
    ):
        decode_dvid_block(block[:41])
    with pytest.raises(CorruptBlockError, match="make the block 106 bytes, buffer has 105"):
        decode_dvid_block(block[:105])
    with pytest.raises(
        CorruptBlockError, match=r"exactly 106 bytes, buffer has 108 \(2 unexpected"
    ):
        decode_dvid_block(block + b"\0\0")


def test_table_length_must_match():
    block = _block(n=5)
    for bad in ([1, 2, 3, 4], [1] * 6, []):
        with pytest.raises(
            CorruptBlockError, match=f"has {len(bad)} entries, the block's own table has 5"
        ):
            decode_dvid_block(block, np.array(bad, np.uint64))
        with pytest.raises(CorruptBlockError, match="must match by position"):
            dvid_block_to_cseg(block, bad)


def test_table_types():
    block = _block(n=2)
    expected = decode_dvid_block(block, np.array([7, 2**64 - 1], np.uint64))
    for t in ([7, 2**64 - 1], np.array([7, 2**64 - 1], dtype=object)):
        np.testing.assert_array_equal(decode_dvid_block(block, t), expected)
    np.testing.assert_array_equal(
        decode_dvid_block(block, np.array([7, 8], np.int32)), decode_dvid_block(block, [7, 8])
    )
    with pytest.raises(CorruptBlockError, match="negative"):
        decode_dvid_block(block, np.array([-1, 3]))
    with pytest.raises(CorruptBlockError, match=r"outside 0\.\.2"):
        decode_dvid_block(block, [-1, 3])
    with pytest.raises(CorruptBlockError, match="must hold integers"):
        decode_dvid_block(block, [1.5, 3])
    with pytest.raises(CorruptBlockError, match="dtype float"):
        decode_dvid_block(block, np.array([1.0, 3.0]))
    with pytest.raises(CorruptBlockError, match="1-D"):
        decode_dvid_block(block, np.zeros((2, 1), np.uint64))


def test_buffer_types():
    block = _block(n=3)
    vol = decode_dvid_block(block)
    cseg, _ = dvid_block_to_cseg(block)
    arr = np.frombuffer(block, np.uint8).copy()
    for b in (bytearray(block), memoryview(block), arr, arr[None, :]):
        np.testing.assert_array_equal(decode_dvid_block(b), vol)
        assert dvid_block_to_cseg(b)[0].tobytes() == cseg.tobytes()
    # a strided memoryview (copied) and other buffer-protocol objects
    doubled = bytes(b for ch in block for b in (ch, 0))
    np.testing.assert_array_equal(decode_dvid_block(memoryview(doubled)[::2]), vol)
    pa = pytest.importorskip("pyarrow")
    np.testing.assert_array_equal(decode_dvid_block(pa.py_buffer(block)), vol)
    # an unaligned uint8 view
    big = np.zeros(len(block) + 1, np.uint8)
    big[1:] = arr
    np.testing.assert_array_equal(decode_dvid_block(big[1:]), vol)
    assert arr.flags.writeable  # our read-only view did not change the caller's array
    with pytest.raises(CorruptBlockError, match="dtype uint16"):
        decode_dvid_block(np.zeros(8, np.uint16))
    with pytest.raises(CorruptBlockError, match="got str"):
        decode_dvid_block("abc")


def test_extent_checks():
    block = _block(grid=(2, 2, 2), n=3)
    for bad in ((0, 8, 8), (17, 8, 8), (8, 8, 17), (-1, 1, 1)):
        with pytest.raises(KernelError, match="extent"):
            dvid_block_to_cseg(block, extent=bad)
    with pytest.raises(KernelError, match="extent"):
        dvid_block_to_cseg(block, extent=(1, 2))
    cseg, _ = dvid_block_to_cseg(block, extent=(16, 16, 16))
    assert cseg.tobytes() == dvid_block_to_cseg(block)[0].tobytes()


def test_encode_cseg_argument_checks():
    with pytest.raises(KernelError, match="uint64"):
        encode_cseg(np.zeros((2, 2, 2), np.uint32))
    with pytest.raises(KernelError, match="3-D"):
        encode_cseg(np.zeros((2, 2), np.uint64))
    with pytest.raises(KernelError, match="at least 1 voxel"):
        encode_cseg(np.zeros((0, 2, 2), np.uint64))
    with pytest.raises(KernelError, match="block_size"):
        encode_cseg(np.zeros((2, 2, 2), np.uint64), block_size=(8, 0, 8))
    with pytest.raises(KernelError, match="numpy array"):
        encode_cseg([[[1]]])


def test_encode_cseg_accepts_views_and_byte_orders():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 4, size=(20, 21, 22)).astype(np.uint64)
    expected = encode_cseg(np.ascontiguousarray(vol[2:15, ::2, 3:]))
    assert encode_cseg(vol[2:15, ::2, 3:]).tobytes() == expected.tobytes()
    big_endian = np.ascontiguousarray(vol[2:15, ::2, 3:]).astype(">u8")
    assert encode_cseg(big_endian).tobytes() == expected.tobytes()


def test_decode_cseg_messages():
    vol = np.arange(8 * 8 * 16, dtype=np.uint64).reshape(8, 8, 16) % 3
    data = bytearray(encode_cseg(vol).tobytes())
    with pytest.raises(CsegDecodeError, match="multiple of 4"):
        decode_cseg(bytes(data[:-1]), vol.shape)
    with pytest.raises(CsegDecodeError, match="2 block headers need 20 bytes, buffer has 12"):
        decode_cseg(bytes(data[:12]), vol.shape)
    bad = bytearray(data)
    bad[4 + 3] = 3  # block 0 bits = 3
    with pytest.raises(
        CsegDecodeError, match=r"block 0 \(bx=0,by=0,bz=0\) has invalid encoded bits 3"
    ):
        decode_cseg(bytes(bad), vol.shape)
    bad = bytearray(data)
    bad[12:16] = struct.pack("<I", 10**6)  # block 1 table offset
    with pytest.raises(CsegDecodeError, match=r"block 1 \(bx=1,by=0,bz=0\) table offset"):
        decode_cseg(bytes(bad), vol.shape)
    bad = bytearray(data)
    bad[0:4] = struct.pack("<I", 10**6)
    with pytest.raises(CsegDecodeError, match="channel offset"):
        decode_cseg(bytes(bad), vol.shape)
    with pytest.raises(CsegDecodeError, match="values at offset"):
        decode_cseg(bytes(data[:-8]), vol.shape)  # the last table entry and values cut
    with pytest.raises(CsegDecodeError, match="shape_zyx"):
        decode_cseg(bytes(data), (8, 8))


def test_warm_up_and_exports():
    kernels.warm_up()
    for name in kernels.__all__:
        assert hasattr(kernels, name)


def test_header_and_table_of_solid_block():
    block = encode_dvid_block_reference(np.full((16, 24, 8), 2**64 - 1, np.uint64))
    assert len(block) == 24
    assert dvid_block_header(block) == (1, 3, 2, 1)
    assert dvid_block_table(block).tolist() == [2**64 - 1]
    cseg, nonzero = dvid_block_to_cseg(block, extent=(5, 24, 9))
    assert nonzero
    assert cseg.tobytes() == encode_cseg(np.full((9, 24, 5), 2**64 - 1, np.uint64)).tobytes()
    cseg, nonzero = dvid_block_to_cseg(block, [0])
    assert not nonzero

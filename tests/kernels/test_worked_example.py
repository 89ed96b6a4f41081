"""formats.md §5.4 / §7.5: the 3172-byte two-label DVID block and its 4188-byte cseg chunk."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dvid2ng.kernels import (
    decode_cseg,
    decode_dvid_block,
    dvid_block_header,
    dvid_block_table,
    dvid_block_to_cseg,
    encode_cseg,
)
from tests.kernels.reference import (
    decode_dvid_block_reference,
    encode_cseg_reference,
    encode_dvid_block_reference,
)


def worked_example_block(order=(100, 200)) -> bytes:
    """Byte for byte as listed in §5.4 (table order [100, 200] or [200, 100])."""
    a, b = order
    ia, ib = order.index(100), order.index(200)
    out = struct.pack("<3I", 8, 8, 8) + struct.pack("<I", 2)
    out += struct.pack("<2Q", a, b)
    out += struct.pack("<H", 2) + struct.pack("<H", 1) * 511
    out += struct.pack("<2I", ia, ib) + struct.pack("<I", ia) * 511
    out += bytes([0x0F]) * 64
    return out


def worked_example_volume() -> np.ndarray:
    vol = np.full((64, 64, 64), 100, dtype=np.uint64)
    vol[:8, :8, 4:8] = 200  # sub-block 0, voxels with x >= 4
    return vol


@pytest.mark.parametrize("order", [(100, 200), (200, 100)])
def test_worked_example_block_decodes(order):
    block = worked_example_block(order)
    assert len(block) == 3172 == 0x0C64
    assert block[0x20:0x22] == b"\x02\x00" and block[0xC24:0xC25] == b"\x0f"
    assert dvid_block_header(block) == (8, 8, 8, 2)
    assert dvid_block_table(block).tolist() == list(order)
    vol = decode_dvid_block(block)
    np.testing.assert_array_equal(vol, worked_example_volume())
    np.testing.assert_array_equal(decode_dvid_block_reference(block), worked_example_volume())
    assert encode_dvid_block_reference(worked_example_volume(), order) == block


def test_worked_example_cseg_layout():
    cseg, nonzero = dvid_block_to_cseg(worked_example_block())
    assert nonzero
    data = cseg.tobytes()
    assert len(data) == 4188 == 4 + 512 * 8 + (16 + 4) * 4 + 2 * 4
    w = np.frombuffer(data, dtype="<u4")
    assert w[0] == 1
    hdr = w[1 : 1 + 1024].reshape(512, 2)
    # block 0: table offset 1040, 1 bit, values at 1024 (offsets in words from byte 4)
    assert hdr[0, 0] == 1040 | (1 << 24) and hdr[0, 1] == 1024
    values0 = w[1 + 1024 : 1 + 1040]
    assert values0.tolist() == [0xF0F0F0F0] * 16  # x >= 4 -> index 1
    assert np.frombuffer(data, "<u8", count=2, offset=4 + 1040 * 4).tolist() == [100, 200]
    # block 1: 0 bits, its table [100] at 1044 (and its empty values there too)
    assert hdr[1, 0] == 1044 and hdr[1, 1] == 1044
    assert np.frombuffer(data, "<u8", count=1, offset=4 + 1044 * 4).tolist() == [100]
    # blocks 2..511: the shared table at 1044, values offset = end of data (1046)
    assert (hdr[2:, 0] == 1044).all() and (hdr[2:, 1] == 1046).all()
    assert data == encode_cseg(worked_example_volume()).tobytes()
    assert data == encode_cseg_reference(worked_example_volume())
    np.testing.assert_array_equal(decode_cseg(data, (64, 64, 64)), worked_example_volume())


def test_worked_example_table_order_does_not_change_cseg():
    a, _ = dvid_block_to_cseg(worked_example_block((100, 200)))
    b, _ = dvid_block_to_cseg(worked_example_block((200, 100)))
    assert a.tobytes() == b.tobytes()


def test_worked_example_body_mapping():
    block = worked_example_block()
    # both supervoxels map to one body: every cseg block has the one-entry table
    cseg, nonzero = dvid_block_to_cseg(block, np.array([7, 7], dtype=np.uint64))
    assert nonzero
    assert len(cseg) == 4 + 512 * 8 + 8
    np.testing.assert_array_equal(
        decode_dvid_block(block, [7, 7]), np.full((64, 64, 64), 7, np.uint64)
    )
    # both map to background: still a valid chunk, but nothing non-zero
    cseg, nonzero = dvid_block_to_cseg(block, [0, 0])
    assert not nonzero
    assert cseg.tobytes() == encode_cseg(np.zeros((64, 64, 64), np.uint64)).tobytes()

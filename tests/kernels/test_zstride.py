"""Z-stride decoding (--z-compress) and the Morton decode kernel, against the full decoder and
the plain-numpy references (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.kernels import (
    CorruptBlockError,
    KernelError,
    compressed_morton_codes,
    decode_dvid_block,
    encode_cseg,
)
from dvid2ng.kernels.morton_decode import decode_morton_codes
from dvid2ng.kernels.zstride import decode_dvid_block_zstride, dvid_block_to_cseg_zstride
from dvid2ng.schemas.shard_format import morton_decode
from tests.conftest import read_gz
from tests.kernels._strategies import assembled_blocks, dvid_volumes
from tests.kernels.reference import encode_dvid_block_reference

STRIDES = st.sampled_from([1, 2, 4, 8, 16, 32, 64])


def _stride_for(block: bytes, stride: int) -> int:
    gz = int(np.frombuffer(block, "<u4", 1, 8)[0])
    while (8 * gz) % stride:
        stride //= 2
    return stride


@settings(max_examples=120, deadline=None)
@given(vol=dvid_volumes(), stride=STRIDES)
def test_zstride_decode_keeps_every_stride_th_slice(vol, stride):
    block = encode_dvid_block_reference(vol)
    stride = _stride_for(block, stride)
    np.testing.assert_array_equal(
        decode_dvid_block_zstride(block, None, stride), decode_dvid_block(block)[::stride]
    )


@settings(max_examples=80, deadline=None)
@given(data=assembled_blocks(), stride=STRIDES, mapped=st.booleans(), seed=st.integers(0, 999))
def test_zstride_on_unusual_blocks_with_mapping(data, stride, mapped, seed):
    block, n = data
    stride = _stride_for(block, stride)
    table = None
    if mapped:
        rng = np.random.default_rng(seed)
        table = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        table[rng.random(n) < 0.3] = 0
    full = decode_dvid_block(block, table)
    got = decode_dvid_block_zstride(block, table, stride)
    np.testing.assert_array_equal(got, full[::stride])
    nz, ny, nx = got.shape
    extent = (max(1, nx - 3), max(1, ny - 1), max(1, nz - 1))
    cseg, nonzero = dvid_block_to_cseg_zstride(block, table, stride, extent)
    want = np.ascontiguousarray(full[::stride][: extent[2], : extent[1], : extent[0]])
    assert cseg.tobytes() == encode_cseg(want).tobytes()
    assert nonzero == bool(want.any())


def test_zstride_on_dvid_go_fixture_blocks(shared_fixtures):
    for path in sorted((shared_fixtures / "dvid-go-blocks").glob("*.dvidblock.gz")):
        block = read_gz(path)
        full = decode_dvid_block(block)
        for stride in (2, 4, 64):
            np.testing.assert_array_equal(
                decode_dvid_block_zstride(block, None, stride), full[::stride], err_msg=path.name
            )


def test_zstride_rejects_bad_stride_and_corrupt_blocks():
    vol = np.zeros((64, 64, 64), np.uint64)
    vol[:, :, 5:] = 9
    block = encode_dvid_block_reference(vol)
    with pytest.raises(KernelError, match="stride 3 must divide 64"):
        decode_dvid_block_zstride(block, None, 3)
    with pytest.raises(CorruptBlockError):  # the same checks as the full decoder
        decode_dvid_block_zstride(block[:-5], None, 2)
    with pytest.raises(CorruptBlockError, match="label table given"):
        decode_dvid_block_zstride(block, np.array([1], np.uint64), 2)
    with pytest.raises(KernelError, match="extent"):
        dvid_block_to_cseg_zstride(block, None, 2, (64, 64, 33))
    small = encode_dvid_block_reference(np.ones((8, 16, 16), np.uint64))  # 8 slices
    with pytest.raises(KernelError, match="stride 16 does not divide the block's 8 Z slices"):
        decode_dvid_block_zstride(small, None, 16)


@settings(max_examples=200, deadline=None)
@given(
    bits=st.tuples(st.integers(0, 21), st.integers(0, 21), st.integers(0, 21)),
    data=st.data(),
)
def test_morton_decode_inverts_the_code(bits, data):
    n = data.draw(st.integers(0, 20))
    coords = np.array(
        [[data.draw(st.integers(0, (1 << b) - 1)) for b in bits] for _ in range(n)], np.int64
    ).reshape(n, 3)
    codes = compressed_morton_codes(coords, bits)
    np.testing.assert_array_equal(decode_morton_codes(codes, bits), coords)
    np.testing.assert_array_equal(morton_decode(codes, bits), coords)


def test_morton_decode_vectors():
    # formats.md §7.3 test vectors (bits 4, 2, 1)
    codes = np.array([0, 1, 2, 0b1100, 0b11010, 0b1010101], np.uint64)
    want = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (2, 0, 1), (2, 3, 0), (9, 2, 1)]
    assert [tuple(r) for r in decode_morton_codes(codes, (4, 2, 1)).tolist()] == want

"""Compressed Morton codes and shard / minishard numbers (formats.md §7.3)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.kernels import KernelError, compressed_morton_codes, shard_and_minishard
from tests.kernels.reference import compressed_morton_reference, shard_and_minishard_reference


def test_tensorstore_vectors():
    coords = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 1], [2, 3, 0], [9, 2, 1]], np.int64)
    codes = compressed_morton_codes(coords, (4, 2, 1))
    assert codes.dtype == np.uint64
    assert codes.tolist() == [0, 1, 2, 0b1100, 0b11010, 0b1010101]
    assert compressed_morton_codes(np.array([[0, 0, 4]]), (1, 1, 3)).tolist() == [16]


def test_mcns_shard_names():
    # DVID shard 10240_40960_43008 at s0 -> chunk (160, 640, 672) -> shard 25029 (061c5.shard)
    bits = (11, 11, 12)  # mCNS s0 grid 1471 x 1224 x 2103 chunks
    codes = compressed_morton_codes(np.array([[160, 640, 672], [224, 192, 704]]), bits)
    assert codes.tolist() == [820150272, 553418752]
    shard, _ = shard_and_minishard(codes, 9, 6, 19)
    assert shard.tolist() == [25029, 16889]


def test_shard_and_minishard_edge_cases():
    codes = np.array([0, 1, 2**64 - 1, 0x30E28000], dtype=np.uint64)
    shard, mini = shard_and_minishard(codes, 64, 3, 4)
    assert shard.tolist() == [0] * 4 and mini.tolist() == [0] * 4
    shard, mini = shard_and_minishard(codes, 0, 0, 0)
    assert shard.tolist() == [0] * 4 and mini.tolist() == [0] * 4
    shard, mini = shard_and_minishard(codes, 0, 64, 0)
    assert mini.tolist() == codes.tolist() and shard.tolist() == [0] * 4
    shard, mini = shard_and_minishard(codes, 2, 1, 2)
    assert shard.dtype == np.uint64 and mini.dtype == np.uint64
    assert [shard_and_minishard_reference(int(c), 2, 1, 2) for c in codes] == list(
        zip(shard.tolist(), mini.tolist(), strict=True)
    )


def test_empty_inputs():
    assert compressed_morton_codes(np.zeros((0, 3), np.int64), (3, 3, 3)).shape == (0,)
    s, m = shard_and_minishard(np.zeros(0, np.uint64), 1, 1, 1)
    assert s.shape == m.shape == (0,)


@pytest.mark.parametrize(
    ("coords", "bits", "match"),
    [
        ([[8, 0, 0]], (3, 3, 3), "x=8 is outside 0..7"),
        ([[0, -1, 0]], (3, 3, 3), "y=-1"),
        ([[0, 0, 1]], (3, 3, 0), "z=1 is outside 0..0"),
        ([[0, 0]], (3, 3, 3), "shape"),
        ([[0, 0, 0]], (30, 30, 30), "at most 64 bits"),
        ([[0, 0, 0]], (1, 2), "three integers"),
        ([[0.5, 0, 0]], (1, 2, 3), "integers"),
    ],
)
def test_morton_errors(coords, bits, match):
    with pytest.raises(KernelError, match=match):
        compressed_morton_codes(np.array(coords), bits)


def test_shard_errors():
    with pytest.raises(KernelError, match=r"shard_bits must be 0\.\.64"):
        shard_and_minishard(np.zeros(1, np.uint64), 0, 0, 65)
    with pytest.raises(KernelError, match="non-negative"):
        shard_and_minishard(np.array([-1]), 0, 0, 1)


@st.composite
def coords_and_bits(draw):
    bits = tuple(draw(st.integers(0, 21)) for _ in range(3))
    n = draw(st.integers(0, 20))
    coords = [[draw(st.integers(0, (1 << b) - 1)) for b in bits] for _ in range(n)]
    return np.array(coords, dtype=np.int64).reshape(n, 3), bits


@settings(max_examples=300, deadline=None)
@given(cb=coords_and_bits(), pre=st.integers(0, 70), mini=st.integers(0, 20), sh=st.integers(0, 20))
def test_morton_and_shards_match_reference(cb, pre, mini, sh):
    coords, bits = cb
    pre = min(pre, 64)
    codes = compressed_morton_codes(coords, np.array(bits, dtype=np.int64))
    assert codes.tolist() == [compressed_morton_reference(c, bits) for c in coords.tolist()]
    shard, minishard = shard_and_minishard(codes, pre, mini, sh)
    expected = [shard_and_minishard_reference(int(c), pre, mini, sh) for c in codes.tolist()]
    assert list(zip(shard.tolist(), minishard.tolist(), strict=True)) == expected

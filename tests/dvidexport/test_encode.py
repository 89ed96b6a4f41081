"""kernels/dvid_encode.py: byte-exact against blocks DVID's Go MakeBlock wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.kernels.dvid_encode import encode_dvid_block
from tests.conftest import read_gz, read_raw_volume
from tests.dvidexport.dvid_ref import block_table, decode_dvid_block

GO_BLOCKS = [
    "solid-large-id",
    "two-labels-x37",
    "five-labels-3bit",
    "dense-600-labels-9bit",
    "mixed-background",
    "checker-1bit",
]


def _fixture_pairs(shared_fixtures):
    pairs = {
        "fib19-sample1": (
            shared_fixtures / "dvid-blocks/fib19-64x64x64-sample1-block.dat.gz",
            shared_fixtures / "dvid-blocks/fib19-64x64x64-sample1.dat.gz",
        )
    }
    for name in GO_BLOCKS:
        d = shared_fixtures / "dvid-go-blocks"
        pairs[name] = (d / f"{name}.dvidblock.gz", d / f"{name}.raw-zyx-uint64le.gz")
    return pairs


@pytest.mark.parametrize("name", ["fib19-sample1", *GO_BLOCKS])
def test_reencode_matches_dvid_bytes(shared_fixtures, name):
    block_path, volume_path = _fixture_pairs(shared_fixtures)[name]
    block = read_gz(block_path)
    volume = read_raw_volume(volume_path)
    assert np.array_equal(decode_dvid_block(block), volume)  # the reference decoder agrees
    ours = encode_dvid_block(volume, table_order=block_table(block))
    assert ours == block
    if name in GO_BLOCKS:
        meta = json.loads((shared_fixtures / "dvid-go-blocks/index.json").read_text())[name]
        assert len(ours) == meta["encoded_bytes"]


def test_other_fixture_volumes_round_trip(shared_fixtures):
    d = shared_fixtures / "dvid-blocks"
    for name in ("fib19-64x64x64-sample2", "cx-64x64x64-sample1", "cx-64x64x64-sample2"):
        vol = read_raw_volume(d / f"{name}.dat.gz")
        for kw in ({}, {"rng": np.random.default_rng(3)}):
            block = encode_dvid_block(vol, **kw)
            assert np.array_equal(decode_dvid_block(block), vol)


def test_worked_example_3172_bytes():
    """formats ref. 5.4: label 100 everywhere, 200 at x >= 4 in sub-block 0."""
    vol = np.full((64, 64, 64), 100, dtype=np.uint64)
    vol[:8, :8, 4:8] = 200
    block = encode_dvid_block(vol)
    assert len(block) == 3172
    assert block_table(block).tolist() == [100, 200]
    assert block[0x0C24 : 0x0C24 + 64] == b"\x0f" * 64
    swapped = encode_dvid_block(vol, table_order=np.array([200, 100], dtype=np.uint64))
    assert len(swapped) == 3172
    assert np.frombuffer(swapped, "<u4", 2, 0x0420).tolist() == [1, 0]
    assert swapped[0x0C24:] == block[0x0C24:]  # values are palette-local


def test_solid_and_shapes():
    big = np.uint64(2**64 - 5)
    solid = encode_dvid_block(np.full((64, 64, 64), big, dtype=np.uint64))
    assert len(solid) == 24
    assert np.frombuffer(solid, "<u4", 4).tolist() == [8, 8, 8, 1]
    assert np.frombuffer(solid, "<u8", 1, 16)[0] == big
    # non-cubic, 8-multiple volumes give gx, gy, gz from x, y, z
    vol = np.zeros((16, 24, 32), dtype=np.uint64)
    vol[3, 5, 7] = 9
    b = encode_dvid_block(vol)
    assert np.frombuffer(b, "<u4", 3).tolist() == [4, 3, 2]
    assert np.array_equal(decode_dvid_block(b), vol)
    # signed input is accepted when it fits
    assert encode_dvid_block(vol.astype(np.int64)) == b


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        encode_dvid_block(np.zeros((64, 64, 60), np.uint64))
    with pytest.raises(ValueError):
        encode_dvid_block(np.zeros((64, 64), np.uint64))
    vol = np.zeros((8, 8, 8), np.uint64)
    vol[0, 0, 0] = 1
    with pytest.raises(ValueError, match="labels"):
        encode_dvid_block(vol, table_order=np.array([0, 2], np.uint64))
    with pytest.raises(ValueError):
        encode_dvid_block(vol, table_order=np.array([0], np.uint64))
    with pytest.raises(ValueError, match="twice"):
        encode_dvid_block(vol, table_order=np.array([1, 1], np.uint64))


def test_shuffled_table_is_a_permutation():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 40, size=(64, 64, 64)).astype(np.uint64)
    first = encode_dvid_block(vol)
    shuffled = encode_dvid_block(vol, rng=np.random.default_rng(7))
    assert sorted(block_table(first).tolist()) == sorted(block_table(shuffled).tolist())
    assert block_table(first).tolist() != block_table(shuffled).tolist()
    assert len(first) == len(shuffled)
    assert np.array_equal(decode_dvid_block(shuffled), vol)


def test_many_labels_grow_tables():
    """More distinct labels than the kernel's initial capacities (1024 labels, 4/sub-block)."""
    vol = np.arange(64**3, dtype=np.uint64).reshape(64, 64, 64) * np.uint64(7919)
    block = encode_dvid_block(vol)
    assert np.array_equal(decode_dvid_block(block), vol)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 600),
    st.integers(0, 2**32),
    st.sampled_from([(8, 8, 8), (16, 16, 16), (16, 8, 24), (64, 64, 64)]),
)
def test_round_trip_random(nlabels, seed, shape):
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 2**64 - 1, size=nlabels, dtype=np.uint64, endpoint=True)
    # runs of equal labels (realistic) mixed with noise
    idx = rng.integers(0, nlabels, size=shape)
    if seed % 2:
        idx = np.repeat(idx[:, :, ::4], 4, axis=2)[:, :, : shape[2]]
    vol = palette[idx]
    block = encode_dvid_block(vol, rng=rng)
    assert np.array_equal(decode_dvid_block(block), vol)
    assert len(block_table(block)) == len(np.unique(vol))

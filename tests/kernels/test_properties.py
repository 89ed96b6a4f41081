"""Property tests (hypothesis): kernels against the slow reference implementations."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.kernels import (
    decode_cseg,
    decode_dvid_block,
    dvid_block_header,
    dvid_block_table,
    dvid_block_to_cseg,
    encode_cseg,
)
from tests.kernels._strategies import assembled_blocks, dvid_volumes, label_values, label_volumes
from tests.kernels.reference import (
    decode_dvid_block_reference,
    encode_cseg_reference,
    encode_dvid_block_reference,
)

SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(vol=label_volumes())
def test_encode_decode_cseg_round_trip(vol):
    enc = encode_cseg(vol)
    assert enc.dtype == np.uint8 and enc.ndim == 1 and len(enc) % 4 == 0
    np.testing.assert_array_equal(decode_cseg(enc, vol.shape), vol)


@settings(max_examples=60, deadline=None)
@given(vol=label_volumes(max_side=17))
def test_encode_cseg_equals_reference(vol):
    assert encode_cseg(vol).tobytes() == encode_cseg_reference(vol)


@settings(max_examples=40, deadline=None)
@given(vol=label_volumes(max_side=12), bs=st.tuples(*(st.integers(1, 9),) * 3))
def test_encode_cseg_other_block_sizes(vol, bs):
    enc = encode_cseg(vol, block_size=bs)
    assert enc.tobytes() == encode_cseg_reference(vol, bs)
    np.testing.assert_array_equal(decode_cseg(enc, vol.shape, block_size=bs), vol)


@SETTINGS
@given(vol=dvid_volumes(), data=st.data())
def test_dvid_reference_encoder_round_trip(vol, data):
    distinct = list(dict.fromkeys(vol.reshape(-1).tolist()))
    order = data.draw(st.permutations(distinct))
    block = encode_dvid_block_reference(vol, order)
    gz, gy, gx = (s // 8 for s in vol.shape)
    n = 1 if len(distinct) == 1 else len(distinct)
    assert dvid_block_header(block) == (gx, gy, gz, n)
    np.testing.assert_array_equal(decode_dvid_block(block), vol)
    if len(distinct) > 1:
        assert dvid_block_table(block).tolist() == order


@settings(max_examples=30, deadline=None)
@given(vol=dvid_volumes(max_g=2))
def test_dvid_reference_decoder_agrees(vol):
    block = encode_dvid_block_reference(vol)
    np.testing.assert_array_equal(decode_dvid_block_reference(block), vol)


def _check_transcode(block, table, extent):
    vol = decode_dvid_block(block, table)
    nx, ny, nz = extent if extent is not None else vol.shape[::-1]
    crop = vol[:nz, :ny, :nx]
    cseg, nonzero = dvid_block_to_cseg(block, table, extent)
    assert cseg.tobytes() == encode_cseg(crop).tobytes()
    assert nonzero == bool(crop.any())


@st.composite
def tables_for(draw, n):
    """None (the block's own table) or a same-length mapping with duplicates and zeros."""
    kind = draw(st.sampled_from(["own", "random", "merge"]))
    if kind == "own":
        return None
    if kind == "random":
        return np.array(draw(st.lists(label_values, min_size=n, max_size=n)), dtype=np.uint64)
    bodies = draw(st.lists(label_values, min_size=1, max_size=3))
    return np.array([bodies[draw(st.integers(0, len(bodies) - 1))] for _ in range(n)], np.uint64)


@st.composite
def extents_for(draw, block):
    gx, gy, gz, _ = dvid_block_header(block)
    if draw(st.booleans()):
        return None
    return tuple(draw(st.integers(1, 8 * g)) for g in (gx, gy, gz))


@settings(max_examples=200, deadline=None)
@given(vol=dvid_volumes(max_labels=12), data=st.data())
def test_transcode_equals_encode_of_decode(vol, data):
    block = encode_dvid_block_reference(vol)
    n = dvid_block_header(block)[3]
    _check_transcode(block, data.draw(tables_for(n)), data.draw(extents_for(block)))


@settings(max_examples=200, deadline=None)
@given(blk=assembled_blocks(), data=st.data())
def test_transcode_unusual_blocks(blk, data):
    """Empty sub-blocks, unused palette entries, repeated indices, large palettes."""
    block, n = blk
    np.testing.assert_array_equal(decode_dvid_block(block), decode_dvid_block_reference(block))
    _check_transcode(block, data.draw(tables_for(n)), data.draw(extents_for(block)))

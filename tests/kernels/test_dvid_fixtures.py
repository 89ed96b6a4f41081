"""Real DVID blocks (encoded by DVID's Go MakeBlock) from ../shared/fixtures."""

from __future__ import annotations

import json

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
from tests.conftest import read_gz, read_raw_volume
from tests.kernels.reference import (
    decode_cseg_pypi,
    decode_dvid_block_reference,
    encode_dvid_block_reference,
)

GO_BLOCKS = [
    "solid-large-id",
    "two-labels-x37",
    "five-labels-3bit",
    "dense-600-labels-9bit",
    "mixed-background",
    "checker-1bit",
]


def _fib19(shared_fixtures):
    d = shared_fixtures / "dvid-blocks"
    block = read_gz(d / "fib19-64x64x64-sample1-block.dat.gz")
    truth = read_raw_volume(d / "fib19-64x64x64-sample1.dat.gz")
    return block, truth


def _go_block(shared_fixtures, name):
    d = shared_fixtures / "dvid-go-blocks"
    block = read_gz(d / f"{name}.dvidblock.gz")
    truth = read_raw_volume(d / f"{name}.raw-zyx-uint64le.gz")
    meta = json.loads((d / "index.json").read_text())[name]
    return block, truth, meta


def test_fib19_decodes_to_ground_truth(shared_fixtures):
    block, truth = _fib19(shared_fixtures)
    assert len(block) == 22512
    assert dvid_block_header(block) == (8, 8, 8, 18)
    vol = decode_dvid_block(block)
    assert vol.shape == (64, 64, 64) and vol.dtype == np.uint64
    np.testing.assert_array_equal(vol, truth)
    np.testing.assert_array_equal(decode_dvid_block_reference(block), truth)
    table = dvid_block_table(block)
    assert table.dtype == np.uint64 and len(table) == 18
    assert set(table.tolist()) == set(np.unique(truth).tolist())


def test_fib19_reference_encoder_is_byte_exact(shared_fixtures):
    block, truth = _fib19(shared_fixtures)
    assert encode_dvid_block_reference(truth, dvid_block_table(block)) == block


@pytest.mark.parametrize("name", GO_BLOCKS)
def test_go_block_decodes_to_raw_volume(shared_fixtures, name):
    block, truth, meta = _go_block(shared_fixtures, name)
    assert len(block) == meta["encoded_bytes"]
    gx, gy, gz, n = dvid_block_header(block)
    assert (gx, gy, gz) == (8, 8, 8) and n == meta["num_labels"]
    vol = decode_dvid_block(block)
    np.testing.assert_array_equal(vol, truth)
    assert len(np.unique(vol)) == meta["distinct_voxel_values"]


@pytest.mark.parametrize("name", GO_BLOCKS)
def test_go_block_reference_encoder_is_byte_exact(shared_fixtures, name):
    block, truth, _ = _go_block(shared_fixtures, name)
    assert encode_dvid_block_reference(truth, dvid_block_table(block)) == block


@pytest.mark.parametrize("name", ["checker-1bit", "five-labels-3bit", "mixed-background"])
def test_go_block_reference_decoder_agrees(shared_fixtures, name):
    block, truth, _ = _go_block(shared_fixtures, name)
    np.testing.assert_array_equal(decode_dvid_block_reference(block), truth)


@pytest.mark.parametrize("name", [*GO_BLOCKS, "fib19"])
def test_fixture_transcode_equals_encode_of_decode(shared_fixtures, name):
    if name == "fib19":
        block, truth = _fib19(shared_fixtures)
    else:
        block, truth, _ = _go_block(shared_fixtures, name)
    table = dvid_block_table(block)
    rng = np.random.default_rng(len(block))
    merged = table.copy()
    merged[rng.random(len(table)) < 0.4] = table[0]  # merge some supervoxels into one body
    merged[rng.random(len(table)) < 0.2] = 0  # and map some to background
    for tbl in (None, merged):
        vol = decode_dvid_block(block, tbl)
        for extent in (None, (64, 64, 64), (64, 64, 13), (10, 12, 14), (1, 1, 1), (63, 8, 57)):
            nx, ny, nz = extent or (64, 64, 64)
            cseg, nonzero = dvid_block_to_cseg(block, tbl, extent)
            crop = vol[:nz, :ny, :nx]
            expected = encode_cseg(crop)
            assert cseg.dtype == np.uint8 and cseg.ndim == 1
            assert cseg.tobytes() == expected.tobytes(), (name, extent)
            assert nonzero == bool(crop.any())
            np.testing.assert_array_equal(decode_cseg(cseg, crop.shape), crop)
    np.testing.assert_array_equal(decode_dvid_block(block), truth)


def test_fixture_cseg_decodes_with_pypi_compressed_segmentation(shared_fixtures):
    pytest.importorskip("compressed_segmentation")
    block, truth = _fib19(shared_fixtures)
    cseg, _ = dvid_block_to_cseg(block)
    np.testing.assert_array_equal(decode_cseg_pypi(cseg, truth.shape), truth)
    cseg, _ = dvid_block_to_cseg(block, extent=(40, 64, 9))
    np.testing.assert_array_equal(decode_cseg_pypi(cseg, (9, 64, 40)), truth[:9, :, :40])

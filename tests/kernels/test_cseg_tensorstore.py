"""encode_cseg must be byte-identical to TensorStore's compressed_segmentation encoder.

Each case writes the volume as the single chunk of a local, unsharded neuroglancer_precomputed
volume with TensorStore and compares the raw chunk file (unsharded chunk files hold the
encoded chunk as is) with encode_cseg. TensorStore arrays are indexed [x, y, z, channel].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from dvid2ng.kernels import decode_cseg, dvid_block_to_cseg, encode_cseg
from tests.kernels._strategies import label_volumes
from tests.kernels.reference import decode_cseg_pypi, encode_cseg_reference

ts = pytest.importorskip("tensorstore")


def tensorstore_chunk(vol_zyx: np.ndarray, root: Path) -> bytes | None:
    """The chunk file TensorStore writes for `vol_zyx` (None if it wrote none: all zero)."""
    nz, ny, nx = vol_zyx.shape
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(root)},
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        "scale_metadata": {
            "key": "s0",
            "size": [nx, ny, nz],
            "voxel_offset": [0, 0, 0],
            "resolution": [8, 8, 8],
            "chunk_size": [nx, ny, nz],
            "encoding": "compressed_segmentation",
            "compressed_segmentation_block_size": [8, 8, 8],
        },
        "create": True,
        "delete_existing": True,
    }
    store = ts.open(spec).result()
    store[...] = vol_zyx.transpose(2, 1, 0)[..., np.newaxis]
    path = root / "s0" / f"0-{nx}_0-{ny}_0-{nz}"
    files = [p for p in (root / "s0").iterdir()] if (root / "s0").is_dir() else []
    assert files in ([], [path]), files
    return path.read_bytes() if path.exists() else None


def _volume(shape, labels, kind, seed):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.uint64)
    if kind == "noise":
        return labels[rng.integers(0, len(labels), size=shape)]
    if kind == "blobs":
        coarse = rng.integers(0, len(labels), size=tuple(-(-s // 5) for s in shape))
        return np.ascontiguousarray(
            labels[
                coarse.repeat(5, 0).repeat(5, 1).repeat(5, 2)[: shape[0], : shape[1], : shape[2]]
            ]
        )
    if kind == "stripes":  # the same few tables recur in many blocks: exercises table sharing
        z, y, x = np.indices(shape)
        return labels[(x // 3 + y // 7 + z // 11) % len(labels)]
    raise ValueError(kind)


BIG = [0, 1, 2**63, 2**63 + 1, 2**64 - 1, 2**64 - 2, 12345678901234567, 42]
MANY = list(range(1, 600)) + [2**63 + i for i in range(300)] + [0]

CASES = [
    ((64, 64, 64), BIG, "blobs"),
    ((64, 64, 64), BIG[:3], "noise"),
    ((64, 64, 64), MANY, "noise"),  # up to 512 distinct per block: 16-bit indices
    ((13, 64, 64), BIG, "blobs"),  # a 64x64x13 edge chunk (x, y, z)
    ((14, 12, 10), BIG, "noise"),  # 10x12x14
    ((14, 12, 10), BIG[:2], "stripes"),
    ((64, 64, 64), BIG, "stripes"),
    ((1, 1, 1), [2**64 - 1], "noise"),
    ((1, 1, 1), [0, 5], "noise"),
    ((9, 17, 33), MANY[:5], "noise"),
    ((8, 8, 8), MANY[:17], "noise"),  # 17 distinct values: 8 bits
    ((5, 64, 3), BIG, "blobs"),
    ((16, 16, 16), [*MANY[:3], 0], "stripes"),
]


@pytest.mark.parametrize(("shape", "labels", "kind"), CASES)
def test_encode_cseg_matches_tensorstore(tmp_path, shape, labels, kind):
    vol = _volume(shape, labels, kind, seed=sum(shape) + len(labels))
    expected = tensorstore_chunk(vol, tmp_path)
    assert expected is not None
    ours = encode_cseg(vol)
    assert ours.tobytes() == expected
    np.testing.assert_array_equal(decode_cseg(ours, vol.shape), vol)


def test_reference_encoder_matches_tensorstore(tmp_path):
    vol = _volume((9, 17, 33), BIG, "blobs", seed=3)
    assert encode_cseg_reference(vol) == tensorstore_chunk(vol, tmp_path)


def test_all_zero_chunk_is_not_written_by_tensorstore(tmp_path):
    vol = np.zeros((8, 8, 8), np.uint64)
    assert tensorstore_chunk(vol, tmp_path) is None
    assert len(encode_cseg(vol)) == 4 + 8 + 8


def test_transcoded_edge_chunk_matches_tensorstore(tmp_path):
    from tests.kernels.reference import encode_dvid_block_reference

    vol = _volume((64, 64, 64), BIG, "blobs", seed=11)
    block = encode_dvid_block_reference(vol)
    for nx, ny, nz in ((64, 64, 13), (10, 12, 14), (64, 64, 64)):
        cseg, _ = dvid_block_to_cseg(block, extent=(nx, ny, nz))
        assert cseg.tobytes() == tensorstore_chunk(
            np.ascontiguousarray(vol[:nz, :ny, :nx]), tmp_path
        )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(vol=label_volumes(max_side=24))
def test_encode_cseg_matches_tensorstore_random(tmp_path, vol):
    expected = tensorstore_chunk(vol, tmp_path)
    if expected is None:  # all zero: TensorStore writes nothing
        assert not vol.any()
        return
    assert encode_cseg(vol).tobytes() == expected


@pytest.mark.parametrize(("shape", "labels", "kind"), CASES[:6])
def test_pypi_compressed_segmentation_decodes_our_output(shape, labels, kind):
    pytest.importorskip("compressed_segmentation")
    vol = _volume(shape, labels, kind, seed=7)
    np.testing.assert_array_equal(decode_cseg_pypi(encode_cseg(vol).tobytes(), vol.shape), vol)

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.kernels.morton import compressed_morton_codes, shard_and_minishard
from dvid2ng.schemas.sharding import (
    compressed_morton_code,
    dvid_file_stem,
    num_shards,
    shard_bounds,
    shard_chunk_count,
    shard_name,
    shard_of_chunk,
    shard_of_dvid_file,
    shard_origin,
    shard_shape,
)
from dvid2ng.schemas.spec import Scale, Sharding, VolumeSpec


def _scale(grid, preshift, minishard, shard):
    size = tuple(g * 64 for g in grid)
    return Scale(
        0, "k", size, (64, 64, 64), (1.0, 1.0, 1.0), (0, 0, 0), Sharding(preshift, minishard, shard)
    )


def test_tensorstore_morton_vectors():
    bits = (4, 2, 1)
    assert compressed_morton_code((0, 0, 0), bits) == 0
    assert compressed_morton_code((1, 0, 0), bits) == 1
    assert compressed_morton_code((0, 1, 0), bits) == 2
    assert compressed_morton_code((2, 0, 1), bits) == 0b1100
    assert compressed_morton_code((2, 3, 0), bits) == 0b11010
    assert compressed_morton_code((9, 2, 1), bits) == 0b1010101
    assert compressed_morton_code((0, 0, 4), (1, 1, 3)) == 16


def test_tensorstore_hierarchy_vectors():
    s = _scale((2, 4, 8), 1, 2, 3)
    assert s.bits == (1, 2, 3)
    assert shard_shape(s) == (2, 2, 2)
    origins = [shard_origin(s, i) for i in range(8)]
    assert origins == [
        (0, 0, 0),
        (0, 2, 0),
        (0, 0, 2),
        (0, 2, 2),
        (0, 0, 4),
        (0, 2, 4),
        (0, 0, 6),
        (0, 2, 6),
    ]
    s7 = Scale(0, "k", (128, 256, 7 * 64), (64, 64, 64), (1, 1, 1), (0, 0, 0), Sharding(1, 2, 3))
    assert [shard_chunk_count(s7, i) for i in range(8)] == [8, 8, 8, 8, 8, 8, 4, 4]
    s37 = Scale(
        0, "k", (128, 3 * 64, 7 * 64), (64, 64, 64), (1, 1, 1), (0, 0, 0), Sharding(1, 2, 3)
    )
    assert [shard_chunk_count(s37, i) for i in range(8)] == [8, 4, 8, 4, 8, 4, 4, 2]


def test_mcns_names(shared_fixtures):
    spec = VolumeSpec.load(shared_fixtures / "volume-specs/mcns-export-specs.json")
    s0 = spec.scales[0]
    assert shard_of_dvid_file(s0, "10240_40960_43008") == 25029
    assert shard_name(s0, 25029) == "061c5"
    assert shard_of_dvid_file(s0, "14336_12288_45056") == 16889
    assert shard_name(s0, 16889) == "041f9"
    assert dvid_file_stem(s0, (32, 0, 0)) == "2048_0_0"
    assert dvid_file_stem(s0, (1470, 1223, 2102)) == "92160_77824_133120"
    assert [shard_origin(s0, i) for i in (1, 2, 4)] == [(32, 0, 0), (0, 32, 0), (0, 0, 32)]
    assert shard_name(spec.scales[9], 0) == "0"
    s1 = spec.scales[1]
    lo, hi = shard_bounds(s1, shard_of_dvid_file(s1, "30720_24576_28672"))
    # the fixture shard's chunks span x 499..511, y 413..415, z 469..479
    assert all(lo[d] <= v <= hi[d] - 1 for d, v in enumerate((499, 413, 469)))
    assert all(lo[d] <= v <= hi[d] - 1 for d, v in enumerate((511, 415, 479)))


@settings(max_examples=60, deadline=None)
@given(
    grid=st.tuples(*[st.integers(1, 40)] * 3),
    preshift=st.integers(0, 6),
    minishard=st.integers(0, 6),
    data=st.data(),
)
def test_every_chunk_lies_in_its_shards_bounds_and_kernels_agree(grid, preshift, minishard, data):
    probe = _scale(grid, 0, 0, 0)
    total = probe.total_bits
    preshift = min(preshift, total)
    minishard = min(minishard, total - preshift)
    s = _scale(grid, preshift, minishard, total - preshift - minishard)
    coords = np.array(
        [[data.draw(st.integers(0, g - 1)) for g in grid] for _ in range(20)], dtype=np.int64
    )
    codes = compressed_morton_codes(coords, np.array(s.bits, dtype=np.int64))
    shards, _ = shard_and_minishard(codes, preshift, minishard, s.sharding.shard_bits)
    counted = sum(shard_chunk_count(s, i) for i in range(num_shards(s)))
    assert counted == grid[0] * grid[1] * grid[2]
    for c, code, sh in zip(coords, codes, shards, strict=True):
        c = tuple(int(v) for v in c)
        assert compressed_morton_code(c, s.bits) == int(code)
        assert shard_of_chunk(s, c) == int(sh)
        lo, hi = shard_bounds(s, int(sh))
        assert all(lo[d] <= c[d] < hi[d] for d in range(3))

"""dvid2ng's sharding decisions and geometry, checked against TensorStore itself.

Hypothesis draws scales (sizes, non-cubic chunk sizes, voxel offsets, sharding bits from too
few to surplus). TensorStore writes every chunk of the scale (each chunk a different label) into
an in-memory sharded volume; which chunk ids land in which `.shard` file is then read back
through TensorStore's sharded kvstore, one file at a time, by reading every possible id.
Against that ground truth: the spec decision (too few bits refused, surplus accepted), the shard
of each chunk, shard origins and shapes, file names with their padding, and which DVID export
file feeds which shard (or, where DVID's cubic names collide, that they really would).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tensorstore as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvid2ng.schemas.sharding import (
    compressed_morton_code,
    dvid_file_stem,
    dvid_name_collision,
    shard_bounds,
    shard_name,
    shard_of_chunk,
    shard_of_dvid_file,
)
from dvid2ng.schemas.spec import SpecError, VolumeSpec
from tests.sharded import chunk_ids_in, grid_bits


@st.composite
def scales(draw):
    chunk = tuple(draw(st.sampled_from([8, 16])) for _ in range(3))
    grid = tuple(draw(st.integers(1, 5)) for _ in range(3))
    size = tuple((g - 1) * c + draw(st.integers(1, c)) for g, c in zip(grid, chunk, strict=True))
    offset = tuple(draw(st.integers(-40, 40)) for _ in range(3))
    bits = [draw(st.integers(0, 4)), draw(st.integers(0, 4)), draw(st.integers(0, 6))]
    return {
        "key": "s",
        "size": list(size),
        "chunk_sizes": [list(chunk)],
        "resolution": [4, 4, 40],
        "voxel_offset": list(offset),
        "encoding": "compressed_segmentation",
        "compressed_segmentation_block_size": [8, 8, 8],
        "sharding": {
            "@type": "neuroglancer_uint64_sharded_v1",
            "hash": "identity",
            "preshift_bits": bits[0],
            "minishard_bits": bits[1],
            "shard_bits": bits[2],
            "minishard_index_encoding": "gzip",
            "data_encoding": "gzip",
        },
    }


def _info(scale_json: dict) -> dict:
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": "segmentation",
        "data_type": "uint64",
        "num_channels": 1,
        "scales": [scale_json],
    }


def tensorstore_placement(info: dict) -> dict[str, set[int]]:
    """Shard file name -> chunk ids in it, as TensorStore writes them."""
    ctx = ts.Context()
    kv = ts.KvStore.open({"driver": "memory"}, context=ctx).result()
    kv.write(b"info", json.dumps(info).encode()).result()
    vol = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"}, "scale_index": 0},
        context=ctx,
    ).result()
    s = info["scales"][0]
    chunk, size = s["chunk_sizes"][0], s["size"]
    grid = [-(-n // c) for n, c in zip(size, chunk, strict=True)]
    # every chunk gets its own label: 1 + its linear index
    labels = np.arange(1, np.prod(grid) + 1, dtype=np.uint64).reshape(grid[::-1])  # z y x
    full = labels.repeat(chunk[2], 0).repeat(chunk[1], 1).repeat(chunk[0], 2)
    data = full[: size[2], : size[1], : size[0]].transpose(2, 1, 0)[..., None]
    vol.translate_to[0, 0, 0, 0].write(data).result()  # the array starts at voxel_offset
    meta = dict(s["sharding"], data_encoding="gzip")
    out: dict[str, set[int]] = {}
    for key in kv.list().result():
        name = key.decode().split("/")[-1]
        if not name.endswith(".shard"):
            continue
        alone = ts.Context()  # a store holding only this one shard file
        one = ts.KvStore.open({"driver": "memory"}, context=alone).result()
        one.write(b"x/" + name.encode(), kv.read(key).result().value).result()
        sharded = ts.KvStore.open(
            {
                "driver": "neuroglancer_uint64_sharded",
                "base": {"driver": "memory", "path": "x/"},
                "metadata": meta,
            },
            context=alone,
        ).result()
        out[name] = chunk_ids_in(sharded, grid_bits(grid))  # not list(): see tests/sharded.py
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scales())
def test_sharding_decisions_and_geometry_match_tensorstore(scale_json):
    info = _info(scale_json)
    sh = scale_json["sharding"]
    have = sh["preshift_bits"] + sh["minishard_bits"] + sh["shard_bits"]
    grid = [
        -(-n // c) for n, c in zip(scale_json["size"], scale_json["chunk_sizes"][0], strict=True)
    ]
    bits = grid_bits(grid)
    placement = tensorstore_placement(info)
    file_of = {cid: name for name, ids in placement.items() for cid in ids}
    chunks = [(x, y, z) for z in range(grid[2]) for y in range(grid[1]) for x in range(grid[0])]
    assert len(file_of) == len(chunks), "TensorStore stored every chunk once"

    if have < sum(bits):
        with pytest.raises(SpecError, match="Set shard_bits to"):
            VolumeSpec.from_json(info)
        # ...and the reason is real: some file holds chunks of two separate shard regions
        high = sh["preshift_bits"] + sh["minishard_bits"]
        regions = {}
        for c in chunks:
            code = compressed_morton_code(c, tuple(bits))
            regions.setdefault(file_of[code], set()).add(code >> high)
        assert any(len(r) > 1 for r in regions.values())
        return

    scale = VolumeSpec.from_json(info).scales[0]  # enough bits (maybe surplus): accepted
    for c in chunks:
        code = compressed_morton_code(c, scale.bits)
        assert code in file_of, f"chunk {c}: id {code} is not where TensorStore put it"
        assert file_of[code] == shard_name(scale, shard_of_chunk(scale, c)) + ".shard", c
    for name, ids in placement.items():
        shard = int(name.removesuffix(".shard"), 16)
        lo, hi = shard_bounds(scale, shard)
        box = {
            compressed_morton_code((x, y, z), scale.bits)
            for z in range(lo[2], hi[2])
            for y in range(lo[1], hi[1])
            for x in range(lo[0], hi[0])
        }
        assert box == ids, f"shard {name}: origin {lo} / end {hi} disagree with TensorStore"

    # DVID exports 64^3 blocks; which chunk goes to which shard depends only on the grid and
    # the sharding, so the same grid with 64^3 chunks has the same placement
    dvid = dataclasses.replace(scale, chunk_size=(64, 64, 64), size=tuple(g * 64 for g in grid))
    assert dvid.grid == scale.grid
    stems: dict[str, set[str]] = {}
    for c in chunks:
        stems.setdefault(dvid_file_stem(dvid, c), set()).add(
            file_of[compressed_morton_code(c, scale.bits)]
        )
    if dvid_name_collision(dvid) is None:
        for stem, files in stems.items():
            assert len(files) == 1, f"DVID file {stem} would feed {files}"
            (only,) = files
            assert shard_name(dvid, shard_of_dvid_file(dvid, stem)) + ".shard" == only
    else:
        assert any(len(files) > 1 for files in stems.values()), "a collision was claimed"

"""Placement of DVID export files: the cached shard bounds equal the bit-walking geometry, the
three outcomes of a record's chunk, and which specs let DVID's cubic file names collide."""

from __future__ import annotations

import random

import pytest

from dvid2ng.dispatcher.demo import DEMO_SPEC
from dvid2ng.schemas.placement import (
    INSIDE,
    MISPLACED,
    OUTSIDE_VOLUME,
    fast_shard_bounds,
    naming_collision_risk,
    place_dvid_file,
)
from dvid2ng.schemas.sharding import shard_bounds
from dvid2ng.schemas.spec import VolumeSpec
from tests.verify_helpers import VERIFY_SPEC

SPEC_FILES = [
    "mcns-export-specs.json",
    "fish2_seg_native_z_spec.json",
    "fish2_seg_zdoubled_spec.json",
]


@pytest.mark.parametrize("name", SPEC_FILES)
def test_fast_bounds_equal_the_geometry(shared_fixtures, name):
    spec = VolumeSpec.load(shared_fixtures / "volume-specs" / name)
    rng = random.Random(name)
    for scale in spec.scales:
        n = 1 << scale.sharding.shard_bits
        for shard in rng.sample(range(n), min(n, 400)):
            assert fast_shard_bounds(scale, shard) == shard_bounds(scale, shard)


def test_where_a_chunk_goes():
    scale = VolumeSpec.from_json(DEMO_SPEC).scales[0]  # 300x260x200: grid 5x5x4, 4^3 shards
    p = place_dvid_file(scale, "256_0_0")
    assert p.shard_name == "1" and (p.lo, p.hi) == ((4, 0, 0), (5, 4, 4))
    assert p.where((4, 3, 3)) == INSIDE
    assert p.where((5, 0, 0)) == OUTSIDE_VOLUME  # DVID exports it; the worker clips it
    assert p.where((0, 0, 0)) == MISPLACED
    assert p.where((4, 4, 0)) == MISPLACED  # in the grid, another shard's
    with pytest.raises(ValueError, match="outside the scale 0 grid"):
        place_dvid_file(scale, "1024_0_0")


def test_collision_risk(shared_fixtures):
    mcns = VolumeSpec.load(shared_fixtures / "volume-specs" / "mcns-export-specs.json")
    assert not any(naming_collision_risk(s) for s in mcns.scales), "mCNS scales are safe (§2.7.2)"
    assert not naming_collision_risk(VolumeSpec.from_json(VERIFY_SPEC).scales[0])
    spec = dict(VERIFY_SPEC, scales=[dict(VERIFY_SPEC["scales"][0])])
    spec["scales"][0]["size"] = [512, 512, 256]
    spec["scales"][0]["sharding"] = dict(
        spec["scales"][0]["sharding"], preshift_bits=2, minishard_bits=2, shard_bits=4
    )
    risk = naming_collision_risk(VolumeSpec.from_json(spec).scales[0])
    assert "4x2x2 chunks" in risk and "along y, z" in risk

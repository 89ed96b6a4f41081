import copy
import json

import pytest

from dvid2ng.schemas.spec import SpecError, VolumeSpec

BASE = {
    "@type": "neuroglancer_multiscale_volume",
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "s0",
            "size": [300, 260, 200],
            "resolution": [8, 8, 8],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "raw",
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 3,
                "minishard_bits": 3,
                "shard_bits": 2,
            },
        }
    ],
}


def test_mcns_spec_parses_with_expected_geometry(shared_fixtures):
    spec = VolumeSpec.load(shared_fixtures / "volume-specs/mcns-export-specs.json")
    assert len(spec.scales) == 10
    s0 = spec.scales[0]
    assert s0.grid == (1471, 1224, 2103)
    assert s0.bits == (11, 11, 12)
    for s in spec.scales:
        sh = s.sharding
        assert sh.preshift_bits + sh.minishard_bits + sh.shard_bits == s.total_bits


def test_incorrect_bits_fixture_is_rejected_with_a_clear_message(shared_fixtures):
    with pytest.raises(SpecError) as e:
        VolumeSpec.load(shared_fixtures / "volume-specs/mcns-v0.9-ng-specs-INCORRECT-bits.json")
    msg = str(e.value)
    assert "sharding bits do not add up" in msg
    assert "scale 0" in msg and "33" in msg and "34" in msg
    assert "mcns-v0.9-ng-specs-INCORRECT-bits.json" in msg


@pytest.mark.parametrize("name", ["fish2_seg_native_z_spec.json", "fish2_seg_zdoubled_spec.json"])
def test_fish2_specs_parse(shared_fixtures, name):
    spec = VolumeSpec.load(shared_fixtures / "volume-specs" / name)
    assert spec.scales[0].chunk_size[0] == 64


def test_info_forces_cseg_8cubed_and_gzip():
    info = VolumeSpec.from_json(BASE).info()
    s = info["scales"][0]
    assert s["encoding"] == "compressed_segmentation"
    assert s["compressed_segmentation_block_size"] == [8, 8, 8]
    assert s["sharding"]["data_encoding"] == "gzip"
    assert s["sharding"]["minishard_index_encoding"] == "gzip"
    # parsing the info again gives the same info (the worker reads it back from DEST)
    assert VolumeSpec.from_json(info).info() == info


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("scales", 0, "sharding", "shard_bits"), 3, "do not add up"),
        (("scales", 0, "sharding", "shard_bits"), 1, "collide"),
        (("scales", 0, "sharding", "hash"), "murmurhash3_x86_128", "only implements 'identity'"),
        (("scales", 0, "sharding", "@type"), "other", "@type"),
        (("scales", 0, "size"), [300, 260], "size must be a list of 3"),
        (("scales", 0, "chunk_sizes"), [[64, 64, 30]], "multiples of 8"),
        (("scales", 0, "compressed_segmentation_block_size"), [64, 64, 64], "[8, 8, 8]"),
        (("data_type",), "uint32", "data_type"),
        (("scales", 0, "key"), "", "'key'"),
        (("scales",), [], "non-empty"),
    ],
)
def test_bad_specs_are_rejected(path, value, fragment):
    spec = copy.deepcopy(BASE)
    target = spec
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    with pytest.raises(SpecError) as e:
        VolumeSpec.from_json(spec, source="my-spec.json")
    assert fragment in str(e.value)
    assert "my-spec.json" in str(e.value)


def test_missing_sharding_and_bad_json():
    spec = copy.deepcopy(BASE)
    del spec["scales"][0]["sharding"]
    with pytest.raises(SpecError, match="sharded volumes only"):
        VolumeSpec.from_json(spec)
    with pytest.raises(SpecError, match="not valid JSON"):
        VolumeSpec.from_json("{not json")
    with pytest.raises(SpecError, match="cannot read spec"):
        VolumeSpec.load("/nonexistent/spec.json")


def test_chunk_extent_clips_edges():
    s = VolumeSpec.from_json(json.dumps(BASE)).scales[0]
    assert s.chunk_extent((0, 0, 0)) == (64, 64, 64)
    assert s.chunk_extent((4, 4, 3)) == (300 - 256, 260 - 256, 200 - 192)
    assert s.chunk_extent((5, 0, 0)) == (0, 64, 64)

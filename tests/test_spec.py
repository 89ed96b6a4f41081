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
    assert "Set shard_bits to 22" in msg  # the fix, computed from the spec (6 + 6 + 22 = 34)


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
        (("scales", 0, "sharding", "shard_bits"), 1, "Set shard_bits to 2"),
        (("scales", 0, "sharding", "minishard_bits"), 0, "share one shard file"),
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


def _with(**scale_fields):
    spec = copy.deepcopy(BASE)
    spec["scales"][0].update(scale_fields)
    return spec


def test_surplus_sharding_bits_are_accepted():
    """Grid [2,2,1] has 2 Morton bits; preshift 1 + minishard 2 + shard 0 = 3 is valid (readers
    accept it; the extra bit is unused). Before the fix this was refused with "set shard_bits to
    0", which it already was."""
    sharding = dict(BASE["scales"][0]["sharding"], preshift_bits=1, minishard_bits=2, shard_bits=0)
    spec = VolumeSpec.from_json(_with(size=[128, 128, 64], sharding=sharding))
    assert spec.scales[0].grid == (2, 2, 1) and spec.scales[0].total_bits == 2
    # more shard bits than the grid needs is fine too
    VolumeSpec.from_json(
        _with(sharding=dict(sharding, preshift_bits=3, minishard_bits=3, shard_bits=9))
    )


def test_missing_volume_fields_are_filled_and_said():
    spec = copy.deepcopy(BASE)
    for f in ("type", "data_type", "num_channels"):
        del spec[f]
    parsed = VolumeSpec.from_json(spec, source="mine.json")
    info = parsed.info()
    assert (info["type"], info["data_type"], info["num_channels"]) == ("segmentation", "uint64", 1)
    assert len(parsed.notes) == 3 and all("mine.json" in n for n in parsed.notes)
    assert "'data_type'" in " ".join(parsed.notes)
    assert VolumeSpec.from_json(BASE).notes == ()


def test_missing_resolution_is_refused_with_a_computed_fix():
    spec = copy.deepcopy(BASE)
    s1 = copy.deepcopy(spec["scales"][0])
    s1.update(key="s1", size=[150, 130, 100])
    del s1["resolution"]
    spec["scales"].append(s1)
    with pytest.raises(SpecError) as e:
        VolumeSpec.from_json(spec)
    assert "scale 1 (s1)" in str(e.value) and '"resolution": [16, 16, 16]' in str(e.value)
    del spec["scales"][0]["resolution"]
    with pytest.raises(SpecError, match=r"scale 0 .*\[1, 1, 1\]"):
        VolumeSpec.from_json(spec)


@pytest.mark.parametrize(
    ("key", "proposal"),
    [
        (".", "s0"),
        ("..", "s0"),
        ("a/b", "a_b"),
        ("info", "s_info"),
        (".dvid2ng", "dvid2ng"),
        ("8 nm", "8_nm"),
        ("a\\b", "a_b"),
        (7, "s0"),
        ("%2e%2e", "_2e_2e"),
    ],
)
def test_keys_that_are_not_a_path_segment_are_refused(key, proposal):
    with pytest.raises(SpecError) as e:
        VolumeSpec.from_json(_with(key=key))
    assert "one path segment" in str(e.value)
    assert repr(proposal) in str(e.value)


@pytest.mark.parametrize("key", ["8x8x8", "s0", "8.0x8.0x8.0", "mip_0", "a-b"])
def test_ordinary_keys_are_accepted(key):
    assert VolumeSpec.from_json(_with(key=key)).scales[0].key == key

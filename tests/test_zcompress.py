"""--z-compress N: a Z-doubled source converted back to native Z. The fish2 spec pair checks
the chunk-size rule and the DVID file -> output shard mapping at real scale; a generated
Z-doubled export goes through `dvid2ng run --z-compress N` and must equal the native volume
through TensorStore, and verify / validate-dvid apply the same mapping."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from dvid2ng.dispatcher.cli import main
from dvid2ng.dispatcher.demo import DEMO_SPEC
from dvid2ng.dispatcher.plan import PlanError, plan_transcode, run_id_for
from dvid2ng.dvidexport.synthetic import synthetic_agglomeration, synthetic_volume
from dvid2ng.dvidexport.writer import write_export
from dvid2ng.schemas.placement import place_dvid_file
from dvid2ng.schemas.sharding import dvid_file_stem, shard_of_chunk
from dvid2ng.schemas.spec import (
    SpecError,
    VolumeSpec,
    check_dvid_chunk_sizes,
    expected_chunk_size,
)
from dvid2ng.schemas.task import ShardTask, SourceObject
from dvid2ng.worker.errors import InputError
from dvid2ng.worker.transcode import z_stride
from tests.exports import read_scale_tensorstore


@pytest.fixture(scope="module")
def fish2(shared_fixtures):
    d = shared_fixtures / "volume-specs"
    return (
        VolumeSpec.load(d / "fish2_seg_zdoubled_spec.json"),
        VolumeSpec.load(d / "fish2_seg_native_z_spec.json"),
    )


def test_expected_chunk_sizes():
    assert expected_chunk_size(0) == (64, 64, 64)
    for n in (1, 3, 7, 15, 31, 63):
        assert expected_chunk_size(0, n) == (64, 64, 64 // (n + 1))
        assert expected_chunk_size(1, n) == (64, 64, 64), "only s0 is Z-compressed"
    with pytest.raises(SpecError, match="N must be one of 0, 1, 3, 7, 15, 31, 63"):
        expected_chunk_size(0, 2)


def test_fish2_chunk_size_rule(fish2):
    zdoubled, native = fish2
    check_dvid_chunk_sizes(zdoubled, range(len(zdoubled.scales)), 0)
    check_dvid_chunk_sizes(native, range(9), 1)  # s0 64x64x32, s1.. 64^3
    with pytest.raises(
        SpecError, match=r"chunk_sizes \[64, 64, 32\], but a DVID export.*pass --z-compress 1"
    ):
        check_dvid_chunk_sizes(native, [0], 0)
    with pytest.raises(SpecError, match="native-Z"):
        check_dvid_chunk_sizes(zdoubled, [0], 1)
    with pytest.raises(SpecError, match=r"--z-compress 3 makes scale 0 chunks of \[64, 64, 16\]"):
        check_dvid_chunk_sizes(native, [0], 3)


def test_fish2_every_dvid_file_is_exactly_one_output_shard(fish2):
    """The predecessor lost data when two DVID shards shared one output shard; with the native
    s0 chunk 64x64x32 the DVID grid and the output grid are the same, so each DVID file maps
    to one output shard holding exactly its chunks."""
    zdoubled, native = fish2
    src, dst = zdoubled.scales[0], native.scales[0]
    assert src.grid == dst.grid and src.bits == dst.bits
    rng = np.random.default_rng(0)
    chunks = rng.integers(0, src.grid, size=(3000, 3))
    seen: dict[str, int] = {}
    for c in map(tuple, chunks.tolist()):
        stem = dvid_file_stem(src, c)  # the name DVID gives the file holding c
        placed = place_dvid_file(dst, stem, 1)
        assert placed.where(c) == "inside", (stem, c)
        assert placed.shard == shard_of_chunk(dst, c) == shard_of_chunk(src, c)
        assert seen.setdefault(stem, placed.shard) == placed.shard
    assert len(set(seen.values())) == len(seen), "no two DVID files share an output shard"
    # and the names of real fish2 files (Z in the doubled voxel space) land in the grid
    last = dvid_file_stem(src, tuple(g - 1 for g in src.grid))
    assert place_dvid_file(dst, last, 1).shard == shard_of_chunk(
        dst, tuple(g - 1 for g in dst.grid)
    )


def _specs(stride: int, zn: int):
    native = copy.deepcopy(DEMO_SPEC)
    zd_size = (zn - 1) * stride + 1  # the shortest doubled volume whose every stride-th slice is zn
    s0n = native["scales"][0]
    s0n.update(
        size=[200, 130, zn], resolution=[8, 8, 8 * stride], chunk_sizes=[[64, 64, 64 // stride]]
    )
    s1 = native["scales"][1]
    s1.update(size=[100, 65, -(-zd_size // 2)])
    zdoubled = copy.deepcopy(native)
    zdoubled["scales"][0].update(
        size=[200, 130, zd_size], resolution=[8, 8, 8], chunk_sizes=[[64, 64, 64]]
    )
    return native, zdoubled, zd_size


def _fit_bits(spec_json: dict) -> dict:
    """shard_bits = total bits - preshift - minishard, per scale (the sizes above vary)."""
    import math

    for sc in spec_json["scales"]:
        grid = [math.ceil(s / c) for s, c in zip(sc["size"], sc["chunk_sizes"][0], strict=True)]
        total = sum(max(0, (g - 1).bit_length()) for g in grid)
        sh = sc["sharding"]
        sh["preshift_bits"], sh["minishard_bits"] = min(2, total), min(1, max(0, total - 2))
        sh["shard_bits"] = total - sh["preshift_bits"] - sh["minishard_bits"]
    return spec_json


@pytest.fixture(scope="module", params=[1, 3])
def zdoubled_export(request, tmp_path_factory):
    n = request.param
    stride = n + 1
    root = tmp_path_factory.mktemp(f"z{n}")
    native, zdoubled, zd_size = _specs(stride, 40)
    native, zdoubled = _fit_bits(native), _fit_bits(zdoubled)
    V = synthetic_volume((40, 130, 200), n_labels=30, seed=n)
    D = np.repeat(V, stride, axis=0)[:zd_size]  # every slice repeated stride times
    s1 = np.ascontiguousarray(D[::2, ::2, ::2])
    to_body = synthetic_agglomeration(np.unique(V), seed=n)
    write_export(
        root / "export", VolumeSpec.from_json(zdoubled), {0: D, 1: s1}, labels_of=to_body, seed=n
    )
    (root / "native.json").write_text(json.dumps(native))
    (root / "zdoubled.json").write_text(json.dumps(zdoubled))
    return n, root, {0: to_body(V), 1: to_body(s1)}


def test_zdoubled_export_converts_to_the_native_volume(zdoubled_export, capsys):
    n, root, expected = zdoubled_export
    dest = root / "volume"
    base = [
        "run",
        str(root / "export"),
        str(dest),
        "--spec",
        str(root / "native.json"),
        "--no-progress",
    ]
    assert main(base) == 2, "the native spec's s0 chunk needs --z-compress"
    assert f"pass --z-compress {n}" in capsys.readouterr().err
    assert main([*base, "--z-compress", str(n), "--workers", "2"]) == 0
    for scale, want in expected.items():
        got = read_scale_tensorstore(str(dest), scale)
        assert got.shape == want.shape
        assert np.array_equal(got, want), f"scale {scale} differs from the native-Z volume"
    capsys.readouterr()
    # resuming re-plans with the same mapping: every shard is found finished
    assert main([*base, "--z-compress", str(n)]) == 0
    err = capsys.readouterr().err
    assert "finished before this run" in err and "0 converted by this run" in err
    # verify and validate-dvid apply the same mapping
    verify = ["verify", str(root / "export"), str(dest), "--no-progress", "--values", "3"]
    assert main([*verify, "--z-compress", "0"]) == 2, "DEST's s0 chunk says Z-compressed"
    assert main(verify) == 0, "the run state says --z-compress N"
    assert f"--z-compress {n} (from" in capsys.readouterr().err
    assert main([*verify, "--z-compress", str(n)]) == 0, capsys.readouterr()
    validate = ["validate-dvid", str(root / "export"), "--no-progress", "--jobs", "1"]
    assert main([*validate, "--spec", str(root / "native.json"), "--z-compress", str(n)]) == 0
    assert main([*validate, "--spec", str(root / "zdoubled.json")]) == 0
    # a lost shard is found under the Z-compressed mapping too
    victim = sorted((dest / "8x8x8").glob("*.shard"))[0]
    data = victim.read_bytes()
    victim.unlink()
    try:
        capsys.readouterr()
        assert main([*verify, "--z-compress", str(n)]) == 1
        assert f"s0/{victim.name}" in capsys.readouterr().out
    finally:
        victim.write_bytes(data)


def test_planner_and_worker_apply_z_compress_to_s0_only(zdoubled_export, tmp_path):
    n, root, _ = zdoubled_export
    spec = VolumeSpec.load(root / "native.json")
    plan = plan_transcode(root / "export", str(tmp_path / "v"), spec, z_compress=n)
    assert {t.scale: t.z_compress for t in plan.tasks} == {0: n, 1: 0}
    zd = VolumeSpec.load(root / "zdoubled.json")
    assert {t.shard for t in plan.tasks if t.scale == 0} == {
        t.shard for t in plan_transcode(root / "export", "x", zd).tasks if t.scale == 0
    }, "the same shards as the DVID spec names them"
    with pytest.raises(PlanError, match="--z-compress"):
        plan_transcode(root / "export", str(tmp_path / "v"), spec)
    assert plan.run_id == run_id_for(root / "export", str(tmp_path / "v"), spec, "labels", n)
    assert plan.run_id != run_id_for(root / "export", str(tmp_path / "v"), spec, "labels", 0)
    task = plan.tasks[0]
    bad = ShardTask(**{**task.__dict__, "scale": 1, "sources": (SourceObject("a", "", 1),)})
    with pytest.raises(InputError, match="only scale 0 is Z-compressed"):
        z_stride(bad, spec.scales[1])
    with pytest.raises(InputError, match=r"needs destination scale 0 chunks of"):
        z_stride(task, zd.scales[0])
    assert z_stride(task, spec.scales[0]) == n + 1


def test_publish_takes_z_compress_too(zdoubled_export, tmp_path, capsys):
    n, root, _ = zdoubled_export
    pub = [
        "publish",
        str(root / "export"),
        str(tmp_path / "v"),
        "--spec",
        str(root / "native.json"),
    ]
    assert main([*pub, "--dry-run"]) == 2
    assert f"pass --z-compress {n}" in capsys.readouterr().err
    assert main([*pub, "--dry-run", "--z-compress", str(n)]) == 0

"""The downsample worker and the pyramid planner, in process: every shard of every scale built
from the scale above (written by TensorStore itself), read back and compared with an
independent numpy reference; odd sizes, clipped edge chunks and differing chunk sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.dispatcher.plan import Plan, PlanError
from dvid2ng.dispatcher.pyramid import (
    check_downres_scales,
    child_shards_of,
    estimate_downsample_bytes,
    list_shard_files,
    parse_downres,
    plan_downsample_scale,
)
from dvid2ng.dvidexport.synthetic import synthetic_volume
from dvid2ng.schemas.sharding import num_shards, shard_bounds, shard_chunk_count, shard_of_chunk
from dvid2ng.schemas.spec import VolumeSpec
from dvid2ng.schemas.task import ShardTask
from dvid2ng.worker.downsample import ParentReader, downsample_shard, parent_shards_of
from dvid2ng.worker.errors import InputError, Interrupted
from dvid2ng.worker.output import ScaleStore, io_context
from tests.exports import read_scale_tensorstore
from tests.pyramid_helpers import pyramid_spec, reference_pyramid, write_scale


def make_volume(shape_zyx, seed=0, n_labels=60):
    """Voronoi labels shifted off the 2-voxel granules so that windows straddle boundaries."""
    big = synthetic_volume(tuple(s + 1 for s in shape_zyx), n_labels=n_labels, seed=seed)
    return np.ascontiguousarray(big[1:, 1:, 1:])


def task_for(spec: VolumeSpec, scale: int, shard: int, dest: str, method="mode") -> ShardTask:
    sc = spec.scales[scale]
    from dvid2ng.schemas.sharding import shard_name

    return ShardTask(
        run_id="test",
        scale=scale,
        shard=shard,
        shard_name=shard_name(sc, shard),
        kind="downsample",
        sources=(),
        dest=dest,
        chunks_expected=shard_chunk_count(sc, shard),
        downsample_method=method,
    )


def build_scale(
    dest: str, spec: VolumeSpec, scale: int, method="mode", shards=None, decoder="dvid2ng"
):
    parent = ParentReader(dest, spec.scales[scale - 1], decoder=decoder)
    store = ScaleStore(dest, spec.scales[scale], io_context())
    outcomes = {}
    for sh in range(num_shards(spec.scales[scale])) if shards is None else shards:
        outcomes[sh] = downsample_shard(task_for(spec, scale, sh, dest, method), parent, store)
    return outcomes


@pytest.mark.parametrize(
    ("size", "chunks", "method", "decoder"),
    [
        ((201, 150, 99), [32, 16, 16, 8], "mode", "dvid2ng"),  # chunks shrink: many shards
        ((130, 97, 71), [64, 64, 64], "mode", "dvid2ng"),  # equal chunks: 8 parents per chunk
        ((77, 120, 45), [16, 32, 64], "dvid", "dvid2ng"),  # chunks grow: many parents per chunk
        ((150, 100, 90), [64, 16, 8], "mode", "dvid2ng"),  # a parent chunk spans 8 bricks
        ((201, 150, 99), [32, 16, 16, 8], "mode", "tensorstore"),  # TensorStore decodes
        ((77, 120, 45), [16, 32, 64], "dvid", "tensorstore"),
    ],
)
def test_every_scale_equals_numpy_reference(tmp_path, size, chunks, method, decoder):
    dest = str(tmp_path / "vol")
    spec = VolumeSpec.from_json(pyramid_spec(size, chunks))
    s0 = make_volume((size[2], size[1], size[0]), seed=sum(size))
    write_scale(dest, spec, 0, s0)
    want = reference_pyramid(s0, len(chunks), method)
    for s in range(1, len(chunks)):
        assert any(n % chunks[s] for n in spec.scales[s].size), "clipped edge chunks at every scale"
        outcomes = build_scale(dest, spec, s, method, decoder=decoder)
        files = list_shard_files(dest, spec.scales[s])
        assert sorted(files) == sorted(k for k, o in outcomes.items() if o.status == "done")
        assert len(files) > 1 or num_shards(spec.scales[s]) == 1
        got = read_scale_tensorstore(dest, s)
        assert got.shape == want[s].shape
        np.testing.assert_array_equal(got, want[s], err_msg=f"scale {s}")


def test_sparse_parent_skips_absent_regions_and_zero_chunks(tmp_path):
    """Background regions: no parent chunk there, no output chunk; a shard with nothing
    non-zero is recorded empty and writes no file."""
    dest = str(tmp_path / "vol")
    spec = VolumeSpec.from_json(pyramid_spec((256, 256, 128), [32, 32]))
    s0 = make_volume((128, 256, 256), seed=1)
    s0[:, :, 128:] = 0  # right half background
    s0[:64, :64, :64] = 0
    write_scale(dest, spec, 0, s0)
    child = spec.scales[1]
    outcomes = build_scale(dest, spec, 1)
    files = list_shard_files(dest, child)
    for sh, o in outcomes.items():
        lo, _ = shard_bounds(child, sh)
        if lo[0] * 32 >= 64:  # output x >= 64 <=> parent x >= 128: background
            assert o.status == "empty" and o.chunks_written == 0 and sh not in files
        else:
            assert o.status == "done" and sh in files
        assert o.chunks_read == shard_chunk_count(child, sh)
        assert o.chunks_written + o.chunks_zero == o.chunks_read
    np.testing.assert_array_equal(read_scale_tensorstore(dest, 1), reference_pyramid(s0, 2)[1])


def test_planner_targets_come_from_parent_files(tmp_path):
    dest = str(tmp_path / "vol")
    spec = VolumeSpec.from_json(pyramid_spec((512, 256, 128), [64, 32, 32]))
    s0 = make_volume((128, 256, 512), seed=2)
    s0[:, :, 256:] = 0  # no s0 shard files on the right half
    write_scale(dest, spec, 0, s0)
    plan = Plan("run", tmp_path, dest, spec, "labels", [])
    sp = plan_downsample_scale(plan, 1)
    parents = list_shard_files(dest, spec.scales[0])
    assert sp.parent_shards == len(parents) < num_shards(spec.scales[0])
    want = sorted({c for p in parents for c in child_shards_of(spec.scales[0], spec.scales[1], p)})
    assert [t.shard for t in sp.tasks] == want
    assert len(want) < num_shards(spec.scales[1]), "sparse: the empty half makes no work"
    for t in sp.tasks:
        assert t.kind == "downsample" and t.downsample_method == "mode" and t.sources == ()
        assert t.chunks_expected == shard_chunk_count(spec.scales[1], t.shard)
        assert t.tier
        t.validate()
    # only_missing drops the targets that exist
    build_scale(dest, spec, 1, shards=[want[0]])
    again = plan_downsample_scale(plan, 1, only_missing=True)
    assert again.existing_skipped == 1
    assert [t.shard for t in again.tasks] == want[1:]


@settings(max_examples=30, deadline=None)
@given(
    size=st.tuples(*(st.integers(1, 300) for _ in range(3))),
    pc=st.sampled_from([8, 16, 32, 64]),
    cc=st.sampled_from([16, 32, 64]),
    bits=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_child_shards_of_equals_brute_force(size, pc, cc, bits):
    """Halving a parent shard's bbox finds exactly the child shards its voxels land in, and
    the worker's reverse mapping (child shard -> parent shards) agrees."""
    spec = VolumeSpec.from_json(pyramid_spec(size, [pc, cc], preshift=bits[0], minishard=bits[1]))
    parent, child = spec.scales
    feeding: dict[int, set[int]] = {}
    for ps in range(num_shards(parent)):
        lo, hi = shard_bounds(parent, ps)
        vlo = [lo[d] * pc for d in range(3)]
        vhi = [min(hi[d] * pc, parent.size[d]) for d in range(3)]
        want = set()
        if all(h > low for low, h in zip(vlo, vhi, strict=True)):
            rng = [range(vlo[d] // 2 // cc, math.ceil(vhi[d] / 2 / cc)) for d in range(3)]
            want = {
                shard_of_chunk(child, (x, y, z)) for z in rng[2] for y in rng[1] for x in rng[0]
            }
        assert set(child_shards_of(parent, child, ps)) == want, ps
        for cs in want:
            feeding.setdefault(cs, set()).add(ps)
    for cs in range(num_shards(child)):
        assert set(parent_shards_of(parent, child, cs)) == feeding.get(cs, set()), cs


def test_parse_downres():
    assert parse_downres("1,2,3") == [1, 2, 3]
    assert parse_downres("1-9") == list(range(1, 10))
    assert parse_downres("3,1-2,2") == [1, 2, 3]
    for bad in ("0", "a", "3-1", "", "1-x"):
        with pytest.raises(ValueError, match="--downres"):
            parse_downres(bad)


def test_geometry_that_is_not_half_is_rejected():
    sj = pyramid_spec((100, 100, 100), [32, 32])
    sj["scales"][1]["size"] = [40, 50, 50]
    spec = VolumeSpec.from_json(sj)
    with pytest.raises(PlanError, match=r"size \[40, 50, 50\] is not half .* on x \(want 50\)"):
        check_downres_scales(spec, [1])
    with pytest.raises(PlanError, match="only 2 scales"):
        check_downres_scales(spec, [2])


def test_memory_estimate_grows_with_output():
    small = estimate_downsample_bytes(1, 8, 1e6)
    big = estimate_downsample_bytes(1, 32768, 8 * 200e6)
    assert small < big < 2**31
    assert estimate_downsample_bytes(1, 32768, None) > estimate_downsample_bytes(1, 64, None)


@pytest.mark.parametrize("where", ["chunk data", "minishard index"])
def test_corrupt_parent_fails_with_file_and_chunk_and_writes_nothing(tmp_path, where):
    dest = str(tmp_path / "vol")
    spec = VolumeSpec.from_json(pyramid_spec((128, 128, 64), [32, 32]))
    s0 = make_volume((64, 128, 128), seed=5)
    write_scale(dest, spec, 0, s0)
    for f in (tmp_path / "vol" / "s0").glob("*.shard"):
        data = bytearray(f.read_bytes())
        index_len = 16 << spec.scales[0].sharding.minishard_bits
        at = index_len + 20 if where == "chunk data" else len(data) - 30  # ms index is last
        data[at : at + 12] = b"\x01" * 12
        f.write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        build_scale(dest, spec, 1)
    assert "/s0" in e.value.file and "scale 0" in e.value.cause
    if where == "chunk data":
        assert e.value.chunk is not None, "the parent chunk is named"
    else:
        assert e.value.file.endswith(".shard") and "minishard index" in e.value.cause
    assert list_shard_files(dest, spec.scales[1]) == {}


def test_interrupt_writes_nothing(tmp_path):
    dest = str(tmp_path / "vol")
    spec = VolumeSpec.from_json(pyramid_spec((128, 128, 64), [32, 32]))
    write_scale(dest, spec, 0, make_volume((64, 128, 128), seed=6))
    parent = ParentReader(dest, spec.scales[0])
    store = ScaleStore(dest, spec.scales[1], io_context())
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Interrupted):
        downsample_shard(task_for(spec, 1, 0, dest), parent, store, should_stop=stop)
    assert list_shard_files(dest, spec.scales[1]) == {}


def test_progress_is_reported(tmp_path):
    dest = str(tmp_path / "vol")
    spec = VolumeSpec.from_json(pyramid_spec((512, 256, 128), [32, 16]))
    write_scale(dest, spec, 0, make_volume((128, 256, 512), seed=7))
    parent = ParentReader(dest, spec.scales[0])
    store = ScaleStore(dest, spec.scales[1], io_context())
    seen = []
    out = downsample_shard(task_for(spec, 1, 0, dest), parent, store, on_progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == out.chunks_read


def test_stale_output_shard_is_replaced_not_merged(tmp_path):
    dest = str(tmp_path / "vol")
    spec = VolumeSpec.from_json(pyramid_spec((128, 128, 64), [32, 32]))
    s0 = make_volume((64, 128, 128), seed=8)
    write_scale(dest, spec, 0, s0)
    build_scale(dest, spec, 1)
    write_scale(dest, spec, 0, np.where(s0 % np.uint64(3) == 0, np.uint64(0), s0))
    build_scale(dest, spec, 1)  # rebuilt from the changed parent
    np.testing.assert_array_equal(
        read_scale_tensorstore(dest, 1),
        reference_pyramid(np.where(s0 % np.uint64(3) == 0, np.uint64(0), s0), 2)[1],
    )


def test_wrong_task_kind_and_parent_scale_are_rejected(tmp_path):
    dest = str(tmp_path / "vol")
    spec = VolumeSpec.from_json(pyramid_spec((64, 64, 64), [32, 32, 32]))
    write_scale(dest, spec, 0, make_volume((64, 64, 64)))
    store = ScaleStore(dest, spec.scales[2], io_context())
    with pytest.raises(InputError, match="made from scale 1"):
        downsample_shard(task_for(spec, 2, 0, dest), ParentReader(dest, spec.scales[0]), store)

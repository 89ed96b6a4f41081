"""write_export (our DVID export-shards emulation), list_export and the synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block, list_export
from dvid2ng.dvidexport.synthetic import synthetic_agglomeration, synthetic_volume
from dvid2ng.dvidexport.writer import write_export
from dvid2ng.schemas.dvid import ExportFormatError
from dvid2ng.schemas.sharding import dvid_file_stem, num_shards, shard_of_chunk, shard_of_dvid_file
from dvid2ng.schemas.spec import VolumeSpec
from tests.dvidexport.dvid_ref import decode_dvid_block

SOLID_SV = np.uint64(4242)  # a supervoxel whose body is 0 (treated as background)


def _spec() -> VolumeSpec:
    def scale(key, size, bits):
        p, m, s = bits
        return {
            "key": key,
            "size": size,
            "resolution": [8, 8, 8],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": p,
                "minishard_bits": m,
                "shard_bits": s,
                "minishard_index_encoding": "gzip",
                "data_encoding": "gzip",
            },
        }

    return VolumeSpec.from_json(
        {
            "@type": "neuroglancer_multiscale_volume",
            "type": "segmentation",
            "data_type": "uint64",
            "num_channels": 1,
            "scales": [
                # grid 5x4x3, bits 3+2+2: shards of 2x2x2 chunks
                scale("8.0x8.0x8.0", [300, 200, 130], (1, 2, 4)),
                # grid 3x2x2, bits 2+1+1: two shards of 2x2x2 chunks
                scale("16.0x16.0x16.0", [150, 100, 65], (1, 2, 1)),
            ],
        }
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    spec = _spec()
    s0 = synthetic_volume((130, 200, 300), seed=4)
    s0[:, :, 192:256] = 0  # chunk column x=3 is background: no records
    s0[64:128, 128:192, 0:64] = SOLID_SV  # chunk (0, 2, 1): labels all 0 after mapping
    s1 = s0[::2, ::2, ::2].copy()
    agglo = synthetic_agglomeration(np.unique(s0), seed=1)

    def labels_of(sv):
        out = agglo(sv)
        return np.where(sv == SOLID_SV, np.uint64(0), out)

    dest = tmp_path_factory.mktemp("export")
    summary = write_export(dest, spec, {0: s0, 1: s1}, labels_of=labels_of, seed=3)
    return dest, spec, {0: s0, 1: s1}, labels_of, summary


def _expected_chunks(spec, vol, scale, labels_of):
    sc = spec.scales[scale]
    out = set()
    gx, gy, gz = sc.grid
    for cz in range(gz):
        for cy in range(gy):
            for cx in range(gx):
                part = vol[cz * 64 : cz * 64 + 64, cy * 64 : cy * 64 + 64, cx * 64 : cx * 64 + 64]
                if np.any(labels_of(np.unique(part))):
                    out.add((cx, cy, cz))
    return out


def test_files_named_and_grouped_like_dvid(exported):
    dest, spec, vols, labels_of, summary = exported
    listing = list_export(dest)
    assert sorted(listing) == [0, 1]
    assert (dest / "export.log").is_file()
    for s, files in listing.items():
        sc = spec.scales[s]
        assert len(files) == len(summary.files[s])
        assert len(files) > 1 or s == 1
        seen = set()
        for ef in files:
            assert ef.csv is not None and ef.size == ef.arrow.stat().st_size
            shard = shard_of_dvid_file(sc, ef.stem)
            with ExportFileReader(ef.arrow, ef.csv) as r:
                recs = list(r)
                assert r.index().schema_size == 0  # DVID quirk by default
            assert recs, "DVID writes no file for a shard without blocks"
            for rec in recs:
                assert dvid_file_stem(sc, rec.chunk) == ef.stem
                assert shard_of_chunk(sc, rec.chunk) == shard
                seen.add(rec.chunk)
            # DVID order: z never decreases, then y; x is not sorted
            zy = [(rec.z, rec.y) for rec in recs]
            assert zy == sorted(zy)
        assert seen == _expected_chunks(spec, vols[s], s, labels_of)
        assert summary.expected_shards(s) == {shard_of_dvid_file(sc, f.stem) for f in files}
        assert len(summary.expected_shards(s)) <= num_shards(sc)
        assert sum(summary.chunks_per_file(s).values()) == len(seen)


def test_all_zero_blocks_skipped(exported):
    dest, _sp, _vols, _labels_of, summary = exported
    files = list_export(dest)[0]
    chunks = set()
    for ef in files:
        with ExportFileReader(ef.arrow, ef.csv) as r:
            chunks |= {rec.chunk for rec in r}
    assert not any(c[0] == 3 for c in chunks)  # background column
    assert (0, 2, 1) not in chunks  # all labels map to body 0
    total = 5 * 4 * 3
    assert summary.skipped_zero_blocks[0] == total - len(chunks) >= 13


def test_blocks_decode_to_volume(exported):
    dest, _sp, vols, labels_of, _summary = exported
    unsorted_rows = 0
    for s, files in list_export(dest).items():
        vol = vols[s]
        for ef in files:
            with ExportFileReader(ef.arrow, ef.csv) as r:
                recs = list(r)
                for rec in recs:
                    block = decode_dvid_block(bytes(decompress_block(rec, r.name)))
                    want = np.zeros((64, 64, 64), np.uint64)
                    part = vol[rec.z * 64 :, rec.y * 64 :, rec.x * 64 :][:64, :64, :64]
                    want[: part.shape[0], : part.shape[1], : part.shape[2]] = part
                    assert np.array_equal(block, want)
                    table = np.frombuffer(
                        bytes(decompress_block(rec, r.name)), "<u8", len(rec.supervoxels), 16
                    )
                    assert np.array_equal(table, rec.supervoxels)
                    assert np.array_equal(rec.labels, labels_of(rec.supervoxels))
                    assert len(rec.labels) == len(set(rec.supervoxels.tolist()))
            rows = {}
            for rec in recs:
                rows.setdefault((rec.z, rec.y), []).append(rec.x)
            unsorted_rows += sum(xs != sorted(xs) for xs in rows.values())
    assert unsorted_rows > 0  # x shuffled within rows, like DVID's racing handlers


def test_write_export_options(tmp_path):
    spec = _spec()
    s0 = synthetic_volume((130, 200, 300), seed=9, big_ids=False)
    a = write_export(tmp_path / "a", spec, {0: s0}, batch_size=4, csv_layout="legacy", seed=1)
    b = write_export(tmp_path / "b", spec, {0: s0}, batch_size=4, csv_layout="legacy", seed=1)
    for fa, fb in zip(a.files[0], b.files[0], strict=True):  # deterministic for a seed
        assert fa.arrow.read_bytes() == fb.arrow.read_bytes()
        assert fa.csv.read_text() == fb.csv.read_text()
    c = write_export(tmp_path / "c", spec, {0: s0}, csv_layout=None, dvid_schema_size_quirk=False)
    assert all(f.csv is None for f in c.files[0])
    assert all(f.csv is None for f in list_export(tmp_path / "c")[0])
    with ExportFileReader(a.files[0][0].arrow, a.files[0][0].csv) as r:
        assert r.index().layout == "legacy"
        assert len(list(r)) == a.files[0][0].records
    with pytest.raises(ValueError, match="shape"):
        write_export(tmp_path / "d", spec, {0: s0[:, :, :10]})
    with pytest.raises(ValueError, match="no volume"):
        write_export(tmp_path / "d", spec, {0: s0}, scales=[1])


def test_list_export_names(tmp_path):
    (tmp_path / "s0").mkdir()
    (tmp_path / "s0" / "0_0_0.arrow").write_bytes(b"x")
    (tmp_path / "s0" / "0_0_0.csv").write_text("x,y,z,rec\n")
    (tmp_path / "s0" / "128_0_0.arrow").write_bytes(b"xy")
    (tmp_path / "s0" / "0_0_0-labels.csv").write_text("ignored")
    (tmp_path / "s0" / "notes.txt").write_text("ignored")
    (tmp_path / "export.log").write_text("done")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "s12").mkdir()
    listing = list_export(tmp_path)
    assert sorted(listing) == [0, 12] and listing[12] == []
    f0, f1 = listing[0]
    assert (f0.stem, f0.scale, f0.origin, f0.size) == ("0_0_0", 0, (0, 0, 0), 1)
    assert f0.csv == tmp_path / "s0" / "0_0_0.csv" and f1.csv is None
    assert f0.mtime_ns > 0
    (tmp_path / "s0" / "shard-7.arrow").write_bytes(b"")
    with pytest.raises(ExportFormatError, match=r"shard-7\.arrow"):
        list_export(tmp_path)
    with pytest.raises(FileNotFoundError):
        list_export(tmp_path / "nope")


def test_synthetic_volume_properties():
    v = synthetic_volume((128, 128, 128), seed=1)
    assert v.dtype == np.uint64 and v.shape == (128, 128, 128)
    assert np.array_equal(v, synthetic_volume((128, 128, 128), seed=1))
    assert not np.array_equal(v, synthetic_volume((128, 128, 128), seed=2))
    assert np.any(v >= np.uint64(2**63))
    assert 0.05 < np.mean(v == 0) < 0.4
    per_block = [
        len(np.unique(v[z : z + 64, y : y + 64, x : x + 64]))
        for z in (0, 64)
        for y in (0, 64)
        for x in (0, 64)
    ]
    assert 10 <= np.mean(per_block) <= 50, per_block
    sub = [
        len(np.unique(v[z : z + 8, y : y + 8, x : x + 8]))
        for z in range(0, 64, 8)
        for y in range(0, 64, 8)
        for x in range(0, 64, 8)
    ]
    assert np.mean(np.array(sub) <= 4) > 0.9 and max(sub) > 1
    small = synthetic_volume((10, 20, 30), big_ids=False, background_fraction=0.0)
    assert small.shape == (10, 20, 30) and small.max() < 2**32 and np.all(small > 0)


def test_synthetic_agglomeration():
    ids = np.arange(1, 501, dtype=np.uint64) * np.uint64(1000)
    f = synthetic_agglomeration(np.concatenate([ids, [0]]), seed=2)
    bodies = f(ids)
    assert len(np.unique(bodies)) < len(ids)  # many-to-one
    assert set(bodies.tolist()) <= set(ids.tolist())  # bodies named after a member
    assert f(np.array([0, 7], np.uint64)).tolist() == [0, 7]  # 0 and unknown ids: identity
    assert np.array_equal(f(ids), synthetic_agglomeration(ids, seed=2)(ids))


@pytest.mark.parametrize("fault", ["csv without arrow", "arrow is a directory", "dangling link"])
def test_list_export_refuses_inputs_that_would_vanish(tmp_path, fault):
    (tmp_path / "s0").mkdir()
    (tmp_path / "s0" / "0_0_0.arrow").write_bytes(b"x")
    bad = tmp_path / "s0" / "2048_0_0"
    if fault == "csv without arrow":
        bad.with_suffix(".csv").write_text("x,y,z,rec\n")
    elif fault == "arrow is a directory":
        bad.with_suffix(".arrow").mkdir()
    else:
        bad.with_suffix(".arrow").symlink_to(tmp_path / "gone.arrow")
    with pytest.raises(ExportFormatError) as e:
        list_export(tmp_path)
    assert str(bad.parent.absolute()) in str(e.value) and "2048_0_0" in str(e.value)

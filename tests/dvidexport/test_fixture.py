"""The reader and writer against the real mCNS s1 shard written by DVID (Go Arrow)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
from dvid2ng.dvidexport.writer import write_export_file
from dvid2ng.schemas.dvid import DVID_ARROW_SCHEMA, parse_chunk_index

STEM = "30720_24576_28672"
CSVS = {
    "legacy": f"{STEM}.csv",
    "offsets": f"{STEM}-offsets.csv",
    "batch": f"{STEM}-newformat.csv",
}


@pytest.fixture(scope="module")
def shard(shared_fixtures):
    return shared_fixtures / "mcns-s1-shard"


@pytest.fixture(scope="module")
def fixture_records(shard):
    with ExportFileReader(shard / f"{STEM}.arrow") as r:
        return list(r)


@pytest.mark.parametrize("layout", [None, "legacy", "offsets", "batch"])
def test_reader_on_fixture(shard, layout):
    csv = None if layout is None else shard / CSVS[layout]
    with ExportFileReader(shard / f"{STEM}.arrow", csv) as r:
        assert r.ipc_format == "stream"
        assert r.schema.equals(DVID_ARROW_SCHEMA, check_metadata=True)
        assert r.schema_message_size == 688
        assert r.chunk_count() == 258
        recs = list(r)
        assert len(recs) == 258
        assert [rec.record for rec in recs] == list(range(258))
        xyz = np.array([rec.chunk for rec in recs])
        assert xyz[:, 0].min() == 499 and xyz[:, 0].max() == 511
        assert xyz[:, 1].min() == 413 and xyz[:, 1].max() == 415
        assert xyz[:, 2].min() == 469 and xyz[:, 2].max() == 479
        assert len({rec.chunk for rec in recs}) == 258
        assert recs[0].chunk == (509, 413, 469) and recs[1].chunk == (511, 413, 469)
        assert np.array_equal(r.coordinates(), xyz)
        index = r.index()
        if layout is None:
            assert index is None
        else:
            assert index.layout == layout
            assert index.chunks() == [rec.chunk for rec in recs]  # CSV order == Arrow order
        for rec in recs:
            assert rec.labels.dtype == np.uint64 and rec.supervoxels.dtype == np.uint64
            assert len(rec.labels) == len(rec.supervoxels) >= 2


def test_fixture_blocks_decompress(shard, fixture_records):
    total = 0
    for rec in fixture_records:
        block = decompress_block(rec, "fixture")
        assert block.dtype == np.uint8 and len(block) == rec.uncompressed_size
        gx, gy, gz, n = np.frombuffer(block, "<u4", 4)
        assert (gx, gy, gz) == (8, 8, 8)
        table = np.frombuffer(block, "<u8", int(n), 16)
        assert np.array_equal(table, rec.supervoxels)  # label table == supervoxels, same order
        total += len(block)
    assert total == 6323692


@pytest.mark.parametrize("layout", ["offsets", "batch"])
def test_read_batch_at_every_row(shard, layout):
    with ExportFileReader(shard / f"{STEM}.arrow", shard / CSVS[layout]) as r:
        index = r.index()
        assert index.schema_size == 688
        for i in range(len(index)):
            batch = r.read_batch_at(index.offset[i], index.size[i])
            assert batch.num_rows == 1
            (rec,) = r.records_in_batch(batch)
            assert rec.chunk == (index.x[i], index.y[i], index.z[i])
            assert len(decompress_block(rec, r.name)) == rec.uncompressed_size


def test_read_batch_at_with_dvid_schema_size_zero(shard, tmp_path):
    """Real DVID writes `# schema_size=0` and a first row at offset 0 covering the schema."""
    index = parse_chunk_index((shard / CSVS["batch"]).read_text(), "x")
    lines = (shard / CSVS["batch"]).read_text().splitlines()
    first = lines[2].split(",")
    first[3], first[4] = "0", str(index.offset[0] + index.size[0])
    lines[0], lines[2] = "# schema_size=0", ",".join(first)
    csv = tmp_path / f"{STEM}.csv"
    csv.write_text("\n".join(lines) + "\n")
    with ExportFileReader(shard / f"{STEM}.arrow", csv) as r:
        assert r.index().schema_size == 0
        assert len(list(r)) == 258  # the consistency check accepts the quirk
        b = r.read_batch_at(0, 688 + 792)
        assert b.column("chunk_x")[0].as_py() == 509


def test_rewrite_fixture_schema_message(shard, fixture_records, tmp_path):
    """Our writer's schema message vs the one Go Arrow wrote.

    Logically identical (same fields, order, types, nullability, metadata order), but pyarrow's
    flatbuffer builder lays the tables out differently from Go's and pads one Int table more:
    696 bytes instead of 688. Passing Go's bytes as `schema_message` reproduces the fixture's
    CSV exactly (record batch messages have the same sizes in both implementations)."""
    fixture_bytes = (shard / f"{STEM}.arrow").read_bytes()
    go_schema = fixture_bytes[:688]
    ours = tmp_path / "ours.arrow"
    stats = write_export_file(
        ours, tmp_path / "ours.csv", fixture_records, batch_size=1, dvid_schema_size_quirk=False
    )
    our_bytes = ours.read_bytes()
    assert stats.schema_size == len(DVID_ARROW_SCHEMA.serialize()) == 696
    assert our_bytes[:688] != go_schema  # flatbuffer layout differs ...
    go = pa.ipc.read_schema(pa.py_buffer(go_schema))
    mine = pa.ipc.read_schema(pa.py_buffer(our_bytes[:696]))
    assert go.equals(mine, check_metadata=True)  # ... the schema does not
    assert [f.nullable for f in go] == [f.nullable for f in mine]
    assert list(go.field(5).metadata) == list(mine.field(5).metadata)

    # The reader reads both the same.
    with ExportFileReader(ours, tmp_path / "ours.csv") as r:
        back = list(r)
    assert [b.chunk for b in back] == [f.chunk for f in fixture_records]
    for a, b in zip(back, fixture_records, strict=True):
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.supervoxels, b.supervoxels)
        assert bytes(a.block_zstd) == bytes(b.block_zstd)

    # With Go's schema bytes the CSV index equals the fixture's byte for byte.
    same = tmp_path / "go.arrow"
    write_export_file(
        same,
        tmp_path / "go.csv",
        fixture_records,
        dvid_schema_size_quirk=False,
        schema_message=go_schema,
    )
    assert (tmp_path / "go.csv").read_text() == (shard / CSVS["batch"]).read_text()
    assert same.stat().st_size == len(fixture_bytes)
    with ExportFileReader(same, tmp_path / "go.csv") as r:
        assert len(list(r)) == 258

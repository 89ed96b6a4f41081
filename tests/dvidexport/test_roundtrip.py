"""write_export_file -> ExportFileReader round trips over every option combination."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
from dvid2ng.dvidexport.writer import write_export_file
from dvid2ng.schemas.dvid import DVID_ARROW_SCHEMA
from tests.dvidexport.helpers import random_records, same_record


def _check_file(arrow, csv, raw, stats, *, layout, quirk, ipc_format, batch_size):
    with ExportFileReader(arrow, csv) as r:
        assert r.ipc_format == ipc_format
        assert r.schema.equals(DVID_ARROW_SCHEMA, check_metadata=True)
        recs = list(r)
        assert len(recs) == len(raw) == stats.records == r.chunk_count()
        assert stats.batches == -(-len(raw) // batch_size)
        for rec, want in zip(recs, raw, strict=True):
            assert same_record(rec, want)
            assert bytes(decompress_block(rec, r.name)) == want[5]
        assert [rec.record for rec in recs] == list(range(len(raw)))
        assert r.fast_path
        r.fast_path = False  # pyarrow decoding gives the same records
        slow = list(r)
        r.fast_path = True
        assert [x.chunk for x in slow] == [x.chunk for x in recs]
        for a, b in zip(slow, recs, strict=True):
            assert np.array_equal(a.labels, b.labels)
            assert np.array_equal(a.supervoxels, b.supervoxels)
            assert bytes(a.block_zstd) == bytes(b.block_zstd)
            assert (a.uncompressed_size, a.record) == (b.uncompressed_size, b.record)
        assert np.array_equal(r.coordinates(), np.array([w[:3] for w in raw]).reshape(-1, 3))
        index = r.index()
        if csv is None:
            assert index is None
            return
        assert index.layout == layout
        assert index.chunks() == [w[:3] for w in raw]
        if layout == "legacy":
            assert index.schema_size is None
            assert index.rec.tolist() == [i // batch_size for i in range(len(raw))]
            return
        assert index.schema_size == (0 if quirk else stats.schema_size)
        data = arrow.read_bytes()
        for i in range(len(index)):
            off, size = int(index.offset[i]), int(index.size[i])
            if quirk and i < batch_size:
                assert off == 0 and size > stats.schema_size
            else:
                # the offset points at the record batch message: continuation marker, then a
                # metadata length, then the message is exactly `size` bytes
                assert data[off : off + 4] == b"\xff\xff\xff\xff"
                meta_len = struct.unpack_from("<i", data, off + 4)[0]
                msg = pa.ipc.read_message(pa.py_buffer(data[off : off + size]))
                assert msg.type == "record batch"
                assert size == 8 + meta_len + msg.body.size
            batch = r.read_batch_at(off, size)
            if index.batch_idx is not None:
                row = int(index.batch_idx[i])
                assert row == i % batch_size
            else:
                row = i % batch_size
            assert r.records_in_batch(batch)[row].chunk == index.chunks()[i]


@pytest.mark.parametrize("ipc_format", ["stream", "file"])
@pytest.mark.parametrize("quirk", [True, False])
@pytest.mark.parametrize("layout", ["legacy", "offsets", "batch"])
@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_round_trip_matrix(tmp_path, batch_size, layout, quirk, ipc_format):
    raw = random_records(20, seed=batch_size)
    arrow, csv = tmp_path / "1_2_3.arrow", tmp_path / "1_2_3.csv"
    stats = write_export_file(
        arrow,
        csv,
        raw,
        batch_size=batch_size,
        csv_layout=layout,
        dvid_schema_size_quirk=quirk,
        ipc_format=ipc_format,
    )
    _check_file(
        arrow, csv, raw, stats, layout=layout, quirk=quirk, ipc_format=ipc_format,
        batch_size=batch_size,
    )  # fmt: skip
    # no CSV at all
    stats2 = write_export_file(arrow, None, raw, batch_size=batch_size, ipc_format=ipc_format)
    _check_file(
        arrow, None, raw, stats2, layout=None, quirk=quirk, ipc_format=ipc_format,
        batch_size=batch_size,
    )  # fmt: skip


def test_quirk_csv_looks_like_dvid(tmp_path):
    raw = random_records(4)
    write_export_file(tmp_path / "a.arrow", tmp_path / "a.csv", raw)
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0] == "# schema_size=0"
    assert lines[1] == "x,y,z,offset,size,batch_idx"
    first = lines[2].split(",")
    second = lines[3].split(",")
    assert first[3] == "0" and int(first[4]) == int(second[3])  # first batch covers the schema
    data = (tmp_path / "a.arrow").read_bytes()
    assert data[-8:] == b"\xff\xff\xff\xff\x00\x00\x00\x00"


def test_empty_file(tmp_path):
    for fmt in ("stream", "file"):
        stats = write_export_file(tmp_path / "e.arrow", tmp_path / "e.csv", [], ipc_format=fmt)
        assert stats.records == 0
        with ExportFileReader(tmp_path / "e.arrow", tmp_path / "e.csv") as r:
            assert list(r) == [] and r.chunk_count() == 0 and len(r.index()) == 0
            assert r.coordinates().shape == (0, 3)


def test_reader_accepts_any_field_order_and_extra_fields(tmp_path):
    """Fields are looked up by name; extra fields (even of unusual types) are ignored."""
    raw = random_records(7, seed=3)
    fields = list(DVID_ARROW_SCHEMA)
    schema = pa.schema(
        [
            pa.field("extra_struct", pa.struct([("a", pa.int8())])),
            *reversed(fields),
            pa.field("note", pa.string()),
        ]
    )
    import zstandard

    cctx = zstandard.ZstdCompressor(write_content_size=False)  # frames without content size
    cols = {
        "chunk_x": pa.array([r[0] for r in raw], pa.int32()),
        "chunk_y": pa.array([r[1] for r in raw], pa.int32()),
        "chunk_z": pa.array([r[2] for r in raw], pa.int32()),
        "labels": pa.array([r[3] for r in raw], pa.list_(pa.uint64())),
        "supervoxels": pa.array([r[4] for r in raw], pa.list_(pa.uint64())),
        "dvid_compressed_block": pa.array([cctx.compress(r[5]) for r in raw], pa.binary()),
        "uncompressed_size": pa.array([len(r[5]) for r in raw], pa.uint32()),
        "extra_struct": pa.array([{"a": 1}] * len(raw), pa.struct([("a", pa.int8())])),
        "note": pa.array(["hi"] * len(raw)),
    }
    table = pa.table([cols[f.name] for f in schema], schema=schema)
    path = tmp_path / "x.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        w.write_table(table, max_chunksize=3)  # batches of 3, 3, 1
    with ExportFileReader(path) as r:
        assert r.fast_path  # struct and string fields have known buffer layouts
        recs = list(r)
        assert all(same_record(a, b) for a, b in zip(recs, raw, strict=True))
        assert [bytes(decompress_block(a, "x")) for a in recs] == [b[5] for b in raw]
        assert np.array_equal(r.coordinates(), np.array([b[:3] for b in raw]))


def test_sliced_and_rechunked_copy(tmp_path):
    """Records of a reader can be written straight back (zstd frames copied)."""
    raw = random_records(10, seed=5)
    write_export_file(tmp_path / "a.arrow", None, raw, batch_size=4)
    with ExportFileReader(tmp_path / "a.arrow") as r:
        write_export_file(tmp_path / "b.arrow", tmp_path / "b.csv", r, batch_size=3)
    with ExportFileReader(tmp_path / "b.arrow", tmp_path / "b.csv") as r:
        assert all(same_record(a, b) for a, b in zip(r, raw, strict=True))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 40),
    batch_size=st.integers(1, 12),
    layout=st.sampled_from(["legacy", "offsets", "batch"]),
    quirk=st.booleans(),
    ipc_format=st.sampled_from(["stream", "file"]),
    seed=st.integers(0, 1000),
)
def test_round_trip_hypothesis(tmp_path, n, batch_size, layout, quirk, ipc_format, seed):
    raw = random_records(n, seed=seed, max_labels=20)
    arrow, csv = tmp_path / "h.arrow", tmp_path / "h.csv"
    stats = write_export_file(
        arrow,
        csv,
        raw,
        batch_size=batch_size,
        csv_layout=layout,
        dvid_schema_size_quirk=quirk,
        ipc_format=ipc_format,
    )
    _check_file(
        arrow, csv, raw, stats, layout=layout, quirk=quirk, ipc_format=ipc_format,
        batch_size=batch_size,
    )  # fmt: skip

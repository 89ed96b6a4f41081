"""Every malformed input is an ExportFormatError naming the file (and the chunk if known)."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pytest
import zstandard

from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
from dvid2ng.dvidexport.writer import write_export_file
from dvid2ng.schemas.dvid import DVID_ARROW_SCHEMA, ExportFormatError
from tests.dvidexport.helpers import dvid_batch, random_records, write_raw_stream

NAME = "s0/1024_0_2048.arrow"


@pytest.fixture
def export(tmp_path):
    """A small valid export file (stream, 8 records, batch size 1) and its CSV."""
    d = tmp_path / "s0"
    d.mkdir()
    raw = random_records(8, seed=11)
    arrow, csv = d / "1024_0_2048.arrow", d / "1024_0_2048.csv"
    write_export_file(arrow, csv, raw, dvid_schema_size_quirk=False)
    return arrow, csv, raw


def _read_all(arrow, csv=None, fast=True):
    with ExportFileReader(arrow, csv) as r:
        r.fast_path = r.fast_path and fast
        recs = list(r)
        for rec in recs:
            decompress_block(rec, r.name)
        r.coordinates()
        index = r.index()
        if index is not None and index.offset is not None:
            for off, size in zip(index.offset, index.size, strict=True):
                r.read_batch_at(off, size)
        return recs


def _raises(arrow, csv=None, *, chunk=None, words=(), file=NAME):
    with pytest.raises(ExportFormatError) as ei:
        _read_all(arrow, csv)
    e = ei.value
    assert e.file == file, str(e)
    assert str(e).startswith(file + ": ")
    if chunk is not None:
        assert e.chunk == chunk, str(e)
        assert f"chunk {chunk}" in str(e)
    for w in words:
        assert w in str(e), str(e)
    return e


def test_valid_file_reads(export):
    arrow, csv, _raw = export
    assert len(_read_all(arrow, csv)) == 8


def test_truncated_at_many_points(export):
    arrow, csv, _ = export
    data = arrow.read_bytes()
    cut_points = sorted(
        {0, 3, 7, 8, 100, 695, 696, 700, 900, len(data) // 2, len(data) - 9, len(data) - 8}
        | {len(data) - 4, len(data) - 1}
    )
    with ExportFileReader(arrow, csv) as r:
        boundaries = [int(o) for o in r.index().offset]  # cuts exactly between messages
    for cut in cut_points + boundaries:
        arrow.write_bytes(data[:cut])
        for c in (None, csv):
            e = _raises(arrow, c)
            assert e.chunk is None or isinstance(e.chunk, tuple)
        if cut > 696:
            _raises(arrow, None, words=("truncated",))
    arrow.write_bytes(data)
    _read_all(arrow, csv)


def test_truncated_ipc_file_format(tmp_path):
    d = tmp_path / "s0"
    d.mkdir()
    arrow = d / "1024_0_2048.arrow"
    write_export_file(arrow, None, random_records(5), ipc_format="file")
    data = arrow.read_bytes()
    for cut in (8, 100, len(data) // 2, len(data) - 10, len(data) - 1):
        arrow.write_bytes(data[:cut])
        _raises(arrow)


def test_corrupt_zstd(export):
    arrow, csv, _raw = export
    with ExportFileReader(arrow, csv) as r:
        rec = next(iter(r))
        frame = bytearray(rec.block_zstd)
    data = bytearray(arrow.read_bytes())
    pos = bytes(data).find(bytes(frame))
    assert pos > 0
    data[pos + len(frame) - 6] ^= 0xFF  # inside the compressed payload / checksum
    arrow.write_bytes(bytes(data))
    _raises(arrow, csv, chunk=rec.chunk, words=("zstd",))
    # not a zstd frame at all
    data[pos : pos + 4] = b"abcd"
    arrow.write_bytes(bytes(data))
    _raises(arrow, csv, chunk=rec.chunk, words=("not a zstd frame",))


def _write_batch(arrow, csv, batch, schema=DVID_ARROW_SCHEMA):
    write_raw_stream(arrow, [batch], schema)


def _good_cols(n=3):
    raw = random_records(n, seed=2)
    cctx = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True)
    return {
        "xs": [r[0] for r in raw],
        "ys": [r[1] for r in raw],
        "zs": [r[2] for r in raw],
        "labels": [r[3].tolist() for r in raw],
        "supervoxels": [r[4].tolist() for r in raw],
        "blocks": [cctx.compress(r[5]) for r in raw],
        "sizes": [len(r[5]) for r in raw],
    }


@pytest.fixture
def arrow_path(tmp_path):
    d = tmp_path / "s0"
    d.mkdir()
    return d / "1024_0_2048.arrow"


def test_uncompressed_size_mismatch(arrow_path):
    cols = _good_cols()
    cols["sizes"][1] += 1
    _write_batch(arrow_path, None, dvid_batch(**cols))
    chunk = (cols["xs"][1], cols["ys"][1], cols["zs"][1])
    _raises(arrow_path, chunk=chunk, words=("uncompressed_size",))


def test_uncompressed_size_mismatch_without_content_size(arrow_path):
    cols = _good_cols()
    raw = random_records(3, seed=2)
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    cols["blocks"] = [cctx.compress(r[5]) for r in raw]
    cols["sizes"][0] -= 1
    _write_batch(arrow_path, None, dvid_batch(**cols))
    _raises(arrow_path, chunk=(cols["xs"][0], cols["ys"][0], cols["zs"][0]))
    cols["sizes"][0] += 2
    _write_batch(arrow_path, None, dvid_batch(**cols))
    _raises(arrow_path, chunk=(cols["xs"][0], cols["ys"][0], cols["zs"][0]), words=("decodes",))


def test_truncated_zstd_frame(arrow_path):
    cols = _good_cols()
    cols["blocks"][1] = cols["blocks"][1][:-5]
    _write_batch(arrow_path, None, dvid_batch(**cols))
    e = _raises(arrow_path, chunk=(cols["xs"][1], cols["ys"][1], cols["zs"][1]))
    assert e.cause == "zstd frame is truncated"
    assert str(e) == f"{NAME}: chunk {e.chunk}: zstd frame is truncated"


def test_block_too_large_or_empty(arrow_path):
    cols = _good_cols()
    cols["sizes"][2] = 2**32 - 1
    _write_batch(arrow_path, None, dvid_batch(**cols))
    _raises(arrow_path, chunk=(cols["xs"][2], cols["ys"][2], cols["zs"][2]), words=("limit",))
    cols = _good_cols()
    cols["blocks"][0] = b""
    _write_batch(arrow_path, None, dvid_batch(**cols))
    _raises(arrow_path, chunk=(cols["xs"][0], cols["ys"][0], cols["zs"][0]), words=("empty",))


def test_missing_required_field(arrow_path):
    for missing in DVID_ARROW_SCHEMA.names:
        schema = pa.schema([f for f in DVID_ARROW_SCHEMA if f.name != missing])
        _write_batch(arrow_path, None, dvid_batch(**_good_cols(), schema=schema), schema)
        _raises(arrow_path, words=(f"missing required field '{missing}'",))


@pytest.mark.parametrize(
    ("name", "typ"),
    [
        ("chunk_x", pa.int64()),
        ("chunk_z", pa.uint32()),
        ("labels", pa.list_(pa.int64())),
        ("supervoxels", pa.large_list(pa.uint64())),
        ("dvid_compressed_block", pa.string()),
        ("dvid_compressed_block", pa.large_binary()),
        ("uncompressed_size", pa.uint64()),
    ],
)
def test_wrong_field_type(arrow_path, name, typ):
    schema = pa.schema([pa.field(f.name, typ) if f.name == name else f for f in DVID_ARROW_SCHEMA])
    cols = _good_cols()
    if name == "dvid_compressed_block" and typ == pa.string():
        cols["blocks"] = ["abc"] * 3
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(v, schema.field(i).type)
            for i, v in enumerate(
                [cols[k] for k in ("xs", "ys", "zs", "labels", "supervoxels", "blocks", "sizes")]
            )
        ],
        schema=schema,
    )
    _write_batch(arrow_path, None, batch, schema)
    _raises(arrow_path, words=(f"field '{name}' has type",))


def test_nulls_rejected(arrow_path):
    schema = pa.schema([f.with_nullable(True) for f in DVID_ARROW_SCHEMA])
    cols = _good_cols()
    cols["xs"][1] = None
    _write_batch(arrow_path, None, dvid_batch(**cols, schema=schema), schema)
    _raises(arrow_path, words=("'chunk_x' holds nulls",))
    cols = _good_cols()
    cols["labels"][1] = [1, None]
    cols["supervoxels"][1] = [1, 2]
    _write_batch(arrow_path, None, dvid_batch(**cols, schema=schema), schema)
    _raises(arrow_path, words=("null list items",))


def test_label_list_lengths_differ(arrow_path):
    cols = _good_cols()
    cols["labels"][2] = cols["labels"][2] + [7]
    _write_batch(arrow_path, None, dvid_batch(**cols))
    _raises(arrow_path, chunk=(cols["xs"][2], cols["ys"][2], cols["zs"][2]), words=("entries",))


def test_negative_coordinate(arrow_path):
    cols = _good_cols()
    cols["ys"][0] = -1
    _write_batch(arrow_path, None, dvid_batch(**cols))
    _raises(arrow_path, chunk=(cols["xs"][0], -1, cols["zs"][0]), words=("negative",))


def test_duplicate_chunk(arrow_path):
    cols = _good_cols(4)
    for k in ("xs", "ys", "zs"):
        cols[k][3] = cols[k][1]
    _write_batch(arrow_path, None, dvid_batch(**cols))
    _raises(arrow_path, chunk=(cols["xs"][1], cols["ys"][1], cols["zs"][1]), words=("twice",))


def test_csv_lists_chunk_missing_from_arrow(export):
    """DVID dropped a block after queueing its CSV row (formats ref. 2.7.3)."""
    arrow, csv, _raw = export
    lines = csv.read_text().splitlines()
    lines.append("7,8,9,0,100,0")
    csv.write_text("\n".join(lines) + "\n")
    e = _raises(arrow, csv, chunk=(7, 8, 9), words=("missing from the Arrow file",))
    assert "s0/1024_0_2048.csv" in str(e)


def test_arrow_chunk_missing_from_csv(export):
    arrow, csv, _raw = export
    lines = csv.read_text().splitlines()
    dropped = lines.pop(4)
    csv.write_text("\n".join(lines) + "\n")
    chunk = tuple(int(v) for v in dropped.split(",")[:3])
    _raises(arrow, csv, chunk=chunk, words=("not in the CSV index",))


def test_csv_offsets_disagree(export):
    arrow, csv, _raw = export
    lines = csv.read_text().splitlines()
    parts = lines[3].split(",")
    parts[3] = str(int(parts[3]) + 8)
    lines[3] = ",".join(parts)
    csv.write_text("\n".join(lines) + "\n")
    chunk = tuple(int(v) for v in parts[:3])
    _raises(arrow, csv, chunk=chunk, words=("offset",))


def test_csv_schema_size_from_another_file(export):
    arrow, csv, _raw = export
    csv.write_text(csv.read_text().replace("# schema_size=696", "# schema_size=688"))
    e = _raises(arrow, csv, file="s0/1024_0_2048.csv", words=("schema_size=688",))
    assert e.line == 1


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("# schema_size=0\nx,y,z,offset,size\n", 2),
        ("x,y,z,rec\n1,2,3,0\n1,2,x,1\n", 3),
        ("x,y,z,rec\n1,2,3\n", 2),
        ("x,y,z,rec\n1,2,3,0\n1,2,3,1\n", 3),
    ],
)
def test_malformed_csv_via_reader(export, text, line):
    arrow, csv, _raw = export
    csv.write_text(text)
    e = _raises(arrow, csv, file="s0/1024_0_2048.csv")
    assert e.line == line
    csv.write_bytes(b"x,y,z,rec\n1,2,\xff,0\n")
    _raises(arrow, csv, file="s0/1024_0_2048.csv", words=("ASCII",))


def test_two_appended_streams(export):
    """DVID re-export into a non-empty directory appends a second stream (formats ref. 2.5)."""
    arrow, csv, raw = export
    one = arrow.read_bytes()
    arrow.write_bytes(one + one)
    for c in (None, csv):
        e = _raises(arrow, c, words=("another Arrow IPC stream", "exported twice"))
        assert e.chunk is None
    # a whole stream appended, with the CSV rewritten for the second export only
    write_export_file(arrow.with_name("b.arrow"), csv, raw[:3], csv_layout="legacy")
    arrow.write_bytes(one + arrow.with_name("b.arrow").read_bytes())
    _raises(arrow, csv)


def test_garbage_after_end_of_stream(export):
    arrow, csv, _raw = export
    arrow.write_bytes(arrow.read_bytes() + b"\x00junk")
    _raises(arrow, csv, words=("unexpected bytes after the end-of-stream",))


def test_not_arrow_at_all(arrow_path):
    arrow_path.write_bytes(b"")
    _raises(arrow_path, words=("empty",))
    arrow_path.write_bytes(b"hello world, this is not arrow")
    _raises(arrow_path, words=("continuation",))
    arrow_path.write_bytes(b"ARROW1\x00\x00garbage")
    _raises(arrow_path, words=("footer",))
    arrow_path.write_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    _raises(arrow_path, words=("no schema",))


def test_read_batch_at_bad_ranges(export):
    arrow, csv, _raw = export
    with ExportFileReader(arrow, csv) as r:
        index = r.index()
        off, size = int(index.offset[2]), int(index.size[2])
        for bad in [
            (off, size - 8),
            (off, size + 8),
            (off + 8, size),
            (100, 50),
            (-1, 10),
            (off, 0),
            (off, 10**9),
            (r.file_size - 8, 8),
            (0, 696),
        ]:
            with pytest.raises(ExportFormatError) as ei:
                r.read_batch_at(*bad)
            assert ei.value.file == NAME


@contextmanager
def _deadline(seconds):
    def boom(signum, frame):
        raise TimeoutError("reader hung on a mutated file")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("fast", [True, False])
def test_fuzz_mutations_only_raise_export_format_error(tmp_path, fast):
    """Mutate bytes of a small export (and its CSV): the reader must either read it or raise
    ExportFormatError, never another exception, never hang."""
    d = tmp_path / "s0"
    d.mkdir()
    arrow, csv = d / "1024_0_2048.arrow", d / "1024_0_2048.csv"
    raw = random_records(6, seed=5, max_labels=4, max_block=60)
    write_export_file(arrow, csv, raw, batch_size=2)
    good_arrow, good_csv = arrow.read_bytes(), csv.read_bytes()
    rng = np.random.default_rng(1234)
    outcomes = {"ok": 0, "error": 0}
    started = time.monotonic()
    with _deadline(60):
        for i in range(600):
            data = bytearray(good_arrow)
            text = bytearray(good_csv)
            kind = i % 6
            if kind in (0, 1):  # flip 1-4 random bytes
                for _ in range(int(rng.integers(1, 5))):
                    data[int(rng.integers(len(data)))] = int(rng.integers(256))
            elif kind == 2:  # truncate
                data = data[: int(rng.integers(len(data)))]
            elif kind == 3:  # insert or delete a few bytes
                p = int(rng.integers(len(data)))
                if rng.random() < 0.5:
                    data[p:p] = rng.bytes(int(rng.integers(1, 9)))
                else:
                    del data[p : p + int(rng.integers(1, 9))]
            elif kind == 4:  # overwrite an int32/int64 with an extreme value
                p = int(rng.integers(len(data) - 8))
                data[p : p + 8] = rng.choice(
                    [b"\xff" * 8, b"\x7f" * 8, b"\x00" * 8, b"\x00\x00\x00\x80" * 2]
                )
            else:  # mutate the CSV
                for _ in range(int(rng.integers(1, 4))):
                    text[int(rng.integers(len(text)))] = int(rng.choice(list(b"0123456789,\n#x-")))
            arrow.write_bytes(bytes(data))
            csv.write_bytes(bytes(text))
            for c in (csv, None):
                try:
                    _read_all(arrow, c, fast)
                    outcomes["ok"] += 1
                except ExportFormatError as e:
                    assert e.file in (NAME, "s0/1024_0_2048.csv")
                    outcomes["error"] += 1
    assert outcomes["error"] > 300, outcomes
    assert time.monotonic() - started < 60

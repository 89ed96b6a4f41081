"""schemas/dvid.py: the Arrow schema, the CSV chunk index parser/formatter, the error class."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.schemas.dvid import (
    DVID_ARROW_SCHEMA,
    REQUIRED_FIELDS,
    ChunkIndex,
    ExportFormatError,
    format_chunk_index,
    parse_chunk_index,
)


def test_schema_is_dvids():
    s = DVID_ARROW_SCHEMA
    assert s.names == [
        "chunk_x",
        "chunk_y",
        "chunk_z",
        "labels",
        "supervoxels",
        "dvid_compressed_block",
        "uncompressed_size",
    ]
    assert tuple(s.names) == REQUIRED_FIELDS
    assert all(not f.nullable for f in s)
    assert s.field("labels").type.value_field.name == "item"
    assert s.field("labels").type.value_field.nullable
    assert s.field("supervoxels").type.value_field.nullable
    assert s.field("chunk_x").type == pa.int32()
    assert s.field("dvid_compressed_block").type == pa.binary()  # not large_binary
    assert s.field("uncompressed_size").type == pa.uint32()
    md = s.field("dvid_compressed_block").metadata
    assert list(md.items()) == [(b"compression", b"true"), (b"codec", b"zstd")]
    for name in ("chunk_x", "labels", "uncompressed_size"):
        assert s.field(name).metadata is None
    assert s.metadata is None


def test_error_message_and_attributes():
    e = ExportFormatError("s0/0_0_0.arrow", "zstd frame is truncated", (3, 4, 5))
    assert str(e) == "s0/0_0_0.arrow: chunk (3, 4, 5): zstd frame is truncated"
    assert (e.file, e.chunk, e.cause, e.line) == (
        "s0/0_0_0.arrow",
        (3, 4, 5),
        "zstd frame is truncated",
        None,
    )
    assert isinstance(e, ValueError)
    e2 = ExportFormatError("a.csv", "bad", line=7)
    assert str(e2) == "a.csv: line 7: bad" and e2.chunk is None
    e3 = pickle.loads(pickle.dumps(e))
    assert str(e3) == str(e) and e3.chunk == (3, 4, 5)


def test_parse_three_layouts():
    legacy = parse_chunk_index("x,y,z,rec\n1,2,3,0\n4,5,6,1\n", "a.csv")
    assert legacy.layout == "legacy" and legacy.schema_size is None
    assert legacy.chunks() == [(1, 2, 3), (4, 5, 6)] and legacy.rec.tolist() == [0, 1]
    assert legacy.offset is None and legacy.batch_idx is None

    off = parse_chunk_index("# schema_size=688\nx,y,z,rec,offset,size\n1,2,3,0,688,792\n", "b")
    assert off.layout == "offsets" and off.schema_size == 688
    assert off.offset.tolist() == [688] and off.size.tolist() == [792]

    new = parse_chunk_index("# schema_size=0\nx,y,z,offset,size,batch_idx\n7,8,9,0,1480,0\n", "c")
    assert new.layout == "batch" and new.schema_size == 0
    assert new.batch_idx.tolist() == [0] and new.rec is None
    assert new.x.dtype == np.int64
    assert new.row_of((7, 8, 9)) == 0 and new.row_of((1, 1, 1)) is None


def test_parse_empty_and_line_endings():
    empty = parse_chunk_index("# schema_size=0\nx,y,z,offset,size,batch_idx\n", "e")
    assert len(empty) == 0 and empty.layout == "batch" and empty.coords().shape == (0, 3)
    assert len(parse_chunk_index("x,y,z,rec", "e")) == 0  # no final newline
    crlf = parse_chunk_index("x,y,z,rec\r\n1,2,3,0\r\n", "e")
    assert crlf.chunks() == [(1, 2, 3)]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "empty"),
        ("# schema_size=abc\nx,y,z,rec\n", 1, "schema_size"),
        ("# schema_size=-1\nx,y,z,rec\n", 1, "schema_size"),
        ("# hello\nx,y,z,rec\n", 1, "comment"),
        ("# schema_size=0\n", 2, "header"),
        ("x,y,z\n1,2,3\n", 1, "unknown header"),
        ("x,y,z,rec\n1,2,3\n", 2, "expected 4 fields"),
        ("x,y,z,rec\n1,2,3,0,5\n", 2, "expected 4 fields"),
        ("x,y,z,rec\n1,2,3,0\n\n4,5,6,1\n", 3, "blank line"),
        ("x,y,z,rec\n1,2,a,0\n", 2, "z is not an integer"),
        ("x,y,z,rec\n1,2,3.5,0\n", 2, "not an integer"),
        ("x,y,z,rec\n1,-2,3,0\n", 2, "negative"),
        ("x,y,z,rec\n1,2,3,0\n1,2,3,1\n", 3, "twice"),
        ("x,y,z,rec\n1,2,99999999999,0\n", 2, "out of range"),
        ("x,y,z,offset,size,batch_idx\n1,2,3,8,0,0\n", 2, "size must be positive"),
        ("x,y,z,offset,size,batch_idx\n1,2,3,8,99999999999999999999,0\n", 2, "out of range"),
    ],
)
def test_parse_rejects_malformed(text, line, words):
    with pytest.raises(ExportFormatError) as ei:
        parse_chunk_index(text, "s1/30720_24576_28672.csv")
    e = ei.value
    assert e.file == "s1/30720_24576_28672.csv" and e.line == line
    assert words in str(e)
    assert str(e).startswith(f"s1/30720_24576_28672.csv: line {line}: ")


def test_chunkindex_checks_columns():
    with pytest.raises(ValueError):
        ChunkIndex("batch", 0, x=[1], y=[1], z=[1])  # missing offset/size/batch_idx
    with pytest.raises(ValueError):
        ChunkIndex("nope", 0, x=[1], y=[1], z=[1])


_u31 = st.integers(0, 2**31 - 1)
_u63 = st.integers(0, 2**63 - 1)


@st.composite
def chunk_indexes(draw):
    layout = draw(st.sampled_from(["legacy", "offsets", "batch"]))
    coords = draw(st.lists(st.tuples(_u31, _u31, _u31), unique=True, max_size=30))
    n = len(coords)
    cols = {
        "x": [c[0] for c in coords],
        "y": [c[1] for c in coords],
        "z": [c[2] for c in coords],
    }
    if layout in ("legacy", "offsets"):
        cols["rec"] = draw(st.lists(_u63, min_size=n, max_size=n))
    if layout in ("offsets", "batch"):
        cols["offset"] = draw(st.lists(_u63, min_size=n, max_size=n))
        cols["size"] = draw(st.lists(st.integers(1, 2**63 - 1), min_size=n, max_size=n))
    if layout == "batch":
        cols["batch_idx"] = draw(st.lists(_u63, min_size=n, max_size=n))
    schema_size = draw(st.one_of(st.none(), _u63))
    return ChunkIndex(layout=layout, schema_size=schema_size, **cols)


@settings(max_examples=150, deadline=None)
@given(chunk_indexes())
def test_format_parse_round_trip(index):
    text = format_chunk_index(index)
    back = parse_chunk_index(text, "rt.csv")
    assert back.layout == index.layout and back.schema_size == index.schema_size
    for name in ("x", "y", "z", "rec", "offset", "size", "batch_idx"):
        a, b = getattr(index, name), getattr(back, name)
        assert (a is None and b is None) or np.array_equal(a, b)
    assert format_chunk_index(back) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="xyzrecofsiztbach_#=,0123456789-\n\r ", max_size=80))
def test_parse_never_raises_anything_else(text):
    try:
        parse_chunk_index(text, "fuzz.csv")
    except ExportFormatError as e:
        assert e.file == "fuzz.csv" and e.line is not None

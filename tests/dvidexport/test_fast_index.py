"""The fast CSV index reader gives exactly what `parse_chunk_index` gives, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.dvidexport import fast_index
from dvid2ng.dvidexport.fast_index import read_chunk_index
from dvid2ng.schemas.dvid import (
    LAYOUT_COLUMNS,
    ChunkIndex,
    ExportFormatError,
    format_chunk_index,
    parse_chunk_index,
)


def _same(a: ChunkIndex, b: ChunkIndex) -> None:
    assert a.layout == b.layout and a.schema_size == b.schema_size
    for c in ("x", "y", "z", "rec", "offset", "size", "batch_idx"):
        va, vb = getattr(a, c), getattr(b, c)
        assert (va is None) == (vb is None), c
        if va is not None:
            np.testing.assert_array_equal(va, vb, err_msg=c)


@st.composite
def indexes(draw):
    layout = draw(st.sampled_from(sorted(LAYOUT_COLUMNS)))
    n = draw(st.integers(0, 60))
    coords = draw(
        st.lists(st.tuples(*(st.integers(0, 2**31 - 1),) * 3), min_size=n, max_size=n, unique=True)
    )
    big = st.integers(0, 2**62)
    cols = {
        "rec": [draw(big) for _ in coords],
        "offset": [draw(big) for _ in coords],
        "size": [draw(st.integers(1, 2**40)) for _ in coords],
        "batch_idx": [draw(st.integers(0, 1000)) for _ in coords],
    }
    xyz = np.array(coords, np.int64).reshape(-1, 3)
    kw = {c: np.array(cols[c], np.int64) for c in LAYOUT_COLUMNS[layout][3:]}
    schema = None if layout == "legacy" else draw(st.sampled_from([0, 688, 12]))
    return ChunkIndex(layout, schema, xyz[:, 0], xyz[:, 1], xyz[:, 2], **kw)


@settings(max_examples=150, deadline=None)
@given(index=indexes(), big=st.booleans())
def test_equals_the_reference_parser(tmp_path_factory, index, big):
    path = tmp_path_factory.mktemp("csv") / "i.csv"
    text = format_chunk_index(index)
    path.write_text(text)
    old = fast_index.SMALL_BODY
    fast_index.SMALL_BODY = 0 if big else 1 << 30  # both the Arrow and the small-file path
    try:
        assert fast_index._fast_parse(text.encode()) is not None, "the fast path was taken"
        _same(read_chunk_index(path), parse_chunk_index(text, "i.csv"))
    finally:
        fast_index.SMALL_BODY = old


BAD = [
    "x,y,z,rec\n1,2,3,0\n1,2,3,1\n",  # duplicate chunk
    "x,y,z,rec\n1,2,3\n",  # missing field
    "x,y,z,rec\n1,2,3,0\n\n4,5,6,1\n",  # blank line
    "x,y,z,rec\n1,2,-3,0\n",  # negative
    "x,y,z,rec\n1,2,99999999999,0\n",  # beyond int32
    "x,y,z,rec\n1,2,3,9999999999999999999\n",  # beyond int64
    "# schema_size=0\nx,y,z,offset,size,batch_idx\n1,2,3,0,0,0\n",  # zero size
    "x,y,z,foo\n1,2,3,0\n",  # unknown header
    "# something\nx,y,z,rec\n",
    "x,y,z,rec\n1, 2,3,x\n",
]


@pytest.mark.parametrize("text", BAD)
def test_errors_are_the_reference_parsers(tmp_path, text):
    path = tmp_path / "s0" / "0_0_0.csv"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ExportFormatError) as want:
        parse_chunk_index(text, "s0/0_0_0.csv")
    with pytest.raises(ExportFormatError) as got:
        read_chunk_index(path, "s0/0_0_0.csv")
    assert str(got.value) == str(want.value)


def test_tolerated_variants_fall_back_and_parse(tmp_path):
    path = tmp_path / "i.csv"
    text = "# schema_size = 0\r\nx,y,z,offset,size,batch_idx\r\n1, 2,3,0,9,0\r\n4,5,6,9,9,0"
    path.write_bytes(text.encode())
    _same(read_chunk_index(path), parse_chunk_index(text, "i.csv"))
    path.write_bytes(b"x,y,z,rec\n\xff\n")
    with pytest.raises(ExportFormatError, match="not a text file"):
        read_chunk_index(path)

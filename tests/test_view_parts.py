"""The parts of `dvid2ng view` that are plain functions: Range parsing and answering (property
tests against RFC 9110's rules, written out again here), the two storage back ends agreeing
byte for byte (local files; TensorStore's file kvstore), `info` checks, the state and its URL."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.dispatcher.ngstate import (
    InfoError,
    cross_section_scale,
    parse_info,
    parse_segments,
    state_from_url,
    state_url,
    viewer_state,
)
from dvid2ng.dispatcher.view import ByteRange, KvStoreFiles, LocalFiles, parse_range


def rfc_answer(header: str | None, size: int) -> tuple[int, int, int]:
    """(status, start, end) RFC 9110 asks for a single-range request: 206 with the satisfiable
    part, 416 when nothing of it is in the file, 200 with everything when the header is absent
    or not a valid single byte range."""
    whole = (200, 0, size)
    if header is None:
        return whole
    spec = header.strip()
    if not spec.startswith("bytes=") or "," in spec:
        return whole
    first, sep, last = spec[len("bytes=") :].partition("-")
    if not sep or not all(c in "0123456789" for c in first + last):
        return whole
    if first == "":
        if last == "":
            return whole
        n = int(last)
        if n == 0 or size == 0:
            return (416, 0, 0)
        return (206, max(0, size - n), size)
    a = int(first)
    if last != "" and int(last) < a:
        return whole
    if a >= size:
        return (416, 0, 0)
    b = size if last == "" else min(int(last) + 1, size)
    return (206, a, b)


numbers = st.one_of(st.none(), st.integers(0, 3000))
headers = st.one_of(
    st.none(),
    st.builds(
        lambda a, b: f"bytes={'' if a is None else a}-{'' if b is None else b}", numbers, numbers
    ),
    st.sampled_from(
        ["bytes=0-1,4-5", "items=0-3", "bytes=a-b", "bytes=--3", " bytes=3-4 ", "", "bytes=²-3"]
    ),
    st.builds(lambda n: f"bytes={n}-", st.integers(2**62, 2**80)),
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranges")
    sizes = (0, 1, 7, 1000, 2500)
    for n in sizes:
        (root / f"f{n}").write_bytes(bytes((i * 7 + n) % 251 for i in range(n)))
    return root, LocalFiles(root), KvStoreFiles(str(root)), sizes


def _body(answer) -> bytes:
    return b"".join(answer.chunks)


@settings(max_examples=300, deadline=None)
@given(header=headers, which=st.integers(0, 4))
def test_local_files_answer_ranges_as_rfc_9110_says(stores, header, which):
    root, local, _, sizes = stores
    size = sizes[which]
    data = (root / f"f{size}").read_bytes()
    status, start, end = rfc_answer(header, size)
    answer = local.get(f"f{size}", parse_range(header), head=False)
    assert answer.status == status
    if status == 416:
        assert answer.content_range == f"bytes */{size}"
        return
    assert _body(answer) == data[start:end]
    assert answer.length == end - start
    if status == 206:
        assert answer.content_range == f"bytes {start}-{end - 1}/{size}"
    head = local.get(f"f{size}", parse_range(header), head=True)
    assert (head.status, head.length, head.content_range, _body(head)) == (
        answer.status,
        answer.length,
        answer.content_range,
        b"",
    )


@settings(max_examples=300, deadline=None)
@given(header=headers, which=st.integers(0, 4))
def test_the_kvstore_back_end_serves_the_same_bytes(stores, header, which):
    """Through TensorStore (as for gs://) the bytes and statuses are the same; a kvstore does not
    know sizes, so totals are `*` and a suffix range gets the whole value (200, allowed)."""
    _, local, kv, sizes = stores
    key = f"f{sizes[which]}"
    rng = parse_range(header)
    want = local.get(key, rng, head=False)
    got = kv.get(key, rng, head=False)
    if rng is not None and rng.first is None:  # suffix
        assert got.status == 200 and _body(got) == _body(local.get(key, None, head=False))
        return
    assert got.status == want.status
    assert _body(got) == _body(want)
    if want.status == 206:
        assert got.content_range == want.content_range.rsplit("/", 1)[0] + "/*"


def test_missing_keys(stores):
    _, local, kv, _ = stores
    for files in (local, kv):
        assert files.get("nope", None, head=False).status == 404
        assert files.get("nope", ByteRange(0, 3), head=False).status == 404
        assert files.get("nope", None, head=True).status == 404
        assert files.read_whole("nope") is None


# -- info ----------------------------------------------------------------------------------

INFO = {
    "type": "segmentation",
    "data_type": "uint64",
    "scales": [
        {"key": "a", "size": [300, 200, 100], "resolution": [8, 8, 40], "voxel_offset": [10, 0, 5]},
        {"key": "b", "size": [150, 100, 100], "resolution": [16, 16, 40]},
    ],
}


def test_parse_info_reads_what_the_viewer_needs():
    info = parse_info(json.dumps(INFO).encode())
    assert [s.key for s in info.scales] == ["a", "b"]
    assert info.scales[0].voxel_offset == (10, 0, 5)
    assert info.scales[1].voxel_offset == (0, 0, 0)
    assert info.describe() == "segmentation uint64, 2 scales, 300x200x100 voxels at 8x8x40 nm"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"type": None}, "'type'"),
        ({"scales": {}}, "'scales'"),
        ({"scales": [{"size": [1, 1, 1], "resolution": [1, 1, 1]}]}, "'key'"),
        ({"scales": [{"key": "a", "size": [1, 0, 1], "resolution": [1, 1, 1]}]}, "size"),
        ({"scales": [{"key": "a", "size": [1, 1.5, 1], "resolution": [1, 1, 1]}]}, "size"),
        ({"scales": [{"key": "a", "size": [1, 1, 1], "resolution": [1, -1, 1]}]}, "resolution"),
        ({"scales": [{"key": "a", "size": [1, 1, 1], "resolution": [1, True, 1]}]}, "resolution"),
        (
            {
                "scales": [
                    {"key": "a", "size": [1, 1, 1], "resolution": [1, 1, 1], "voxel_offset": 3}
                ]
            },
            "voxel_offset",
        ),
    ],
)
def test_parse_info_names_what_is_wrong(change, says):
    with pytest.raises(InfoError, match=says):
        parse_info(json.dumps({**INFO, **change}).encode(), "X/info")


def test_parse_segments():
    assert parse_segments("5, 18446744073709551615,5,") == [5, 18446744073709551615]
    for bad in ("", ",", "x", "-1", "0", "18446744073709551616", "1.5"):
        with pytest.raises(ValueError):
            parse_segments(bad)


# -- state ---------------------------------------------------------------------------------


def test_state_is_centred_with_segments_and_scale():
    info = parse_info(json.dumps(INFO).encode())
    state = viewer_state(
        info, "precomputed://http://h:1/data/t", layer_name="v", segments=[7, 2**64 - 1]
    )
    assert state["position"] == [10 + 150 + 0.5, 100.5, 5 + 50 + 0.5]
    assert state["dimensions"] == {"x": [8e-9, "m"], "y": [8e-9, "m"], "z": [4e-8, "m"]}
    assert state["layers"] == [
        {
            "type": "segmentation",
            "source": "precomputed://http://h:1/data/t",
            "name": "v",
            "segments": ["7", "18446744073709551615"],  # strings: uint64 ids beyond 2^53
        }
    ]
    assert state["crossSectionScale"] == 1.0  # 300 voxels fit the screen
    assert viewer_state(info, "s", layer_name="v", scale=1)["crossSectionScale"] == 2.0
    assert "segments" not in viewer_state(info, "s", layer_name="v")["layers"][0]


def test_default_zoom_fits_a_big_volume():
    big = {**INFO, "scales": [{**INFO["scales"][0], "size": [94_000, 78_000, 134_000]}]}
    info = parse_info(json.dumps(big).encode())
    assert cross_section_scale(info, None) == pytest.approx(94_000 / 800)
    assert cross_section_scale(info, 0) == 1.0


@given(
    st.recursive(
        st.text() | st.integers() | st.floats(allow_nan=False),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_state_url_round_trips(value):
    state = {"v": value}
    url = state_url("http://127.0.0.1:1/v/t/", state)
    base, fragment = url.split("#!", 1)
    assert base == "http://127.0.0.1:1/v/t/"
    # nothing a terminal or a browser would cut the URL at, or read as another fragment
    assert not set(fragment) & set(' "#<>{}[]\\^`|\n')
    assert state_from_url(url) == state

"""The shard index / minishard index parser and writer against TensorStore's own sharded kvstore
(it writes shards we parse, and reads shards we encode), plus every malformation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import tensorstore as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.schemas.shard_format import (
    ShardFormatError,
    decode_minishard_index,
    decode_minishard_indices,
    encode_minishard_index,
    encode_shard,
    parse_shard_index,
    shard_index_bytes,
    split_chunk_ids,
)
from dvid2ng.schemas.sharding import split_code
from dvid2ng.schemas.spec import Scale, Sharding


def _sharded(ctx, preshift, minishard, shard, encoding="gzip"):
    meta = {
        "@type": "neuroglancer_uint64_sharded_v1",
        "hash": "identity",
        "preshift_bits": preshift,
        "minishard_bits": minishard,
        "shard_bits": shard,
        "minishard_index_encoding": encoding,
        "data_encoding": "raw",
    }
    kv = ts.KvStore.open(
        {"driver": "neuroglancer_uint64_sharded", "base": "memory://v/", "metadata": meta},
        context=ctx,
    ).result()
    return kv, ts.KvStore.open("memory://v/", context=ctx).result()


def _parse_all(data: bytes, minishard_bits: int, preshift: int, encoding="gzip"):
    n = shard_index_bytes(minishard_bits)
    index = parse_shard_index(data[:n], minishard_bits)
    assert index.file_size == len(data)
    out = {}
    parts = [
        (int(m), int(index.starts[m]), data[int(index.starts[m]) : int(index.ends[m])])
        for m in index.nonempty
    ]
    batch, minis = decode_minishard_indices(
        parts, encoding=encoding, index_bytes=n, max_entries=1 << preshift
    )
    for m in index.nonempty:
        s, e = int(index.starts[m]), int(index.ends[m])
        mi = decode_minishard_index(
            data[s:e],
            encoding=encoding,
            index_bytes=n,
            index_start=s,
            max_entries=1 << preshift,
            minishard=int(m),
        )
        for cid, start, size in zip(mi.chunk_ids, mi.starts, mi.sizes, strict=True):
            out[int(cid)] = (int(m), data[int(start) : int(start + size)])
    # the batched decoder (what verify uses) gives the same entries, minishard by minishard
    assert {
        int(c): (int(m), data[int(st) : int(st + z)])
        for c, st, z, m in zip(batch.chunk_ids, batch.starts, batch.sizes, minis, strict=True)
    } == out
    return out


@settings(max_examples=40, deadline=None)
@given(
    bits=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    encoding=st.sampled_from(["gzip", "raw"]),
    data=st.data(),
)
def test_parses_what_tensorstore_writes(bits, encoding, data):
    preshift, minishard, shard = bits
    total = preshift + minishard + shard
    ids = data.draw(st.sets(st.integers(0, (1 << total) - 1), min_size=1, max_size=20))
    chunks = {cid: data.draw(st.binary(min_size=1, max_size=40)) for cid in ids}
    ctx = ts.Context()
    kv, base = _sharded(ctx, preshift, minishard, shard, encoding)
    txn = ts.Transaction()
    for cid, value in chunks.items():
        kv.with_transaction(txn).write(struct.pack(">Q", cid), value).result()
    txn.commit_async().result()
    seen = {}
    for key in base.list().result():
        shard_no = int(key.decode().split(".")[0], 16)
        blob = bytes(base.read(key).result().value)
        for cid, (m, value) in _parse_all(blob, minishard, preshift, encoding).items():
            assert split_chunk_ids(np.array([cid], np.uint64), preshift, minishard, shard) == (
                shard_no,
                m,
            )
            seen[cid] = value
    assert seen == chunks


@settings(max_examples=40, deadline=None)
@given(
    bits=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    data=st.data(),
)
def test_tensorstore_reads_what_we_encode(bits, data):
    preshift, minishard = bits
    ids = data.draw(st.sets(st.integers(0, (1 << (preshift + minishard)) - 1), max_size=20))
    chunks = {cid: data.draw(st.binary(min_size=1, max_size=40)) for cid in ids}
    _, minis = split_chunk_ids(np.array(sorted(ids), np.uint64), preshift, minishard, 0)
    blob = encode_shard(chunks, dict(zip(sorted(ids), minis.tolist(), strict=True)), minishard)
    ctx = ts.Context()
    kv, base = _sharded(ctx, preshift, minishard, 0)
    base.write(b"0.shard", blob).result()
    for cid in range(1 << (preshift + minishard)):
        got = kv.read(struct.pack(">Q", cid)).result()
        if cid in chunks:
            assert bytes(got.value) == chunks[cid]
        else:
            assert got.state == "missing"
    assert {c: v for c, (_, v) in _parse_all(blob, minishard, preshift).items()} == chunks


def test_split_chunk_ids_matches_the_scalar_geometry():
    scale = Scale(0, "k", (640, 640, 640), (64, 64, 64), (1, 1, 1), (0, 0, 0), Sharding(2, 3, 5))
    ids = np.arange(1000, dtype=np.uint64)
    shards, minis = split_chunk_ids(ids, 2, 3, 5)
    assert [(int(s), int(m)) for s, m in zip(shards, minis, strict=True)] == [
        split_code(scale, int(i)) for i in ids
    ]


def _one_shard() -> bytes:
    return encode_shard({1: b"aa", 2: b"bbb", 9: b"c"}, {1: 0, 2: 0, 9: 1}, 1)


def test_index_errors():
    with pytest.raises(ShardFormatError, match="shard index is 31 bytes, expected 32"):
        parse_shard_index(bytes(31), 1)
    bad = struct.pack("<4Q", 10, 5, 0, 0)
    with pytest.raises(ShardFormatError, match="minishard 0 ends before it starts"):
        parse_shard_index(bad, 1)
    with pytest.raises(ShardFormatError, match="points past 2\\^40"):
        parse_shard_index(struct.pack("<4Q", 0, 1 << 41, 0, 0), 1)
    empty = parse_shard_index(bytes(32), 1)
    assert list(empty.nonempty) == [] and empty.file_size == 32


def _ms(data: bytes, **kw):
    args = {"encoding": "gzip", "index_bytes": 32, "index_start": 10_000, "max_entries": 8}
    return decode_minishard_index(data, **(args | kw))


def test_minishard_index_errors():
    good = encode_minishard_index(np.array([1, 2], np.uint64), [0, 2], [2, 3])
    mi = _ms(good)
    assert mi.chunk_ids.tolist() == [1, 2] and mi.starts.tolist() == [32, 34]
    with pytest.raises(ShardFormatError, match="not valid gzip"):
        _ms(b"not gzip at all")
    with pytest.raises(ShardFormatError, match="truncated"):
        _ms(good[:-6])
    with pytest.raises(ShardFormatError, match="bytes after the gzip stream"):
        _ms(good + b"xx")
    with pytest.raises(ShardFormatError, match="not a non-empty multiple of 24"):
        _ms(gzip.compress(bytes(25)))
    with pytest.raises(ShardFormatError, match="chunk id repeated"):
        _ms(encode_minishard_index(np.array([3, 3], np.uint64), [0, 2], [2, 3]))
    with pytest.raises(ShardFormatError, match="more than 1 chunks"):
        _ms(good, max_entries=1)
    with pytest.raises(ShardFormatError, match="runs into or past the minishard index at byte 35"):
        _ms(good, index_start=35)
    huge = np.array([[1], [0], [1 << 45]], "<u8").tobytes()
    with pytest.raises(ShardFormatError, match="above 2\\^40"):
        _ms(huge, encoding="raw")


def test_batched_errors_name_the_minishard():
    good = encode_minishard_index(np.array([1, 2], np.uint64), [0, 2], [2, 3])
    dup = encode_minishard_index(np.array([4, 4], np.uint64), [0, 2], [2, 3])
    kw = {"encoding": "gzip", "index_bytes": 32, "max_entries": 8}
    with pytest.raises(
        ShardFormatError, match=r"^minishard 3 index: chunk id repeated at entry 1$"
    ):
        decode_minishard_indices([(1, 1000, good), (3, 2000, dup)], **kw)
    with pytest.raises(
        ShardFormatError, match=r"^minishard 5 index: chunk 2 data \[34, 37\) runs into"
    ):
        decode_minishard_indices([(1, 1000, good), (5, 36, good)], **kw)
    mi, minis = decode_minishard_indices([(1, 1000, good), (3, 2000, good)], **kw)
    assert mi.chunk_ids.tolist() == [1, 2, 1, 2] and minis.tolist() == [1, 1, 3, 3]


def test_a_whole_shard_round_trips():
    blob = _one_shard()
    assert _parse_all(blob, 1, 3) == {1: (0, b"aa"), 2: (0, b"bbb"), 9: (1, b"c")}

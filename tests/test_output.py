"""The destination layer: info handling and the one-write-per-shard transaction, checked on the
real TensorStore file driver and on the GCS emulator with a request-counting proxy."""

import json
import os

import pytest
import tensorstore as ts

from dvid2ng.schemas.spec import VolumeSpec
from dvid2ng.worker.output import (
    OutputError,
    ScaleStore,
    io_context,
    kvstore_spec,
    read_info,
    write_info,
)
from tests.gcs_emulator import GcsEmulator
from tests.sharded import chunk_ids_in
from tests.test_spec import BASE


def test_info_written_once_and_never_overwritten_by_a_different_one(tmp_path):
    spec = VolumeSpec.from_json(BASE)
    dest = str(tmp_path / "vol")
    assert write_info(dest, spec.info()) is True
    assert write_info(dest, spec.info()) is False  # identical: fine, nothing written
    assert read_info(dest) == spec.info()
    other = json.loads(json.dumps(BASE))
    other["scales"][0]["resolution"] = [4, 4, 4]
    with pytest.raises(OutputError, match="exists and differs"):
        write_info(dest, VolumeSpec.from_json(other).info())
    assert read_info(dest) == spec.info()


def test_kvstore_spec_forms(tmp_path):
    assert kvstore_spec("gs://bucket/a/b") == {"driver": "gcs", "bucket": "bucket", "path": "a/b/"}
    assert kvstore_spec("memory://x")["driver"] == "memory"
    assert kvstore_spec(f"file://{tmp_path}")["path"] == f"{tmp_path}/"
    with pytest.raises(OutputError, match="unsupported destination"):
        kvstore_spec("s3://bucket/x")


@pytest.fixture()
def gcs(tmp_path, monkeypatch):
    emu = GcsEmulator(tmp_path)
    emu.create_bucket("vol")
    for k, v in emu.env().items():
        monkeypatch.setenv(k, v)
    yield emu
    emu.stop()


def test_write_shard_is_a_single_upload_and_reads_back(gcs):
    spec = VolumeSpec.from_json(BASE)
    scale = spec.scales[0]
    store = ScaleStore("gs://vol/v", scale, io_context())
    chunks = {cid: bytes([cid]) * (100 + cid) for cid in range(0, 64)}  # all in shard 0
    store.write_shard(0, chunks)
    assert dict(gcs.proxy.writes) == {"v/s0/0.shard": 1}
    for cid, data in chunks.items():
        got = store.sharded.read(cid.to_bytes(8, "big")).result()
        assert got.value == data
    assert store.shard_size(0) > sum(len(v) for v in chunks.values())


@pytest.mark.parametrize("stale", [b"", b"xyz", b"\xff" * 5000])
def test_a_stale_file_is_replaced_in_the_one_upload(gcs, stale):
    """Whatever sits where the shard goes (an interrupted attempt, garbage, a 0-byte file) is
    replaced by the commit itself: one upload, no separate delete, no merge, no error."""
    import google.cloud.storage as storage

    client = storage.Client(project="test")
    client.bucket("vol").blob("s/s0/0.shard").upload_from_string(stale)
    gcs.proxy.writes.clear()
    gcs.proxy.deletes.clear()
    store = ScaleStore("gs://vol/s", VolumeSpec.from_json(BASE).scales[0], io_context())
    store.write_shard(0, {5: b"new", 9: b"data"})
    assert dict(gcs.proxy.writes) == {"s/s0/0.shard": 1}
    assert dict(gcs.proxy.deletes) == {}
    assert chunk_ids_in(store.sharded, store.scale.bits) == {5, 9}  # not list(): tests/sharded.py
    # and a shard left with no chunks removes the stale file (one delete, no upload)
    gcs.proxy.writes.clear()
    store.write_shard(0, {})
    assert store.shard_size(0) is None and dict(gcs.proxy.writes) == {}


def test_shard_file_problem_reads_only_the_index_and_the_last_byte(gcs):
    store = ScaleStore("gs://vol/p", VolumeSpec.from_json(BASE).scales[0], io_context())
    store.write_shard(0, {cid: b"x" * 1000 for cid in range(40)})
    size = store.shard_size(0)
    gcs.proxy.requests.clear()
    assert store.shard_file_problem(0, size) is None
    reads = [r for r in gcs.proxy.requests if r[0] == "GET"]
    assert len(reads) == 2 and all(rng for _, _, rng in reads), reads
    assert "index says" in store.shard_file_problem(0, size + 1)
    assert "missing" in store.shard_file_problem(1, size)
    import google.cloud.storage as storage

    blob = storage.Client(project="test").bucket("vol").blob("p/s0/0.shard")
    blob.upload_from_string(blob.download_as_bytes()[: size - 10])
    assert "truncated" in store.shard_file_problem(0, size)
    blob.upload_from_string(b"abc")
    assert "shorter than its" in store.shard_file_problem(0, size)


def test_the_counter_sees_rewrites(gcs):
    """Control: writing chunk by chunk without a transaction rewrites the shard every time."""
    scale = VolumeSpec.from_json(BASE).scales[0]
    store = ScaleStore("gs://vol/w", scale, io_context())
    for cid in range(3):
        store.sharded.write(cid.to_bytes(8, "big"), b"x").result()
    assert gcs.proxy.writes["w/s0/0.shard"] == 3


def test_gzip_level_chunks_decode_through_the_precomputed_driver(tmp_path):
    """Chunks we gzip ourselves are read by TensorStore's precomputed driver as gzip data."""
    import numpy as np

    from dvid2ng.kernels import encode_cseg
    from dvid2ng.worker.transcode import gzip_bytes

    spec = VolumeSpec.from_json(BASE)
    dest = str(tmp_path / "vol")
    write_info(dest, spec.info())
    store = ScaleStore(dest, spec.scales[0], io_context())
    rng = np.random.default_rng(1)
    block = rng.integers(0, 5, size=(64, 64, 64), dtype=np.uint64) + np.uint64(2**63)
    store.write_shard(0, {0: gzip_bytes(encode_cseg(block), 6)})
    vol = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": kvstore_spec(dest), "scale_index": 0}
    ).result()
    got = np.asarray(vol[0:64, 0:64, 0:64, 0].read().result()).transpose(2, 1, 0)
    assert np.array_equal(got, block)
    assert os.path.exists(tmp_path / "vol/s0/0.shard")

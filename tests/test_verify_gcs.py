"""verify against gs:// on the GCS emulator: the counting proxy records every object download,
so the test sees that only byte ranges of shard files are read (shard index, minishard indices,
and the sampled chunks with --values), never a whole shard."""

from __future__ import annotations

import json

import pytest
import tensorstore as ts

from dvid2ng.dispatcher.cli import main
from dvid2ng.schemas.shard_format import parse_shard_index, shard_index_bytes
from dvid2ng.worker.output import kvstore_spec
from tests.gcs_emulator import GcsEmulator
from tests.verify_helpers import convert, make_verify_export


@pytest.fixture(scope="module")
def gcs_volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs")
    emu = GcsEmulator(root)
    mp = pytest.MonkeyPatch()
    try:
        emu.create_bucket("out")
        for k, v in emu.env().items():
            mp.setenv(k, v)
        source, _, spec, _ = make_verify_export(root)
        dest = "gs://out/volume"
        convert(source, dest, spec, root / "state")
        yield emu, source, dest, spec, root
    finally:
        mp.undo()
        emu.stop()


def _objects(dest: str) -> dict[str, bytes]:
    kv = ts.KvStore.open(kvstore_spec(dest)).result()
    return {  # object names as the proxy sees them
        "volume/" + k.decode(): bytes(kv.read(k).result().value)
        for k in kv.list().result()
        if k.endswith(b".shard")
    }


def _verify(emu, source, dest, root, *extra):
    emu.proxy.reads.clear()
    report = root / "report.json"
    code = main(
        ["verify", str(source), dest, "--no-progress", "--json-report", str(report), *extra]
    )
    return code, json.loads(report.read_text()), list(emu.proxy.reads)


def test_verify_reads_only_indices_by_byte_range(gcs_volume):
    emu, source, dest, spec, root = gcs_volume
    objects = _objects(dest)
    assert len(objects) >= 8
    code, report, reads = _verify(emu, source, dest, root)
    assert code == 0 and report["ok"]
    shard_reads = [r for r in reads if r.name.endswith(".shard")]
    assert shard_reads and all(r.range.startswith("bytes=") for r in shard_reads)
    for name, blob in objects.items():
        scale = next(s for s in spec.scales if name.startswith(f"volume/{s.key}/"))
        n = shard_index_bytes(scale.sharding.minishard_bits)
        index = parse_shard_index(blob[:n], scale.sharding.minishard_bits)
        want = n + int((index.ends - index.starts).sum())  # the index and every minishard index
        got = sum(r.nbytes for r in shard_reads if r.name == name)
        assert got == want, name
        assert got < len(blob) / 5, f"{name}: {got} of {len(blob)} bytes read"
        assert sum(1 for r in shard_reads if r.name == name) == 1 + len(index.nonempty)


def test_values_read_chunks_by_range_too(gcs_volume):
    emu, source, dest, _, root = gcs_volume
    objects = _objects(dest)
    code, report, reads = _verify(emu, source, dest, root, "--values", "2")
    assert code == 0 and all(s["values_checked"] > 0 for s in report["scales"])
    for r in reads:
        if r.name.endswith(".shard"):
            assert r.range and r.nbytes < len(objects[r.name])


def test_missing_and_truncated_shards_on_gcs(gcs_volume, tmp_path):
    emu, source, dest, _, _ = gcs_volume
    kv = ts.KvStore.open(kvstore_spec(dest)).result()
    objects = _objects(dest)
    names = sorted(n for n in objects if n.startswith("volume/8x8x8/"))
    gone, cut = names[0], names[1]
    try:
        kv.write(gone.removeprefix("volume/").encode(), None).result()
        kv.write(cut.removeprefix("volume/").encode(), objects[cut][:-9]).result()
        code, report, _ = _verify(emu, source, dest, tmp_path)
        assert code == 1
        rows = {s["name"]: s for s in report["scales"][0]["shards"]}
        assert rows[gone.rsplit("/", 1)[1]]["status"] == "missing"
        assert rows[cut.rsplit("/", 1)[1]]["status"] == "corrupt"
    finally:  # put the module's volume back for the other tests
        for n in (gone, cut):
            kv.write(n.removeprefix("volume/").encode(), objects[n]).result()


def test_a_gs_source_validates_and_verifies(gcs_volume):
    """SOURCE on gs:// too: the export listed, CSVs and records read through the storage layer
    the converter uses (pinned generations)."""
    emu, source, dest, _, root = gcs_volume
    emu.create_bucket("src")
    kv = ts.KvStore.open(kvstore_spec("gs://src/export")).result()
    for path in source.rglob("*"):
        if path.is_file():
            kv.write(str(path.relative_to(source)).encode(), path.read_bytes()).result()
    src = "gs://src/export"
    report = root / "src-report.json"
    assert (
        main(
            [
                "validate-dvid",
                src,
                "--spec",
                str(root / "spec.json"),
                "--no-progress",
                "--jobs",
                "1",
                "--json-report",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["scales"][0]["records"] > 0
    code, report, _ = _verify(emu, src, dest, root, "--values", "2")
    assert code == 0 and report["source"] == src
    assert all(s["values_checked"] > 0 for s in report["scales"])
    # a source object deleted: its shard becomes unexpected
    victim = next(k for k in kv.list().result() if k.endswith(b".arrow") and k.startswith(b"s0/"))
    kv.write(victim, None).result()
    kv.write(victim[:-6] + b".csv", None).result()
    code, report, _ = _verify(emu, src, dest, root)
    assert code == 1 and report["scales"][0]["counts"]["unexpected"] == 1

"""Each output shard is written exactly once: a whole conversion into the GCS emulator, with a
proxy counting every object upload (TensorStore's real GCS driver, real worker processes)."""

import numpy as np
import pytest

from dvid2ng.dispatcher.embedded import run_embedded
from dvid2ng.dispatcher.plan import plan_transcode
from tests.exports import make_export, read_scale_tensorstore
from tests.gcs_emulator import GcsEmulator


@pytest.fixture()
def gcs(tmp_path, monkeypatch):
    emu = GcsEmulator(tmp_path)
    emu.create_bucket("out")
    for k, v in emu.env().items():
        monkeypatch.setenv(k, v)  # spawned workers inherit it
    yield emu
    emu.stop()


def test_every_shard_uploaded_once(gcs, tmp_path):
    export = make_export(tmp_path, csv_layout="batch")
    dest = "gs://out/volume"
    plan = plan_transcode(export.source, dest, export.spec)
    summary = run_embedded(plan, workers=2, state_dir=tmp_path / "state")
    assert summary.exit_code == 0, summary.failed
    writes = dict(gcs.proxy.writes)
    shard_writes = {k: v for k, v in writes.items() if k.endswith(".shard")}
    assert writes.pop("volume/info") == 1
    assert shard_writes, "shards were written"
    assert all(v == 1 for v in shard_writes.values()), shard_writes
    assert len(shard_writes) == summary.counts["done"]
    assert set(writes) == set(shard_writes), (
        f"unexpected uploads: {set(writes) - set(shard_writes)}"
    )
    for scale, want in export.bodies.items():
        assert np.array_equal(read_scale_tensorstore(dest, scale), want)

    # a second run finds everything done and uploads nothing
    gcs.proxy.writes.clear()
    again = run_embedded(plan, workers=1, state_dir=tmp_path / "state")
    assert again.exit_code == 0 and again.skipped_finished == len(plan.tasks)
    assert dict(gcs.proxy.writes) == {}

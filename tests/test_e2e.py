"""End to end: a generated multi-shard, multi-scale DVID export through `dvid2ng run` (real
worker processes, SQLite queue and state), read back bit-exact by TensorStore and cloud-volume."""

import numpy as np
import pytest

from dvid2ng.backends import open_embedded
from dvid2ng.backends.base import ShardStatus
from dvid2ng.dispatcher.cli import main
from dvid2ng.schemas.sharding import num_shards
from tests.exports import make_export, read_scale_cloudvolume, read_scale_tensorstore


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    # Real DVID CSVs: '# schema_size=0', first row at offset 0 (formats.md §2.7.1).
    return make_export(
        tmp_path_factory.mktemp("e2e"), csv_layout="batch", dvid_schema_size_quirk=True
    )


def test_generated_export_has_what_the_test_claims(export):
    s0 = export.supervoxels[0]
    assert s0.max() >= np.uint64(2**63), "ids >= 2^63 present"
    assert (s0 == 0).any(), "background present"
    for i, scale in enumerate(export.spec.scales):
        assert any(sz % 64 for sz in scale.size), "edge chunks present"
        assert num_shards(scale) > 1
        assert len(list((export.source / f"s{i}").glob("*.arrow"))) > 1, "several shards per scale"
        csv = next((export.source / f"s{i}").glob("*.csv")).read_text().splitlines()
        assert csv[0] == "# schema_size=0"
        assert csv[2].split(",")[3] == "0", "first row at offset 0"
    assert not np.array_equal(export.bodies[0], export.supervoxels[0]), "agglomeration changes ids"


@pytest.mark.parametrize("mode", ["labels", "supervoxels"])
def test_run_reads_back_bit_exact(export, tmp_path, mode, capsys):
    dest = tmp_path / f"vol-{mode}"
    argv = [
        "run",
        str(export.source),
        str(dest),
        "--spec",
        str(export.spec_path),
        "--workers",
        "2",
        "--no-progress",
    ]
    if mode == "supervoxels":
        argv.append("--supervoxels")
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "0 failed" in err and "chunks/s" in err
    expected = export.bodies if mode == "labels" else export.supervoxels
    for scale, want in expected.items():
        got_ts = read_scale_tensorstore(str(dest), scale)
        assert got_ts.shape == want.shape
        assert np.array_equal(got_ts, want), f"TensorStore read of scale {scale} differs"
        got_cv = read_scale_cloudvolume(dest, scale)
        assert np.array_equal(got_cv, want), f"cloud-volume read of scale {scale} differs"
    # the state says every shard is done or empty, with metrics
    state_dir = dest / ".dvid2ng"
    _, state = open_embedded(state_dir)
    records = [r for r in state.list(_run_id(state_dir))]
    assert records and all(r.status in (ShardStatus.DONE, ShardStatus.EMPTY) for r in records)
    assert all(r.peak_rss_bytes > 0 and r.finished_at >= r.started_at > 0 for r in records)
    written = {f"s{r.scale}/{r.key.split('/')[1]}" for r in records if r.status == ShardStatus.DONE}
    files = {
        f"s{i}/{p.stem}"
        for i, s in enumerate(export.spec.scales)
        for p in (dest / s.key).glob("*.shard")
    }
    assert written == files, "every done shard has its file, and no other file exists"

    # re-running resumes: nothing left to do, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*.shard")}
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"({len(records)} finished before this run)" in err and "converted again" not in err
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*.shard")} == mtimes


def _run_id(state_dir):
    import json

    return json.loads((state_dir / "run.json").read_text())["run_id"]

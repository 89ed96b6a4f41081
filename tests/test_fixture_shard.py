"""The real mCNS scale-1 shard written by DVID converts, and reads back through TensorStore
equal to its decoded blocks (agglomerated and supervoxel modes, every CSV layout, no CSV)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from dvid2ng.backends.base import ShardStatus
from dvid2ng.dispatcher.cli import main
from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
from dvid2ng.kernels import decode_dvid_block
from dvid2ng.schemas.sharding import shard_bounds, shard_of_dvid_file
from dvid2ng.schemas.spec import VolumeSpec
from dvid2ng.worker.output import kvstore_spec

STEM = "30720_24576_28672"
CSV_LAYOUTS = {
    "legacy": f"{STEM}.csv",
    "offsets": f"{STEM}-offsets.csv",
    "batch": f"{STEM}-newformat.csv",
    "none": None,
}


def _export_dir(tmp: Path, fixtures: Path, csv_name: str | None) -> Path:
    """SOURCE/s1/ with the fixture linked in (the fixture itself is never copied)."""
    s1 = tmp / "export" / "s1"
    s1.mkdir(parents=True)
    os.symlink(fixtures / "mcns-s1-shard" / f"{STEM}.arrow", s1 / f"{STEM}.arrow")
    if csv_name:
        os.symlink(fixtures / "mcns-s1-shard" / csv_name, s1 / f"{STEM}.csv")
    return tmp / "export"


def _expected_chunks(arrow: Path, supervoxels: bool):
    with ExportFileReader(arrow, None) as reader:
        for rec in reader:
            block = decompress_block(rec, str(arrow))
            yield (
                (rec.x, rec.y, rec.z),
                decode_dvid_block(block, None if supervoxels else rec.labels),
            )


@pytest.mark.parametrize("layout", list(CSV_LAYOUTS))
@pytest.mark.parametrize("mode", ["labels", "supervoxels"])
def test_mcns_shard_converts_and_reads_back(shared_fixtures, tmp_path, layout, mode):
    spec_path = shared_fixtures / "volume-specs/mcns-export-specs.json"
    source = _export_dir(tmp_path, shared_fixtures, CSV_LAYOUTS[layout])
    dest = tmp_path / "vol"
    argv = [
        "run",
        str(source),
        str(dest),
        "--spec",
        str(spec_path),
        "--workers",
        "1",
        "--no-progress",
    ]
    if mode == "supervoxels":
        argv.append("--supervoxels")
    assert main(argv) == 0

    spec = VolumeSpec.load(spec_path)
    s1 = spec.scales[1]
    shard = shard_of_dvid_file(s1, STEM)
    assert (dest / s1.key / f"{shard:04x}.shard").exists()
    vol = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": kvstore_spec(str(dest)), "scale_index": 1}
    ).result()
    expected = dict(
        _expected_chunks(shared_fixtures / "mcns-s1-shard" / f"{STEM}.arrow", mode == "supervoxels")
    )
    assert len(expected) == 258
    lo, hi = shard_bounds(s1, shard)
    coords = np.array(list(expected))
    # every chunk in the records' bounding box (exported or not) reads back as expected
    for cx in range(coords[:, 0].min(), coords[:, 0].max() + 1):
        for cy in range(coords[:, 1].min(), coords[:, 1].max() + 1):
            for cz in range(coords[:, 2].min(), coords[:, 2].max() + 1):
                assert all(lo[d] <= c < hi[d] for d, c in enumerate((cx, cy, cz)))
                ex, ey, ez = s1.chunk_extent((cx, cy, cz))
                x0, y0, z0 = cx * 64, cy * 64, cz * 64
                got = np.asarray(
                    vol[x0 : x0 + ex, y0 : y0 + ey, z0 : z0 + ez, 0].read().result()
                ).transpose(2, 1, 0)
                want = expected.get((cx, cy, cz))
                if want is None:
                    assert not got.any(), f"chunk {(cx, cy, cz)} was not exported but has data"
                else:
                    assert np.array_equal(got, want[:ez, :ey, :ex]), f"chunk {(cx, cy, cz)} differs"


def test_mcns_state_records_metrics(shared_fixtures, tmp_path):
    from dvid2ng.backends import open_embedded

    source = _export_dir(tmp_path, shared_fixtures, CSV_LAYOUTS["batch"])
    dest = tmp_path / "vol"
    spec_path = shared_fixtures / "volume-specs/mcns-export-specs.json"
    assert (
        main(
            [
                "run",
                str(source),
                str(dest),
                "--spec",
                str(spec_path),
                "--no-progress",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    run_id = json.loads((dest / ".dvid2ng/run.json").read_text())["run_id"]
    _, state = open_embedded(dest / ".dvid2ng")
    (rec,) = state.list(run_id)
    assert rec.status == ShardStatus.DONE
    assert rec.chunks_expected == 258 and rec.chunks_done == 258
    assert 0 < rec.chunks_written <= 258
    assert rec.bytes_written == (dest / "16x16x16" / f"{rec.shard:04x}.shard").stat().st_size
    assert rec.peak_rss_bytes > 10 * 2**20
    assert rec.attempts == 1

"""validate-dvid and verify on the real DVID-written mCNS scale-1 shard (every CSV layout, no
CSV): the export validates, its conversion verifies with voxel comparisons, a lost chunk is
found. The fixture is linked into a temporary export folder, never copied."""

from __future__ import annotations

import json

import pytest

from dvid2ng.dispatcher.cli import main
from tests.test_fixture_shard import CSV_LAYOUTS, _export_dir
from tests.verify_helpers import read_shard, write_shard


@pytest.mark.parametrize("layout", list(CSV_LAYOUTS))
def test_real_shard_validates_converts_and_verifies(shared_fixtures, tmp_path, layout, capsys):
    spec_path = shared_fixtures / "volume-specs/mcns-export-specs.json"
    source = _export_dir(tmp_path, shared_fixtures, CSV_LAYOUTS[layout])
    report = tmp_path / "v.json"
    assert (
        main(
            [
                "validate-dvid",
                str(source),
                "--spec",
                str(spec_path),
                "--no-progress",
                "--json-report",
                str(report),
            ]
        )
        == 0
    )
    s1 = json.loads(report.read_text())["scales"][0]
    assert s1["records"] == s1["decoded"] == 258 and s1["problems"] == []
    dest = tmp_path / "vol"
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
    verify = [
        "verify",
        str(source),
        str(dest),
        "--scales",
        "1",
        "--no-progress",
        "--json-report",
        str(report),
    ]
    assert main([*verify, "--values", "258"]) == 0, capsys.readouterr()
    scale = json.loads(report.read_text())["scales"][0]
    assert scale["counts"]["present"] == 1 and scale["values_checked"] == 258
    assert scale["source_chunks"] == scale["output_chunks"] == 258
    # one chunk lost from the output shard is found
    (shard,) = (dest / "16x16x16").glob("*.shard")
    chunks = read_shard(shard, 6, 9)
    del chunks[sorted(chunks)[100]]
    from dvid2ng.schemas.spec import VolumeSpec

    write_shard(shard, chunks, VolumeSpec.load(spec_path), 1)
    assert main(verify) == 1
    problems = json.loads(report.read_text())["scales"][0]["shards"][0]["problems"]
    assert "1 source chunks with data are missing" in problems[0]

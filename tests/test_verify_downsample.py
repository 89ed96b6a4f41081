"""verify on a scale built by downsampling (no export files): checked against its parent scale.
The child scale is written by TensorStore's own `mode` downsampling of the converted s0."""

from __future__ import annotations

import json
import shutil

import pytest
import tensorstore as ts

from dvid2ng.dispatcher.cli import main
from dvid2ng.schemas.sharding import compressed_morton_code
from dvid2ng.worker.output import kvstore_spec
from tests.verify_helpers import (
    convert,
    make_verify_export,
    read_shard,
    shard_file,
    write_shard,
)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyramid")
    full, _, spec, _ = make_verify_export(root / "full")
    # keep s0 only: s1 is built by downsampling, as the pyramid step does
    source = root / "export"
    shutil.copytree(full / "s0", source / "s0")
    shutil.copy(full / "export.log", source / "export.log")
    dest = root / "volume"
    convert(source, dest, spec, dest / ".dvid2ng")
    s0 = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": kvstore_spec(str(dest)), "scale_index": 0}
    ).result()
    s1 = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": kvstore_spec(str(dest)),
            "scale_index": 1,
        },
        write=True,
    ).result()
    with ts.Transaction() as txn:
        s1.with_transaction(txn).write(
            ts.downsample(s0, [2, 2, 2, 1], method="mode").read().result()
        ).result()
    return source, dest, spec


def _run(capsys, src, dst, *extra):
    report = dst.parent / "ds-report.json"
    code = main(
        ["verify", str(src), str(dst), "--no-progress", "--json-report", str(report), *extra]
    )
    out = capsys.readouterr()
    return code, json.loads(report.read_text()), out.out + out.err


def test_downsampled_scale_verifies_against_its_parent(pyramid, capsys):
    source, dest, _ = pyramid
    code, report, text = _run(capsys, source, dest, "--values", "4")
    assert code == 0, text
    s1 = report["scales"][1]
    assert s1["kind"] == "downsample" and s1["counts"]["present"] >= 1
    assert s1["values_checked"] > 0
    assert s1["output_chunks"] > 0 and s1["output_chunks"] <= s1["source_chunks"]


def test_faults_of_a_downsampled_scale(pyramid, tmp_path, capsys):
    source, dest0, spec = pyramid
    dest = tmp_path / "volume"
    shutil.copytree(dest0, dest)
    gone = shard_file(dest, spec, 1, (0, 0, 0))
    kept = read_shard(gone, 1, 2)
    gone.unlink()
    # an s1 shard where s0 has no data (x >= 256 voxels at s0 is background)
    stray = shard_file(dest, spec, 1, (2, 0, 0))
    write_shard(
        stray,
        {compressed_morton_code((2, 0, 0), spec.scales[1].bits): next(iter(kept.values()))},
        spec,
        1,
    )
    code, report, text = _run(capsys, source, dest)
    assert code == 1
    rows = {s["name"]: s for s in report["scales"][1]["shards"]}
    assert rows[gone.name]["status"] == "missing"
    assert "parent shard(s)" in rows[gone.name]["problems"][0]
    assert rows[stray.name]["status"] == "unexpected"
    assert f"s1/{gone.name}" in text


def test_wrong_values_in_a_downsampled_scale(pyramid, tmp_path, capsys):
    source, dest0, _ = pyramid
    dest = tmp_path / "volume"
    shutil.copytree(dest0, dest)
    s1 = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": kvstore_spec(str(dest)),
            "scale_index": 1,
        },
        write=True,
    ).result()
    with ts.Transaction() as txn:
        s1.with_transaction(txn)[0:64, 0:64, 0:64, 0] = 12345
    code, _, _ = _run(capsys, source, dest)
    assert code == 0, "indices alone cannot see it"
    code, report, _ = _run(capsys, source, dest, "--values", "64")
    assert code == 1
    problems = [p for s in report["scales"][1]["shards"] for p in s["problems"]]
    assert any(
        "values differ in chunk (0, 0, 0)" in p and "mode vote of the parent" in p for p in problems
    )


def test_a_pyramid_built_with_the_dvid_rule(tmp_path, capsys):
    """`run --downres 1 --downsample-method dvid` records the rule; verify --values recomputes
    with it (and TensorStore's mode would disagree wherever the rules differ)."""
    import numpy as np

    from dvid2ng.kernels.downsample import downsample_labels
    from tests.exports import read_scale_tensorstore

    full, spec_path, _, _ = make_verify_export(tmp_path / "full", checker_holes=True)
    source = tmp_path / "export"
    shutil.copytree(full / "s0", source / "s0")
    dest = tmp_path / "volume"
    run = ["run", str(source), str(dest), "--spec", str(spec_path), "--no-progress"]
    assert main([*run, "--scales", "0", "--downres", "1", "--downsample-method", "dvid"]) == 0
    capsys.readouterr()
    code, report, text = _run(capsys, source, dest, "--values", "64")
    assert code == 0, text
    assert any("dvid rule (from" in n for n in report["scales"][1]["notes"])
    s0 = read_scale_tensorstore(str(dest), 0)
    assert not np.array_equal(downsample_labels(s0, "mode"), downsample_labels(s0, "dvid"))
    code, report, _ = _run(capsys, source, dest, "--values", "64", "--downsample-method", "mode")
    assert code == 1, "TensorStore's mode disagrees in the checkered corner"
    problems = [p for s in report["scales"][1]["shards"] for p in s["problems"]]
    assert any("values differ in chunk (0, 0, 0)" in p for p in problems)

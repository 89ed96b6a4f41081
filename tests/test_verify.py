"""`dvid2ng verify` on real conversions (our export writer, real worker processes, TensorStore
output) and on the faults it must name: a deleted shard, a truncated one, an all-background
source file, an output shard with no source, lost and foreign chunks, wrong voxel values."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dvid2ng.dispatcher.cli import main
from dvid2ng.schemas.sharding import compressed_morton_code
from tests.verify_helpers import (
    convert,
    make_verify_export,
    read_shard,
    shard_file,
    write_background_file,
    write_shard,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    source, spec_path, spec, bodies = make_verify_export(root)
    dest = root / "volume"
    convert(source, dest, spec, dest / ".dvid2ng")
    return root, source, dest, spec_path, spec, bodies


@pytest.fixture()
def copy(converted, tmp_path):
    """A private copy of the export and the volume, free to damage."""
    _root, source, dest, _spec_path, spec, _ = converted
    src, dst = tmp_path / "export", tmp_path / "volume"
    shutil.copytree(source, src)
    shutil.copytree(dest, dst)
    return src, dst, spec


def _verify(capsys, src, dst, *extra):
    report = dst.parent / "report.json"
    code = main(
        ["verify", str(src), str(dst), "--no-progress", "--json-report", str(report), *extra]
    )
    out = capsys.readouterr()
    return code, json.loads(report.read_text()) if report.exists() else None, out.out + out.err


def _shards(report, scale):
    return {s["name"]: s for s in report["scales"][scale]["shards"]}


def test_a_converted_export_verifies_clean(converted, capsys):
    _, source, dest, _, spec, _ = converted
    code, report, text = _verify(capsys, source, dest, "--values", "3")
    assert code == 0, text
    assert report["ok"] and "complete" in text
    for s, scale in enumerate(report["scales"]):
        assert scale["kind"] == "transcode"
        assert scale["counts"]["present"] == len(list((source / f"s{s}").glob("*.arrow")))
        assert scale["counts"]["missing"] == scale["counts"]["corrupt"] == 0
        assert scale["source_chunks"] == scale["output_chunks"] > 0
        assert scale["values_checked"] >= scale["counts"]["present"]
    # no --values: only shard indices and minishard indices are read, never chunk data
    code, report, _ = _verify(capsys, source, dest)
    for s, scale in enumerate(report["scales"]):
        files = list((dest / spec.scales[s].key).glob("*.shard"))
        assert scale["bytes_read"] < sum(f.stat().st_size for f in files) / 10


def test_each_fault_is_named(copy, capsys):
    src, dst, spec = copy
    deleted = shard_file(dst, spec, 0, (0, 0, 0))
    deleted.unlink()
    truncated = shard_file(dst, spec, 0, (2, 0, 0))
    truncated.write_bytes(truncated.read_bytes()[:-7])
    index_cut = shard_file(dst, spec, 1, (0, 0, 0))
    index_cut.write_bytes(index_cut.read_bytes()[:20])
    # an output shard where the source is all background (x >= 256 voxels): no source file
    stray = shard_file(dst, spec, 0, (4, 2, 0))
    cid = compressed_morton_code((4, 2, 0), spec.scales[0].bits)
    some_chunk = next(iter(read_shard(shard_file(dst, spec, 0, (0, 2, 0)), 1, 2).values()))
    write_shard(stray, {cid: some_chunk}, spec, 0)

    code, report, text = _verify(capsys, src, dst)
    assert code == 1 and not report["ok"]
    s0, s1 = _shards(report, 0), _shards(report, 1)
    assert s0[deleted.name]["status"] == "missing"
    assert "has data" in s0[deleted.name]["problems"][0]
    assert s0[deleted.name]["source"] == "s0/0_0_0.arrow"
    assert s0[truncated.name]["status"] == "corrupt"
    assert "truncated" in s0[truncated.name]["problems"][0]
    assert s1[index_cut.name]["status"] == "corrupt"
    assert "shard index" in s1[index_cut.name]["problems"][0]
    assert s0[stray.name]["status"] == "unexpected"
    assert "no source file" in s0[stray.name]["problems"][0]
    bad = {n for n, s in s0.items() if not s["ok"]} | {n for n, s in s1.items() if not s["ok"]}
    assert bad == {deleted.name, truncated.name, stray.name, index_cut.name}
    for name in (deleted.name, truncated.name, stray.name):
        assert f"s0/{name}" in text, "the table names every bad shard"


def test_an_all_background_source_file_is_empty_source_not_a_gap(copy, capsys):
    src, dst, spec = copy
    # DVID before 2026-03-27 wrote files of all-zero blocks; no output shard is expected
    write_background_file(src / "s0" / "256_0_0.arrow", [(4, 0, 0), (4, 1, 0), (4, 1, 1)])
    code, report, text = _verify(capsys, src, dst)
    assert code == 0, text
    row = _shards(report, 0)[shard_file(dst, spec, 0, (4, 0, 0)).name]
    assert row["status"] == "empty-source" and row["zero_chunks"] == 3
    assert report["scales"][0]["counts"]["empty-source"] == 1
    # the same file with one block holding data is a real gap
    write_background_file(src / "s0" / "256_0_0.arrow", [(4, 0, 0)], mixed_stale=False)
    from dvid2ng.dvidexport.writer import write_export_file

    block = b"\x08\x00\x00\x00" * 3 + b"\x01\x00\x00\x00" + (5).to_bytes(8, "little")
    write_export_file(
        src / "s0" / "256_0_0.arrow", src / "s0" / "256_0_0.csv", [(4, 0, 0, [5], [5], block)]
    )
    code, report, _ = _verify(capsys, src, dst)
    assert code == 1
    row = _shards(report, 0)[shard_file(dst, spec, 0, (4, 0, 0)).name]
    assert row["status"] == "missing" and "(4, 0, 0)" in row["problems"][0]


def test_a_lost_chunk_inside_a_present_shard(copy, capsys):
    src, dst, spec = copy
    path = shard_file(dst, spec, 0, (0, 0, 2))
    chunks = read_shard(path, 1, 2)
    del chunks[sorted(chunks)[1]]
    write_shard(path, chunks, spec, 0)
    code, report, _text = _verify(capsys, src, dst)
    assert code == 1
    row = _shards(report, 0)[path.name]
    assert row["status"] == "present"
    assert row["output_chunks"] == row["source_chunks"] - 1
    assert "1 source chunks with data are missing from the output shard" in row["problems"][0]


def test_an_output_chunk_without_a_source_record(copy, capsys):
    from dvid2ng.dvidexport.reader import ExportFileReader
    from dvid2ng.dvidexport.writer import write_export_file

    src, dst, spec = copy
    arrow = src / "s0" / "0_128_0.arrow"
    with ExportFileReader(arrow) as r:
        records = list(r)
    dropped = records.pop(3)
    write_export_file(arrow.with_name("new.arrow"), arrow.with_name("new.csv"), records)
    arrow.with_name("new.arrow").replace(arrow)
    arrow.with_name("new.csv").replace(arrow.with_suffix(".csv"))
    code, report, _ = _verify(capsys, src, dst)
    assert code == 1
    row = _shards(report, 0)[shard_file(dst, spec, 0, dropped.chunk).name]
    assert (
        f"1 output chunks have no source record (first chunk {dropped.chunk}" in row["problems"][0]
    )


def test_values_catch_what_indices_cannot(copy, capsys):
    src, dst, spec = copy
    path = shard_file(dst, spec, 0, (0, 2, 0))
    chunks = read_shard(path, 1, 2)
    ids = sorted(chunks)
    chunks[ids[0]], chunks[ids[1]] = chunks[ids[1]], chunks[ids[0]]  # same ids, wrong data
    write_shard(path, chunks, spec, 0)
    code, _, text = _verify(capsys, src, dst)
    assert "complete" in text
    assert code == 0, "the indices are consistent: only values can tell"
    code, report, _text = _verify(capsys, src, dst, "--values", "64")
    assert code == 1
    problems = _shards(report, 0)[path.name]["problems"]
    assert sum("values differ in chunk" in p for p in problems) == 2, problems


def test_label_mode_from_the_run_state(converted, tmp_path, capsys):
    _, source, _, _, spec, _ = converted
    dest = tmp_path / "sv"
    convert(source, dest, spec, dest / ".dvid2ng", label_mode="supervoxels")
    code, report, text = _verify(capsys, source, dest, "--values", "2")
    assert code == 0, text
    assert report["label_mode"] == "supervoxels" and "from" in text
    code, report, _ = _verify(capsys, source, dest, "--values", "2", "--labels")
    assert code == 1, "bodies differ from supervoxels"


def test_bad_arguments_exit_2(copy, tmp_path, capsys):
    src, dst, _ = copy
    assert main(["verify", str(src), str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "info does not exist" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "no-export"), str(dst), "--no-progress"]) == 2
    assert main(["verify", str(src), str(dst), "--scales", "5", "--no-progress"]) == 2
    assert main(["verify", str(src), str(dst), "--z-compress", "1", "--no-progress"]) == 2
    assert "makes scale 0 chunks of [64, 64, 32]" in capsys.readouterr().err


def test_a_stray_file_is_a_note(copy, capsys):
    src, dst, spec = copy
    (dst / spec.scales[0].key / "notes.txt").write_text("hello")
    code, report, _text = _verify(capsys, src, dst)
    assert code == 0
    assert any("notes.txt" in n for n in report["scales"][0]["notes"])
    assert np.all([s["ok"] for s in report["scales"][0]["shards"]])

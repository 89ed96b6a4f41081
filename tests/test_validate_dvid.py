"""`dvid2ng validate-dvid`: a good export passes; DVID's file-name collision for non-cubic
shards, an appended second stream, CSV/Arrow disagreement, duplicate chunks, corrupt blocks,
label lists that do not match the block table and two files for one shard are each named."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import shutil
import tracemalloc

import numpy as np
import pytest

from dvid2ng.dispatcher import scan_progress
from dvid2ng.dispatcher.cli import main
from dvid2ng.dispatcher.validate import validate_file
from dvid2ng.dvidexport.reader import ExportFile, ExportFileReader, list_export
from dvid2ng.dvidexport.synthetic import synthetic_volume
from dvid2ng.dvidexport.writer import write_export, write_export_file
from dvid2ng.schemas.placement import naming_collision_risk
from dvid2ng.schemas.sharding import shard_name, shard_of_dvid_file, shard_shape
from dvid2ng.schemas.spec import VolumeSpec
from tests.verify_helpers import VERIFY_SPEC, make_verify_export


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    source, spec_path, _, _ = make_verify_export(root)
    return source, spec_path


@pytest.fixture()
def export(good, tmp_path):
    source, spec_path = good
    shutil.copytree(source, tmp_path / "export")
    return tmp_path / "export", spec_path


def _validate(capsys, source, spec_path, *extra):
    report = source.parent / "validate.json"
    code = main(
        [
            "validate-dvid",
            str(source),
            "--spec",
            str(spec_path),
            "--no-progress",
            "--json-report",
            str(report),
            *extra,
        ]
    )
    out = capsys.readouterr()
    return code, json.loads(report.read_text()) if report.exists() else None, out.out + out.err


def _problems(report):
    return [p for s in report["scales"] for p in s["problems"]]


def test_a_good_export_passes(good, capsys):
    source, spec_path = good
    code, report, text = _validate(capsys, source, spec_path)
    assert code == 0 and report["ok"], text
    export = list_export(source)
    for s, scale in enumerate(report["scales"]):
        n = sum(len(ExportFileReader(f.arrow).coordinates()) for f in export[s])
        assert scale["records"] == scale["decoded"] == n
        assert all(f["complete"] and f["shard_name"] for f in scale["file_reports"])
    code, report, _ = _validate(capsys, source, spec_path, "--sample", "2", "--jobs", "2")
    assert code == 0
    for scale in report["scales"]:
        assert all(f["decoded"] == min(2, f["records"]) for f in scale["file_reports"])


def _non_cubic_spec() -> dict:
    # grid 8x8x4: bits 3+3+2; preshift 2 + minishard 2 = 4 bits (not a multiple of 3), so
    # shards are 4x2x2 chunks while DVID names files on cubes of 4 chunks
    spec = copy.deepcopy(VERIFY_SPEC)
    s0 = spec["scales"][0]
    s0.update(size=[512, 512, 256])
    s0["sharding"].update(preshift_bits=2, minishard_bits=2, shard_bits=4)
    spec["scales"] = [s0]
    return spec


def test_dvid_file_name_collision_of_non_cubic_shards(tmp_path, capsys):
    spec_json = _non_cubic_spec()
    spec = VolumeSpec.from_json(spec_json)
    scale = spec.scales[0]
    assert shard_shape(scale) == (4, 2, 2)
    assert naming_collision_risk(scale)
    vol = synthetic_volume((256, 512, 512), n_labels=20, seed=2)
    # our writer names and groups files exactly as DVID does (dvid_file_stem): 0_0_0 also
    # receives the chunks of the shards above it in y and z
    summary = write_export(tmp_path / "export", spec, {0: vol}, seed=2)
    collided = [f for f in summary.files[0] if len(f.shards) > 1]
    assert collided, "the generated export really has a colliding file"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec_json))
    code, report, text = _validate(capsys, tmp_path / "export", spec_path)
    assert code == 1
    assert "file-name collisions possible" in text
    f = collided[0]
    problems = [p for p in _problems(report) if p["file"] == f"s0/{f.stem}.arrow"]
    assert problems and problems[0]["kind"] == "collision"
    msg = problems[0]["message"]
    named = shard_of_dvid_file(scale, f.stem)
    assert f"stands for output shard {shard_name(scale, named)}" in msg
    for other in set(f.shards) - {named}:
        assert f"shard {shard_name(scale, other)}" in msg
    assert "preshift_bits + minishard_bits is not a multiple of 3" in msg
    # the conversion planner refuses the spec for the same reason (nothing started)
    run = ["run", str(tmp_path / "export"), str(tmp_path / "vol"), "--spec", str(spec_path)]
    assert main([*run, "--no-progress", "--workers", "1"]) == 2
    assert "cannot be told apart" in capsys.readouterr().err


def _rewrite(arrow, edit, **kw):
    """Rewrite an export file through our writer after `edit(records)`."""
    with ExportFileReader(arrow) as r:
        recs = [dataclasses.replace(rec, block_zstd=bytes(rec.block_zstd)) for rec in r]
    recs = edit(recs)
    tmp = arrow.with_name("tmp.arrow")
    write_export_file(tmp, tmp.with_suffix(".csv"), recs, **kw)
    tmp.replace(arrow)
    tmp.with_suffix(".csv").replace(arrow.with_suffix(".csv"))


def test_each_export_fault_is_named(export, capsys):
    source, spec_path = export
    s0 = source / "s0"
    # 1. a second stream appended (DVID re-export into a non-empty directory)
    appended = s0 / "0_0_0.arrow"
    appended.write_bytes(appended.read_bytes() * 2)
    # 2. the CSV index lacks a chunk the Arrow file holds
    csv = s0 / "128_0_0.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    # 3. a duplicate chunk, in the Arrow file (no CSV) and in a CSV index
    _rewrite(s0 / "0_128_0.arrow", lambda recs: [*recs, recs[0]])
    (s0 / "0_128_0.csv").unlink()
    _rewrite(s0 / "128_0_128.arrow", lambda recs: [*recs, recs[0]])

    # 4. a corrupt zstd frame and 5. label lists longer than the block table
    def damage(recs):
        recs[1] = dataclasses.replace(recs[1], block_zstd=recs[1].block_zstd[:-4])
        lab = np.append(recs[2].labels, np.uint64(5))
        recs[2] = dataclasses.replace(
            recs[2], labels=lab, supervoxels=np.append(recs[2].supervoxels, np.uint64(5))
        )
        return recs

    _rewrite(s0 / "128_128_0.arrow", damage)
    # 6. a second file standing for the same shard as 0_0_128
    shutil.copy(s0 / "0_0_128.arrow", s0 / "64_0_128.arrow")
    shutil.copy(s0 / "0_0_128.csv", s0 / "64_0_128.csv")

    code, report, text = _validate(capsys, source, spec_path)
    assert code == 1
    by_file = {}
    for p in _problems(report):
        by_file.setdefault(p["file"], []).append(p)
    assert by_file["s0/0_0_0.arrow"][0]["kind"] == "format"
    assert "exported twice" in by_file["s0/0_0_0.arrow"][0]["message"]
    assert "not in the CSV index s0/128_0_0.csv" in by_file["s0/128_0_0.arrow"][0]["message"]
    assert "chunk appears twice in the Arrow file" in by_file["s0/0_128_0.arrow"][0]["message"]
    dup_csv = by_file["s0/128_0_128.arrow"][0]["message"]
    assert dup_csv.startswith("s0/128_0_128.csv line ") and "chunk listed twice" in dup_csv
    kinds = {p["kind"]: p for p in by_file["s0/128_128_0.arrow"]}
    assert "zstd" in kinds["decode"]["message"] and kinds["decode"]["chunk"]
    assert "label table has" in kinds["table"]["message"]
    dup = [p for p in _problems(report) if p["kind"] == "duplicate-shard"]
    assert dup and "s0/0_0_128.arrow" in dup[0]["file"] and "s0/64_0_128.arrow" in dup[0]["file"]
    for name in ("0_0_0", "128_0_0", "0_128_0", "128_128_0"):
        assert f"s0/{name}.arrow" in text


def test_bad_arguments_exit_2(export, tmp_path, capsys):
    source, spec_path = export
    assert main(["validate-dvid", str(tmp_path / "none"), "--spec", str(spec_path)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["validate-dvid", str(source), "--spec", str(bad)]) == 2
    assert main(["validate-dvid", str(source), "--spec", str(spec_path), "--scales", "4"]) == 2
    assert main(["validate-dvid", str(source), "--spec", str(spec_path), "--z-compress", "3"]) == 2
    assert "makes scale 0 chunks of [64, 64, 16]" in capsys.readouterr().err


def test_progress_lines_without_a_terminal(good, capsys, monkeypatch):
    source, spec_path = good
    monkeypatch.setattr(scan_progress, "LINE_EVERY_S", 0.0)
    assert main(["validate-dvid", str(source), "--spec", str(spec_path), "--jobs", "1"]) == 0
    err = capsys.readouterr().err
    assert "validating:" in err and "chunks" in err


def test_memory_stays_flat_with_sampling(tmp_path):
    """One pass, one record batch at a time: memory does not grow with the file."""
    rng = np.random.default_rng(0)
    block = rng.bytes(12_000)  # never a valid block: sampling decodes (and reports) only 3
    spec = VolumeSpec.from_json(VERIFY_SPEC)
    peaks = {}
    for n in (1000, 3000):
        arrow = tmp_path / f"s0/{n}" / "0_0_0.arrow"
        arrow.parent.mkdir(parents=True)
        recs = [
            (i % 64, (i // 64) % 64, i // 4096, [1, 2], [1, 2], i.to_bytes(4, "little") + block)
            for i in range(n)
        ]
        write_export_file(arrow, arrow.with_suffix(".csv"), recs, zstd_level=1)
        ef = ExportFile(0, "0_0_0", arrow, arrow.with_suffix(".csv"), arrow.stat().st_size, 0)
        gc.collect()
        tracemalloc.start()
        rep = validate_file(ef, spec.scales[0], 0, 3, 0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert rep.records == n and rep.decoded == 3 and rep.problem_counts["decode"] == 3
        peaks[n] = (peak, arrow.stat().st_size)
    (small, small_size), (big, big_size) = peaks[1000], peaks[3000]
    assert big_size > 2.9 * small_size
    assert big < small + 1024 * 1024, peaks  # what grows: the CSV index and the seen-chunk set
    assert big_size > 4 * big

"""Bad input fails its shard with file, chunk and cause, writes nothing of that shard, lets the
other shards finish, and a re-run after the fix resumes (done shards are not rewritten)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dvid2ng.backends import open_embedded
from dvid2ng.backends.base import ShardStatus, counts_by_status
from dvid2ng.dispatcher.cli import main
from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
from dvid2ng.dvidexport.writer import write_export_file
from dvid2ng.schemas.sharding import compressed_morton_code, shard_bounds, shard_of_dvid_file
from tests.exports import make_export, read_scale_tensorstore


@pytest.fixture(scope="module")
def clean_export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("fail"), csv_layout="batch")


@pytest.fixture()
def export(clean_export, tmp_path):
    """A private copy each test may damage."""
    shutil.copytree(clean_export.source, tmp_path / "export")
    clean_export.source_copy = tmp_path / "export"
    return clean_export


def _records(arrow: Path):
    with ExportFileReader(arrow, None) as r:
        for rec in r:
            yield (
                rec.x,
                rec.y,
                rec.z,
                rec.labels,
                rec.supervoxels,
                bytes(decompress_block(rec, str(arrow))),
            )


def _rewrite(arrow: Path, mutate) -> tuple[int, int, int]:
    """Rewrite one export file with the second record's DVID block changed by `mutate`."""
    recs = list(_records(arrow))
    x, y, z, labels, svs, block = recs[1]
    recs[1] = (x, y, z, labels, svs, mutate(block))
    write_export_file(arrow, arrow.with_suffix(".csv"), recs, csv_layout="batch")
    return (x, y, z)


def _bad_index(block: bytes) -> bytes:
    """Point the first sub-block's palette at a label the table does not have (or, for a solid
    block, claim more labels than the buffer holds)."""
    n = int.from_bytes(block[12:16], "little")
    if n <= 1:
        return block[:12] + (1000).to_bytes(4, "little") + block[16:]
    at = 16 + 8 * n + 2 * 512
    return block[:at] + b"\xff\xff\xff\x7f" + block[at + 4 :]


def _run(source, dest, spec_path):
    return main(
        ["run", str(source), str(dest), "--spec", str(spec_path), "--workers", "2", "--no-progress"]
    )


def _state(dest):
    run_id = json.loads((dest / ".dvid2ng/run.json").read_text())["run_id"]
    return run_id, open_embedded(dest / ".dvid2ng")[1]


def _biggest_s0_file(source: Path) -> Path:
    return max((source / "s0").glob("*.arrow"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize(
    ("name", "mutate", "cause"),
    [
        ("truncated block", lambda b: b[: len(b) // 2], "DVID block truncated"),
        ("palette index out of range", lambda b: _bad_index(b), "palette index 2147483647"),
        ("zero labels", lambda b: b[:12] + b"\0\0\0\0" + b[16:], "label table has 0 entries"),
    ],
)
def test_corrupt_block_fails_only_its_shard_then_resume(
    export, tmp_path, name, mutate, cause, capsys
):
    source, dest = export.source_copy, tmp_path / "vol"
    arrow = _biggest_s0_file(source)
    original = arrow.read_bytes(), arrow.with_suffix(".csv").read_bytes()
    chunk = _rewrite(arrow, mutate)
    assert _run(source, dest, export.spec_path) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and arrow.name in err

    run_id, state = _state(dest)
    counts = counts_by_status(state.summary(run_id))
    assert counts[ShardStatus.FAILED] == 1
    assert counts[ShardStatus.DONE] + counts[ShardStatus.EMPTY] == len(state.list(run_id)) - 1
    (failed,) = state.list(run_id, status=ShardStatus.FAILED)
    assert failed.error["file"].endswith(arrow.name)
    assert tuple(failed.error["chunk"]) == chunk
    assert cause in failed.error["cause"]
    assert failed.error["kind"] == "input"
    scale = export.spec.scales[0]
    shard = shard_of_dvid_file(scale, arrow.stem)
    assert failed.shard == shard
    assert not list((dest / scale.key).glob(f"{failed.key.split('/')[1]}.shard")), (
        "nothing of the failed shard written"
    )
    assert main(["status", str(dest)]) == 1

    # fix the file and re-run: only the failed shard is converted again
    arrow.write_bytes(original[0])
    arrow.with_suffix(".csv").write_bytes(original[1])
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*.shard")}
    assert _run(source, dest, export.spec_path) == 0
    for p, m in mtimes.items():
        assert p.stat().st_mtime_ns == m, f"{p} was rewritten"
    for s, want in export.bodies.items():
        assert np.array_equal(read_scale_tensorstore(str(dest), s), want)


def test_truncated_arrow_file_fails_its_shard(export, tmp_path):
    source, dest = export.source_copy, tmp_path / "vol"
    arrow = _biggest_s0_file(source)
    with open(arrow, "r+b") as f:
        f.truncate(arrow.stat().st_size * 2 // 3)
    assert _run(source, dest, export.spec_path) == 1
    run_id, state = _state(dest)
    (failed,) = state.list(run_id, status=ShardStatus.FAILED)
    assert failed.error["file"].endswith(arrow.name)
    assert failed.error["kind"] == "input"
    assert counts_by_status(state.summary(run_id))[ShardStatus.DONE] > 0


def test_record_of_another_shard_is_rejected_naming_file_and_chunk(export, tmp_path):
    source, dest = export.source_copy, tmp_path / "vol"
    files = sorted((source / "s0").glob("*.arrow"))
    a, b = files[0], files[1]
    stolen = next(iter(_records(b)))
    recs = [*_records(a), stolen]
    write_export_file(a, a.with_suffix(".csv"), recs, csv_layout="batch")
    assert _run(source, dest, export.spec_path) == 1
    run_id, state = _state(dest)
    (failed,) = state.list(run_id, status=ShardStatus.FAILED)
    assert failed.error["file"].endswith(a.name)
    assert tuple(failed.error["chunk"]) == stolen[:3]
    assert "outside output shard" in failed.error["cause"]


def test_bad_spec_and_missing_source_exit_2(export, tmp_path, shared_fixtures, capsys):
    dest = tmp_path / "vol"
    bad = shared_fixtures / "volume-specs/mcns-v0.9-ng-specs-INCORRECT-bits.json"
    assert main(["run", str(export.source_copy), str(dest), "--spec", str(bad)]) == 2
    assert "sharding bits do not add up" in capsys.readouterr().err
    assert not dest.exists(), "nothing written for a rejected spec"
    assert main(["run", str(tmp_path / "nope"), str(dest), "--spec", str(export.spec_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_existing_different_info_is_not_overwritten(export, tmp_path, capsys):
    dest = tmp_path / "vol"
    dest.mkdir()
    (dest / "info").write_text(
        json.dumps({"@type": "neuroglancer_multiscale_volume", "scales": []})
    )
    before = (dest / "info").read_text()
    assert _run(export.source_copy, dest, export.spec_path) == 2
    assert "exists and differs" in capsys.readouterr().err
    assert (dest / "info").read_text() == before
    assert not list(dest.rglob("*.shard"))


def test_all_background_file_is_recorded_empty_not_missing(export, tmp_path):
    """Older DVID versions exported all-zero blocks; such a shard gets no file but must be
    recorded as converted-and-empty, and the run succeeds."""
    source, dest = export.source_copy, tmp_path / "vol"
    arrow = _biggest_s0_file(source)
    solid_zero = (
        (8).to_bytes(4, "little") * 3 + (1).to_bytes(4, "little") + (0).to_bytes(8, "little")
    )
    assert len(solid_zero) == 24
    recs = [
        (x, y, z, np.zeros(1, np.uint64), np.zeros(1, np.uint64), solid_zero)
        for x, y, z, *_ in _records(arrow)
    ]
    write_export_file(arrow, arrow.with_suffix(".csv"), recs, csv_layout="batch")
    assert _run(source, dest, export.spec_path) == 0
    run_id, state = _state(dest)
    scale = export.spec.scales[0]
    shard = shard_of_dvid_file(scale, arrow.stem)
    (empty,) = state.list(run_id, status=ShardStatus.EMPTY)
    assert empty.shard == shard and empty.chunks_done == len(recs) and empty.chunks_written == 0
    assert not list((dest / scale.key).glob(f"{empty.key.split('/')[1]}.shard"))
    assert counts_by_status(state.summary(run_id))[ShardStatus.DONE] == len(state.list(run_id)) - 1


def test_stale_shard_file_is_replaced_not_merged(export, tmp_path):
    """A shard file left in DEST by an interrupted or foreign run must not survive into the
    result: here the shard is now all background, so its file must go and it is recorded empty."""
    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.worker.output import ScaleStore, io_context, write_info

    source, dest = export.source_copy, tmp_path / "vol"
    arrow = _biggest_s0_file(source)
    solid_zero = (
        (8).to_bytes(4, "little") * 3 + (1).to_bytes(4, "little") + (0).to_bytes(8, "little")
    )
    recs = [
        (x, y, z, np.zeros(1, np.uint64), np.zeros(1, np.uint64), solid_zero)
        for x, y, z, *_ in _records(arrow)
    ]
    write_export_file(arrow, arrow.with_suffix(".csv"), recs, csv_layout="batch")
    spec = VolumeSpec.from_json(export.spec.info())
    write_info(str(dest), spec.info())
    scale = spec.scales[0]
    shard = shard_of_dvid_file(scale, arrow.stem)
    store = ScaleStore(str(dest), scale, io_context())
    lo, _ = shard_bounds(scale, shard)
    stale_id = compressed_morton_code(lo, scale.bits)
    store.write_shard(shard, {stale_id: b"stale bytes from another run"})
    assert store.shard_size(shard) is not None

    assert _run(source, dest, export.spec_path) == 0
    assert store.shard_size(shard) is None, "the stale shard file survived"
    run_id, state = _state(dest)
    (empty,) = state.list(run_id, status=ShardStatus.EMPTY)
    assert empty.shard == shard

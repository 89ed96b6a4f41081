"""Wrong inputs, a resume that trusts the files, signals, killed workers and environment faults:
each ends with a clear line and an exit code a script can trust, and never with a silently
incomplete volume. Every test here failed against the code before the hardening issue."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from dvid2ng.backends import open_embedded
from dvid2ng.backends.base import ShardStatus, counts_by_status
from dvid2ng.dispatcher.cli import main
from dvid2ng.dvidexport.writer import write_export
from dvid2ng.schemas.spec import VolumeSpec
from dvid2ng.schemas.tiers import next_tier
from tests.exports import make_export, read_scale_tensorstore


@pytest.fixture(scope="module")
def clean_export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("hard"), csv_layout="batch")


@pytest.fixture()
def export(clean_export, tmp_path):
    """A private copy each test may damage, and its spec as a dict."""
    shutil.copytree(clean_export.source, tmp_path / "export")
    clean_export.source_copy = tmp_path / "export"
    clean_export.spec_json = json.loads(clean_export.spec_path.read_text())
    return clean_export


def run(source, dest, spec_path, *extra) -> int:
    argv = ["run", str(source), str(dest), "--spec", str(spec_path), "--no-progress"]
    return main([*argv, "--workers", "2", *extra])


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


def state_of(dest: Path):
    run_id = json.loads((dest / ".dvid2ng/run.json").read_text())["run_id"]
    return run_id, open_embedded(dest / ".dvid2ng")[1]


# -- specs as readers see them --------------------------------------------------------------------


def test_a_spec_whose_chunks_are_not_dvid_blocks_is_refused(export, tmp_path, capsys):
    """Before: a 64x64x32 spec (the fish2 native-z spec) exited 0 with ~70 % of voxels wrong."""
    spec = copy.deepcopy(export.spec_json)
    spec["scales"][0]["chunk_sizes"] = [[64, 64, 32]]
    spec["scales"][0]["sharding"]["shard_bits"] += 1  # keep the bits adding up
    dest = tmp_path / "vol"
    assert run(export.source_copy, dest, write_spec(tmp_path, spec)) == 2
    err = capsys.readouterr().err
    assert "chunk_sizes [64, 64, 32]" in err and "[[64, 64, 64]]" in err
    assert not dest.exists(), "nothing is written for a refused spec"


def test_a_spec_missing_volume_fields_is_filled_said_and_readable(export, tmp_path, capsys):
    """Before: no type/data_type/num_channels gave an info TensorStore cannot open, exit 0."""
    spec = copy.deepcopy(export.spec_json)
    for field in ("type", "data_type", "num_channels", "@type"):
        spec.pop(field, None)
    dest = tmp_path / "vol"
    assert run(export.source_copy, dest, write_spec(tmp_path, spec)) == 0
    err = capsys.readouterr().err
    assert "no 'data_type'; using 'uint64'" in err
    for s, want in export.bodies.items():
        assert np.array_equal(read_scale_tensorstore(str(dest), s), want)


def test_a_spec_without_resolution_is_refused_before_anything_is_written(export, tmp_path, capsys):
    spec = copy.deepcopy(export.spec_json)
    del spec["scales"][1]["resolution"]
    dest = tmp_path / "vol"
    assert run(export.source_copy, dest, write_spec(tmp_path, spec)) == 2
    assert '"resolution": [16, 16, 16]' in capsys.readouterr().err
    assert not dest.exists()
    # and the corrected spec is then accepted by the same DEST
    assert run(export.source_copy, dest, export.spec_path) == 0


def test_a_scale_whose_dvid_file_names_collide_is_refused_naming_scales(export, tmp_path, capsys):
    """Scale 1 with preshift 2 + minishard 2 has shards of 3x2x2 chunks: DVID names files after
    192-voxel cubes, so the shards at chunk y=0 and y=2 share the file 0_0_0 (§2.7.2)."""
    spec = copy.deepcopy(export.spec_json)
    spec["scales"][1]["sharding"].update(preshift_bits=2, minishard_bits=2, shard_bits=1)
    path = write_spec(tmp_path, spec)
    assert run(export.source_copy, tmp_path / "vol", path) == 2
    err = capsys.readouterr().err
    assert "scale 1 (16x16x16)" in err and "§2.7.2" in err
    assert "--scales 0" in err and "--downres 1" in err
    assert "minishard_bits" in err  # a sharding that DVID can name, computed from the spec
    assert run(export.source_copy, tmp_path / "vol", path, "--scales", "0") == 0


# -- inputs that are not there ------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["empty scale folder", "csv without arrow", "arrow is a dir"])
def test_inputs_that_are_not_there_exit_2_naming_them(export, tmp_path, capsys, fault):
    """Before: each passed with exit 0 and the shards were silently absent."""
    src = export.source_copy
    if fault == "empty scale folder":
        for p in (src / "s1").iterdir():
            p.unlink()
        named = str((src / "s1").absolute())
    elif fault == "csv without arrow":
        arrow = next((src / "s0").glob("*.arrow"))
        arrow.unlink()
        named = str(arrow.with_suffix(".csv").absolute())
    else:
        arrow = next((src / "s0").glob("*.arrow"))
        arrow.unlink()
        arrow.mkdir()
        named = str(arrow.absolute())
    dest = tmp_path / "vol"
    assert run(src, dest, export.spec_path) == 2
    err = capsys.readouterr().err
    assert named in err, err
    assert err.count("\n") == 1, "one clear line"
    assert not dest.exists()


# -- a resume that trusts the files ---------------------------------------------------------------


def test_resume_checks_the_files_not_only_the_state(export, tmp_path, capsys):
    """Before: deleting or truncating an output shard and re-running said "already finished",
    exit 0, with part of the volume gone."""
    src, dest = export.source_copy, tmp_path / "vol"
    assert run(src, dest, export.spec_path) == 0
    shards = sorted(
        (dest / export.spec.scales[0].key).glob("*.shard"), key=lambda p: p.stat().st_size
    )
    deleted, truncated, kept = shards[-1], shards[-2], shards[0]
    kept_mtime = kept.stat().st_mtime_ns
    deleted.unlink()
    with open(truncated, "r+b") as f:
        f.truncate(truncated.stat().st_size - 100)
    capsys.readouterr()
    assert run(src, dest, export.spec_path) == 0
    err = capsys.readouterr().err
    assert f"{deleted} is missing" in err
    assert f"{truncated.name} is truncated" in err
    assert kept.stat().st_mtime_ns == kept_mtime, "an intact shard is not rewritten"
    for s, want in export.bodies.items():
        assert np.array_equal(read_scale_tensorstore(str(dest), s), want)
    run_id, state = state_of(dest)
    converted = sum(
        r.chunks_done
        for r in state.list(run_id)
        if r.key.endswith((deleted.stem, truncated.stem)) and r.scale == 0
    )
    assert f"chunks: {converted:,} converted by this run" in err  # only this run's work counts


def test_a_copied_volume_resumes_its_run_and_another_source_is_refused(export, tmp_path, capsys):
    """Before: a copied (or moved) volume was refused as "a different conversion" naming the
    very source and labels given, because the run id names the destination path."""
    src, first = export.source_copy, tmp_path / "vol"
    assert run(src, first, export.spec_path) == 0
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    shards = sorted((copy / export.spec.scales[0].key).glob("*.shard"))
    damaged, kept = shards[0], shards[-1]
    damaged.unlink()
    kept_mtime = kept.stat().st_mtime_ns
    capsys.readouterr()
    assert run(src, copy, export.spec_path) == 0
    err = capsys.readouterr().err
    assert f"{damaged} is missing" in err
    assert kept.stat().st_mtime_ns == kept_mtime, "the copy's intact shards are kept"
    for s, want in export.bodies.items():
        assert np.array_equal(read_scale_tensorstore(str(copy), s), want)
    other = tmp_path / "other-export"
    shutil.copytree(src, other)
    assert run(other, copy, export.spec_path) == 2
    err = capsys.readouterr().err
    assert "already holds a different conversion" in err and str(other) in err


def test_a_source_reexported_in_place_is_converted_again(export, tmp_path, capsys):
    """Before: a re-export in place (same names, new content) was ignored on resume."""
    src, dest = export.source_copy, tmp_path / "vol"
    assert run(src, dest, export.spec_path) == 0
    changed = np.array(export.supervoxels[0])
    changed[changed != 0] += np.uint64(7)  # new ids everywhere there is data: same files
    write_export(src, export.spec, {0: changed}, scales=[0], seed=3)  # labels = supervoxels
    capsys.readouterr()
    assert run(src, dest, export.spec_path) == 0
    err = capsys.readouterr().err
    assert err.count("changed since it was converted") == len(list((src / "s0").glob("*.arrow")))
    assert np.array_equal(read_scale_tensorstore(str(dest), 0), changed)
    assert np.array_equal(read_scale_tensorstore(str(dest), 1), export.bodies[1])


# -- processes and signals -------------------------------------------------------------------------

SIGNAL_SPEC = {
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "s0",
            "size": [256, 256, 256],
            "resolution": [8, 8, 8],
            "chunk_sizes": [[64, 64, 64]],
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "preshift_bits": 0,
                "minishard_bits": 0,
                "shard_bits": 6,
            },
        }
    ],
}


@pytest.fixture(scope="module")
def signal_export(tmp_path_factory):
    """64 one-chunk shards of dense data (a label per 2x2x2 voxels: slow blocks), so the run
    is long enough to be caught in the middle of a shard."""
    root = tmp_path_factory.mktemp("signals")
    spec = VolumeSpec.from_json(SIGNAL_SPEC)
    r = np.arange(256, dtype=np.uint64) // np.uint64(2)
    volume = (
        np.uint64(2**63)
        + (r[:, None, None] << np.uint64(16))
        + (r[None, :, None] << np.uint64(8))
        + r[None, None, :]
    )
    write_export(root / "export", spec, {0: volume}, seed=1)
    (root / "spec.json").write_text(json.dumps(SIGNAL_SPEC))
    return root, volume


def _command(root: Path, dest: Path, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "dvid2ng.dispatcher.cli", "run", str(root / "export"), str(dest),
        "--spec", str(root / "spec.json"), "--workers", str(workers), "--no-progress",
    ]  # fmt: skip


def _running_shard(dest: Path, proc, timeout: float = 120.0):
    """Wait until some shard is running; returns (run_id, record)."""
    state_dir = dest / ".dvid2ng"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (state_dir / "run.json").exists() and (state_dir / "state.sqlite").exists():
            run_id = json.loads((state_dir / "run.json").read_text())["run_id"]
            with contextlib.suppress(Exception):
                running = open_embedded(state_dir)[1].list(run_id, status=ShardStatus.RUNNING)
                if running:
                    return run_id, running[0]
        time.sleep(0.01)
    raise AssertionError("no shard started running")


def _assert_files_match_state(dest: Path, run_id: str) -> None:
    _, state = open_embedded(dest / ".dvid2ng")
    done = {r.key.split("/")[1] for r in state.list(run_id, status=ShardStatus.DONE)}
    assert {p.stem for p in (dest / "s0").glob("*.shard")} == done, "a file exactly per done shard"
    assert counts_by_status(state.summary(run_id))[ShardStatus.RUNNING] == 0, (
        "no shard left claimed"
    )


def test_sigterm_stops_like_ctrl_c_exit_143_and_workers_go_with_it(signal_export, tmp_path):
    root, volume = signal_export
    dest = tmp_path / "vol"
    proc = subprocess.Popen(_command(root, dest, 2), stderr=subprocess.PIPE, text=True)
    run_id, _ = _running_shard(dest, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    proc.send_signal(signal.SIGTERM)  # to the dispatcher only, as `kill` or systemd does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "shards:" in err
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers outlived the run: {alive}"
    _assert_files_match_state(dest, run_id)
    rerun = subprocess.run(_command(root, dest, 2), stderr=subprocess.PIPE, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert np.array_equal(read_scale_tensorstore(str(dest), 0), volume)


def test_workers_stop_when_the_dispatcher_is_killed_outright(signal_export, tmp_path):
    """Before: after the parent died its workers went on converting (and a re-run raced them)."""
    root, _ = signal_export
    dest = tmp_path / "vol"
    proc = subprocess.Popen(_command(root, dest, 2), stderr=subprocess.DEVNULL)
    _running_shard(dest, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    _gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers outlived the dispatcher: {alive}"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_killed_mid_shard_is_noticed_at_once_and_retried_a_tier_up(
    signal_export, tmp_path, workers
):
    """The OOM killer's SIGKILL: the shard is released at once (no 60 s lease wait) and
    converted by a fresh worker process, as the next tier's attempt. Before: with --workers 1
    the run ended "2 unfinished", exit 1."""
    root, volume = signal_export
    dest = tmp_path / "vol"
    proc = subprocess.Popen(_command(root, dest, workers), stderr=subprocess.PIPE, text=True)
    run_id, rec = _running_shard(dest, proc)
    pid = int(rec.worker.rsplit("-", 1)[1])
    os.kill(pid, signal.SIGSTOP)  # freeze it so it cannot finish before the kill lands
    _, state = open_embedded(dest / ".dvid2ng")
    held = [r for r in state.list(run_id, status=ShardStatus.RUNNING) if r.worker == rec.worker]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert time.monotonic() - killed_at < 45, "the dead worker's lease was waited out"
    assert np.array_equal(read_scale_tensorstore(str(dest), 0), volume)
    for h in held:
        after = state.get(run_id, h.key)
        assert after.status.finished and after.attempts == h.attempts + 1
        assert after.tier == next_tier(h.tier), "the retry is the next tier's attempt"


# -- environment faults ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, *options: str):
    """A real small or read-only file system (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join(("size=1m", *options))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_dest_that_is_a_file_read_only_or_full_gets_one_line_exit_2(export, tmp_path, capsys):
    src = export.source_copy
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    assert run(src, a_file, export.spec_path) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with tmpfs(tmp_path / "ro", "ro") as ro:
        assert run(src, ro / "vol", export.spec_path) == 2
        err = capsys.readouterr().err
        assert "Read-only file system" in err and err.count("\n") == 1, err
    with tmpfs(tmp_path / "full") as full:
        with contextlib.suppress(OSError), open(full / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        assert run(src, full / "vol", export.spec_path) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and err.count("\n") == 1, err


def test_a_full_disk_fails_its_shards_fast_without_climbing_tiers(export, tmp_path):
    """Before: ENOSPC was retried 10 times through every memory tier. The state lives on
    another disk here, so only the shard files run out of room."""
    from dvid2ng.dispatcher.embedded import run_embedded
    from dvid2ng.dispatcher.plan import plan_transcode

    with tmpfs(tmp_path / "small", "size=200k") as small:
        dest = str(small / "vol")
        plan = plan_transcode(export.source_copy, dest, export.spec)
        summary = run_embedded(plan, workers=2, state_dir=tmp_path / "state")
        assert summary.exit_code == 1 and summary.failed
        assert summary.counts[ShardStatus.DONE] > 0, "the shards that fit are kept"
        for f in summary.failed:
            assert f.error["kind"] == "disk-full", f.error
            assert "no space left on device" in f.error["cause"]
            assert f.attempts == 1, "no retry, no escalation"


def test_a_damaged_run_json_gets_one_line_exit_2(export, tmp_path, capsys):
    dest = tmp_path / "vol"
    assert run(export.source_copy, dest, export.spec_path, "--scales", "1") == 0
    (dest / ".dvid2ng/run.json").write_text("{garbage")
    capsys.readouterr()
    assert run(export.source_copy, dest, export.spec_path, "--scales", "1") == 2
    err = capsys.readouterr().err
    assert "run.json is damaged" in err and "delete it" in err and err.count("\n") == 1


def test_memory_dest_is_refused_by_run(export, capsys):
    assert run(export.source_copy, "memory://vol", export.spec_path) == 2
    assert "memory:// cannot hold a conversion" in capsys.readouterr().err


def test_the_info_check_happens_under_the_lock(export, tmp_path, capsys):
    """Two runs with different specs into one empty DEST: the second waits for the lock before
    it looks at (or writes) DEST/info, so it cannot pass the check the first is about to fail."""
    import fcntl

    dest = tmp_path / "vol"
    (dest / ".dvid2ng").mkdir(parents=True)
    with open(dest / ".dvid2ng/run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running dispatcher holds it
        assert run(export.source_copy, dest, export.spec_path) == 2
    assert "another dvid2ng run" in capsys.readouterr().err
    assert not (dest / "info").exists(), "info was written without the lock"


def test_status_exits_non_zero_while_unfinished(export, tmp_path, capsys):
    dest = tmp_path / "vol"
    assert run(export.source_copy, dest, export.spec_path) == 0
    run_id, state = state_of(dest)
    key = state.list(run_id)[0].key
    state.reset(run_id, key, "test: pretend it was never converted")
    assert main(["status", str(dest)]) == 1
    assert "not finished" in capsys.readouterr().out
    assert main(["status", str(dest), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["counts"]["queued"] == 1

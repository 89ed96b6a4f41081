"""Ctrl-C leaves no half-written shard behind, exits 130, and the re-run finishes the job."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from dvid2ng.backends import open_embedded
from dvid2ng.backends.base import ShardStatus, counts_by_status
from dvid2ng.dvidexport.writer import write_export
from dvid2ng.schemas.sharding import shard_bounds
from dvid2ng.schemas.spec import VolumeSpec
from tests.exports import read_scale_tensorstore

# One chunk per shard: many small work items, so an interrupt lands mid-run.
SPEC = {
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "s0",
            "size": [320, 320, 256],
            "resolution": [8, 8, 8],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 0,
                "minishard_bits": 0,
                "shard_bits": 8,
            },
        }
    ],
}


def _volume():
    z, y, x = np.meshgrid(np.arange(256), np.arange(320), np.arange(320), indexing="ij")
    return (np.uint64(2**63) + (z // 16) * 10_000 + (y // 16) * 100 + x // 16).astype(np.uint64)


def _start(tmp_path, volume):
    spec = VolumeSpec.from_json(SPEC)
    write_export(tmp_path / "export", spec, {0: volume}, seed=1)
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    dest = tmp_path / "vol"
    cmd = [
        sys.executable,
        "-m",
        "dvid2ng.dispatcher.cli",
        "run",
        str(tmp_path / "export"),
        str(dest),
        "--spec",
        str(tmp_path / "spec.json"),
        "--workers",
        "1",
        "--no-progress",
    ]
    return dest, cmd


def _wait_for_done(state_dir, proc, at_least):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (state_dir / "run.json").exists() and (state_dir / "state.sqlite").exists():
            run_id = json.loads((state_dir / "run.json").read_text())["run_id"]
            if (
                counts_by_status(open_embedded(state_dir)[1].summary(run_id))[ShardStatus.DONE]
                >= at_least
            ):
                return run_id
        time.sleep(0.02)
    raise AssertionError("the run did not progress")


def test_ctrl_c_then_resume(tmp_path):
    spec = VolumeSpec.from_json(SPEC)
    volume = _volume()
    dest, cmd = _start(tmp_path, volume)
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    state_dir = dest / ".dvid2ng"
    run_id = _wait_for_done(state_dir, proc, 3)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err

    _, state = open_embedded(state_dir)
    records = state.list(run_id)
    counts = counts_by_status(state.summary(run_id))
    assert counts[ShardStatus.RUNNING] == 0, "no shard left claimed"
    assert counts[ShardStatus.DONE] >= 3 and counts[ShardStatus.QUEUED] > 0, counts
    done_names = {r.key.split("/")[1] for r in records if r.status == ShardStatus.DONE}
    files = {p.stem for p in (dest / "s0").glob("*.shard")}
    assert files == done_names, "a shard file exists exactly for every shard recorded done"
    got = read_scale_tensorstore(str(dest), 0)
    for r in records:
        lo, hi = shard_bounds(spec.scales[0], r.shard)
        sl = tuple(slice(lo[d] * 64, hi[d] * 64) for d in (2, 1, 0))
        if r.status == ShardStatus.DONE:
            assert np.array_equal(got[sl], volume[sl]), f"{r.key} is not complete"
        else:
            assert not got[sl].any(), f"{r.key} was not finished but has data"

    rerun = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert np.array_equal(read_scale_tensorstore(str(dest), 0), volume)


def test_hard_kill_then_prompt_resume(tmp_path):
    """kill -9 of the dispatcher and its workers leaves shards 'running'; the next run hands
    them back at once (no waiting for leases) and finishes bit-exact."""
    volume = _volume()
    dest, cmd = _start(tmp_path, volume)
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.DEVNULL)
    run_id = _wait_for_done(dest / ".dvid2ng", proc, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    t = time.monotonic()
    rerun = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert time.monotonic() - t < 45, "orphaned shards were waited for instead of released"
    assert np.array_equal(read_scale_tensorstore(str(dest), 0), volume)
    assert (
        counts_by_status(open_embedded(dest / ".dvid2ng")[1].summary(run_id))[ShardStatus.RUNNING]
        == 0
    )


def test_second_concurrent_run_is_refused(tmp_path):
    import fcntl

    dest, cmd = _start(tmp_path, _volume())
    first = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    with open(dest / ".dvid2ng" / "run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running dispatcher holds it
        second = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=300)
    assert second.returncode == 2
    assert "another dvid2ng run" in second.stderr

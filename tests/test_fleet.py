"""The fleet commands end to end, as an operator runs them: `publish`, `dvid2ng worker`
processes, `status --state`, `errors`, `dlq list|show|replay`. Parametrized over the queue and
state backends (the `urls` fixture: `sqlite` URLs, and `google`: Pub/Sub + Firestore on their
real emulators, a fresh project per test, the topology made by `dvid2ng queues create` with
production's subscription settings), with gs:// sources and destinations on the GCS emulator.
Worker timing comes from the CLI flags (1 s heartbeats, 10-20 s leases: Pub/Sub's shortest ack
deadline is 10 s), so the Google variants wait for real leases and retry backoffs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dvid2ng.backends import open_queue, open_state
from dvid2ng.backends.base import ShardStatus, counts_by_status
from dvid2ng.dispatcher.cli import main
from dvid2ng.schemas.tiers import tier_names
from tests.exports import make_export, read_scale_tensorstore
from tests.gcs_emulator import GcsEmulator

FAST_WORKER = ["--heartbeat-seconds", "1", "--stale-after", "12", "--lease-seconds", "20"]


@pytest.fixture(scope="module")
def clean_export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("fleet"), csv_layout="batch")


@pytest.fixture()
def export(clean_export, tmp_path):
    shutil.copytree(clean_export.source, tmp_path / "export")
    clean_export.source_copy = tmp_path / "export"
    return clean_export


@pytest.fixture(params=["sqlite", "google"])
def urls(request, tmp_path, monkeypatch):
    """Queue and state URLs of a fresh fleet, also in the environment (as in a deployment):
    SQLite files, or Pub/Sub + Firestore on their emulators (one emulator process each for
    the session, a fresh project per test; skipped, naming the binary, where not installed).
    The Pub/Sub topology is made by `dvid2ng queues create`, as an operator makes it."""
    if request.param == "sqlite":
        folder = tmp_path / "fleet-state"
        q, s = f"sqlite://{folder}", f"sqlite://{folder}"
    else:
        q = f"pubsub://{request.getfixturevalue('pubsub_project')}/dvid2ng"
        s = f"firestore://{request.getfixturevalue('firestore_project')}"
    monkeypatch.setenv("DVID2NG_QUEUE", q)
    monkeypatch.setenv("DVID2NG_STATE", s)
    if request.param == "google":
        assert main(["queues", "create"]) == 0
        assert main(["queues", "check"]) == 0
    return q, s


def worker(*extra: str, env: dict | None = None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dvid2ng.dispatcher.cli", "worker", "--tier", "all", *FAST_WORKER]
    return subprocess.Popen([*cmd, *extra], env={**os.environ, **(env or {})}, **kw)


def drain(n: int = 2, timeout: float = 240) -> None:
    procs = [
        worker("--exit-when-idle", "--idle-seconds", "3", stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]
    for p in procs:
        assert p.wait(timeout) == 0


def publish(export, dest, *extra) -> int:
    return main(
        ["publish", str(export.source_copy), str(dest), "--spec", str(export.spec_path), *extra]
    )


def records(run_id: str):
    _, s = os.environ["DVID2NG_QUEUE"], os.environ["DVID2NG_STATE"]
    return open_state(s).list(run_id)


def test_publish_workers_status_bit_exact(export, tmp_path, urls, capsys):
    dest = tmp_path / "vol"
    assert publish(export, dest, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "t2gi" in out and "shards" in out
    assert not dest.exists(), "a dry run writes nothing"
    assert publish(export, dest) == 0
    run_id = capsys.readouterr().out.strip()
    assert main(["status", str(dest)]) == 1  # queued, not finished
    capsys.readouterr()
    drain(2)
    for s, want in export.bodies.items():
        assert np.array_equal(read_scale_tensorstore(str(dest), s), want)
    assert main(["status", str(dest), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run_id"] == run_id and report["finished"]
    assert report["chunks_done"] == report["chunks_expected"] > 0
    assert main(["errors"]) == 0


def test_publishing_twice_neither_doubles_work_nor_rewrites(export, tmp_path, urls, capsys):
    dest = tmp_path / "vol"
    assert publish(export, dest) == 0
    assert publish(export, dest) == 0  # before any worker ran: nothing queued twice
    err = capsys.readouterr().err
    assert "published 0 shard messages" in err and "queued by an earlier publish" in err
    drain(1)
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*.shard")}
    assert publish(export, dest) == 0  # after: everything finished, files checked
    assert "published 0 shard messages" in capsys.readouterr().err
    drain(1)
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*.shard")} == mtimes
    run_id = json.loads(subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "status", str(dest), "--json"],
        capture_output=True, text=True).stdout)["run_id"]  # fmt: skip
    assert all(r.attempts == 1 for r in records(run_id)), "no shard was converted twice"


def test_a_corrupt_shard_is_dead_lettered_listed_and_replayed_after_the_fix(
    export, tmp_path, urls, capsys
):
    from tests.test_failures import _bad_index, _biggest_s0_file, _rewrite

    dest = tmp_path / "vol"
    arrow = _biggest_s0_file(export.source_copy)
    original = arrow.read_bytes(), arrow.with_suffix(".csv").read_bytes()
    chunk = _rewrite(arrow, _bad_index)
    assert publish(export, dest) == 0
    capsys.readouterr()
    drain(1)
    assert main(["errors"]) == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and arrow.name in out and f"chunk {chunk}" in out
    assert main(["dlq", "list"]) == 0
    out = capsys.readouterr().out
    assert "1 dead-lettered" in out and str(arrow) in out and "palette index" in out
    key = next(line.split()[0] for line in out.splitlines() if line.startswith("  s0/"))
    assert main(["dlq", "show", key]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["key"] == key and shown[0]["error"]["kind"] == "input"

    # fix the file: a re-publish plans the new file (same name, new generation) and replay
    arrow.write_bytes(original[0])
    arrow.with_suffix(".csv").write_bytes(original[1])
    assert publish(export, dest) == 0  # records the new source fingerprint for the task
    assert main(["dlq", "replay", key]) == 0
    assert "replayed" in capsys.readouterr().out
    drain(1)
    assert main(["dlq", "list"]) == 0
    assert "0 dead-lettered" in capsys.readouterr().out
    for s, want in export.bodies.items():
        assert np.array_equal(read_scale_tensorstore(str(dest), s), want)


def test_a_poison_message_is_dead_lettered(export, tmp_path, urls, capsys):
    q = open_queue(os.environ["DVID2NG_QUEUE"])
    q.publish(tier_names()[0], b"this is not a task", {"key": "?"})
    drain(1)
    assert main(["dlq", "list", "--json"]) == 0
    (letter,) = json.loads(capsys.readouterr().out)
    assert "invalid task message" in letter["reason"] and letter["body"] == "this is not a task"


def _only_run() -> str:
    ((run_id, _),) = open_state(os.environ["DVID2NG_STATE"]).runs()
    return run_id


def _task_of(run_id: str, key: str, export) -> bytes:
    """The task message of shard `key`, as the planner makes it (to publish a duplicate)."""
    from dvid2ng.dispatcher.plan import plan_transcode

    config = open_state(os.environ["DVID2NG_STATE"]).get_run(run_id)
    plan = plan_transcode(config["source"], config["dest"], export.spec)
    return next(t for t in plan.tasks if t.key == key).to_json()


def _running(run_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [r for r in records(run_id) if r.status is ShardStatus.RUNNING]
        if running:
            return running[0]
        time.sleep(0.02)
    raise AssertionError("no shard started")


@pytest.fixture(scope="module")
def slow_export(tmp_path_factory):
    """Few big dense shards: a worker can be caught in the middle of one."""
    from tests.test_hardening import SIGNAL_SPEC

    spec = json.loads(json.dumps(SIGNAL_SPEC))
    spec["scales"][0]["sharding"].update(preshift_bits=3, shard_bits=3)  # 8 shards of 8 chunks
    root = tmp_path_factory.mktemp("slow")
    from dvid2ng.dvidexport.writer import write_export
    from dvid2ng.schemas.spec import VolumeSpec

    r = np.arange(256, dtype=np.uint64) // np.uint64(2)
    volume = (
        np.uint64(2**62)
        + (r[:, None, None] << np.uint64(16))
        + (r[None, :, None] << np.uint64(8))
        + r[None, None, :]
    )
    write_export(root / "export", VolumeSpec.from_json(spec), {0: volume}, seed=2)
    (root / "spec.json").write_text(json.dumps(spec))
    return root, volume


def _publish_slow(root: Path, dest: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "publish", str(root / "export"),
         str(dest), "--spec", str(root / "spec.json")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_sigterm_mid_shard_leaves_no_file_and_the_shard_finishes_on_redelivery(
    slow_export, tmp_path, urls
):
    root, volume = slow_export
    dest = tmp_path / "vol"
    run_id = _publish_slow(root, dest)
    w = worker(stderr=subprocess.PIPE, text=True)
    rec = _running(run_id)
    w.send_signal(signal.SIGTERM)
    t = time.monotonic()
    _, err = w.communicate(timeout=30)
    assert w.returncode == 0, err
    assert time.monotonic() - t < 10, "Cloud Run sends SIGKILL 10 s after SIGTERM"
    after = open_state(os.environ["DVID2NG_STATE"]).get(run_id, rec.key)
    assert after.status is ShardStatus.QUEUED and after.error["kind"] == "interrupted"
    name = rec.key.split("/")[1]
    assert not (dest / "s0" / f"{name}.shard").exists(), "nothing of the dropped shard written"
    drain(1)
    assert np.array_equal(read_scale_tensorstore(str(dest), 0), volume)
    final = open_state(os.environ["DVID2NG_STATE"]).get(run_id, rec.key)
    assert final.status is ShardStatus.DONE and final.attempts == 2


def test_a_worker_killed_mid_shard_is_redelivered_and_finished_once(slow_export, tmp_path, urls):
    """The OOM killer: no exception, no release. The message comes back after its lease; the
    next attempt sees the dead claim, sends the shard one tier up, where it is converted."""
    root, volume = slow_export
    dest = tmp_path / "vol"
    run_id = _publish_slow(root, dest)
    w = worker(stderr=subprocess.DEVNULL)
    rec = _running(run_id)
    w.kill()
    w.wait()
    drain(1, timeout=300)
    assert np.array_equal(read_scale_tensorstore(str(dest), 0), volume)
    final = open_state(os.environ["DVID2NG_STATE"]).get(run_id, rec.key)
    assert final.status is ShardStatus.DONE
    assert final.tier == tier_names()[tier_names().index(rec.tier) + 1]
    assert (
        counts_by_status(open_state(os.environ["DVID2NG_STATE"]).summary(run_id))[ShardStatus.DONE]
        == 8
    )


def test_missing_queue_or_state_is_one_line_exit_2(export, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DVID2NG_QUEUE", raising=False)
    monkeypatch.delenv("DVID2NG_STATE", raising=False)
    assert publish(export, tmp_path / "vol") == 2
    assert "give --queue URL or set DVID2NG_QUEUE" in capsys.readouterr().err
    assert main(["worker", "--tier", "all", "--queue", "kafka://x"]) == 2
    assert "not a queue URL" in capsys.readouterr().err
    assert (
        main(
            [
                "worker",
                "--tier",
                "t99",
                "--queue",
                f"sqlite://{tmp_path}",
                "--state",
                f"sqlite://{tmp_path}",
            ]
        )
        == 2
    )
    assert "unknown tier 't99'" in capsys.readouterr().err


# -- gs:// sources and destinations ----------------------------------------------------------------


@pytest.fixture()
def gcs(tmp_path, monkeypatch):
    emu = GcsEmulator(tmp_path)
    for b in ("src", "dst"):
        emu.create_bucket(b)
    for k, v in emu.env().items():
        monkeypatch.setenv(k, v)
    yield emu
    emu.stop()


def _upload(folder: Path, url: str) -> None:
    from dvid2ng.dvidexport.storage import split_gs_url, storage_client

    bucket, prefix = split_gs_url(url)
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            name = f"{prefix}/{p.relative_to(folder)}"
            storage_client().bucket(bucket).blob(name).upload_from_filename(str(p))


def test_gs_source_and_destination_read_back_bit_exact_one_upload_per_shard(
    export, tmp_path, urls, gcs, capsys
):
    _upload(export.source_copy, "gs://src/export")
    gcs.proxy.writes.clear()
    gcs.proxy.requests.clear()
    assert (
        main(["publish", "gs://src/export", "gs://dst/vol", "--spec", str(export.spec_path)]) == 0
    )
    capsys.readouterr()
    drain(2)
    for s, want in export.bodies.items():
        assert np.array_equal(read_scale_tensorstore("gs://dst/vol", s), want)
    shard_writes = {k: v for k, v in gcs.proxy.writes.items() if k.endswith(".shard")}
    assert shard_writes and set(shard_writes.values()) == {1}
    ranged = [r for r in gcs.proxy.requests if r[0] == "GET" and "src/o/" in r[1] and r[2]]
    assert ranged, "the Arrow files were read with range requests"
    # duplicate deliveries of finished shards (forced with --republish) write nothing
    gcs.proxy.writes.clear()
    argv = ["publish", "gs://src/export", "gs://dst/vol", "--spec", str(export.spec_path)]
    assert main([*argv, "--republish"]) == 0
    assert "published 0 shard messages" in capsys.readouterr().err  # finished: not republished
    run_id = _only_run()
    q = open_queue(os.environ["DVID2NG_QUEUE"])
    for r in records(run_id):
        task = _task_of(run_id, r.key, export)
        q.publish(r.tier, task, {"key": r.key})
    drain(1)
    assert not [k for k in gcs.proxy.writes if k.endswith(".shard")], dict(gcs.proxy.writes)


def test_a_gs_source_changed_after_publish_fails_its_shard_not_mixes(
    export, tmp_path, urls, gcs, capsys
):
    _upload(export.source_copy, "gs://src/export")
    assert (
        main(["publish", "gs://src/export", "gs://dst/vol", "--spec", str(export.spec_path)]) == 0
    )
    capsys.readouterr()
    from dvid2ng.dvidexport.storage import storage_client

    first = sorted(b.name for b in storage_client().list_blobs("src") if b.name.endswith(".arrow"))[
        0
    ]
    blob = storage_client().bucket("src").blob(first)
    blob.upload_from_string(blob.download_as_bytes())  # same bytes, new generation
    drain(1)
    assert main(["errors"]) == 1
    out = capsys.readouterr().out
    assert first.split("/")[-1] in out and ("changed since planning" in out or "any more" in out)


def test_a_shard_that_kills_its_worker_every_time_climbs_every_tier_to_the_dlq(
    slow_export, tmp_path, urls, capsys
):
    """Each attempt is SIGKILLed (as the OOM killer would) the moment it holds the shard. The
    next delivery on that tier sees the dead claim and sends it one tier up; after the last tier
    it lands in the terminal queue, visible in `dlq list`, within a bounded number of
    deliveries. Every other shard finishes."""
    root, _ = slow_export
    dest = tmp_path / "vol"
    run_id = _publish_slow(root, dest)
    state = open_state(os.environ["DVID2NG_STATE"])
    doomed = sorted(r.key for r in state.list(run_id))[3]
    timing = ["--heartbeat-seconds", "1", "--stale-after", "6", "--lease-seconds", "10"]
    killed_on: set[str] = set()
    deadline = time.monotonic() + 400
    w = None
    failed = False
    letters: list = []
    while time.monotonic() < deadline:
        if w is None or w.poll() is not None:
            w = subprocess.Popen(
                [sys.executable, "-m", "dvid2ng.dispatcher.cli", "worker", "--tier", "all",
                 *timing, "--exit-when-idle", "--idle-seconds", "4"],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        rec = state.get(run_id, doomed)
        # Once failed the shard has left the last tier: stop killing. A kill that landed while
        # that attempt was between its `fail` and its `forward` (a window of a few backend
        # calls, wide on the Google backends) leaves the message to come back after its lease
        # and be forwarded by the next delivery, so the letter may show up a lease later.
        failed = failed or rec.status is ShardStatus.FAILED
        # Kill the attempt that converts on each tier, not the one after it on the same tier
        # (it finds the dead claim and hands the shard up): on the Google backends that
        # hand-over is a few RPCs long, and killing it too costs another lease plus the retry
        # policy's growing backoff per tier, minutes in all.
        if (
            not failed
            and rec.status is ShardStatus.RUNNING
            and rec.worker.endswith(f"-{w.pid}")
            and rec.tier not in killed_on
        ):
            w.kill()
            w.wait()
            killed_on.add(rec.tier)
        if failed and counts_by_status(state.summary(run_id))[ShardStatus.DONE] == 7:
            assert main(["dlq", "list", "--json"]) == 0
            letters = json.loads(capsys.readouterr().out)
            if letters:
                break
            time.sleep(1)
        time.sleep(0.02)
    w.terminate()
    w.wait(30)
    final = state.get(run_id, doomed)
    assert final.status is ShardStatus.FAILED and final.error["kind"] == "died", final
    assert killed_on == set(tier_names()), "one death on every tier"
    # per tier one attempt that died and one that handed the shard up; at-least-once delivery
    # may add a duplicate here and there
    assert final.attempts <= 3 * len(tier_names()), "bounded deliveries"
    (letter,) = letters
    assert letter["key"] == doomed and letter["from_tier"] == tier_names()[-1]
    others = [r for r in state.list(run_id) if r.key != doomed]
    assert all(r.status is ShardStatus.DONE for r in others)
    assert not (dest / "s0" / f"{doomed.split('/')[1]}.shard").exists()


def test_publish_downres_builds_the_pyramid_scale_after_scale(tmp_path, urls, capsys):
    """`publish --scales 0 --downres 1-2`: s0 published, finished by the workers and checked,
    then s1 planned from s0's shard files and published, then s2; every scale equals the
    mode-downsampled reference."""
    from tests.pyramid_helpers import reference_pyramid
    from tests.test_pyramid_cli import make_s0_export

    source, spec_path, _, bodies = make_s0_export(tmp_path, (140, 100, 75), [64, 32, 16])
    dest = tmp_path / "vol"
    workers = [worker(stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        argv = ["publish", str(source), str(dest), "--spec", str(spec_path), "--scales", "0",
                "--downres", "1-2", "--poll-seconds", "0.5"]  # fmt: skip
        assert main(argv) == 0
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(30) == 0
    err = capsys.readouterr().err
    assert " s1: published" in err and " s2: published" in err
    want = reference_pyramid(bodies, 3)
    for s in range(3):
        np.testing.assert_array_equal(read_scale_tensorstore(str(dest), s), want[s])

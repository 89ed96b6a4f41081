"""CPU count from the container's cgroup quota, $DVID2NG_THREADS, and the embedded run's
workers x threads rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dvid2ng.dispatcher.embedded import embedded_parallelism
from dvid2ng.worker.cpus import (
    available_cpus,
    cgroup_cpu_quota,
    default_threads,
    schedulable_cpus,
    threads_from_env,
)


def _v2(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def _v1(tmp_path: Path, quota: int, period: int = 100_000) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
    ],
)
def test_cgroup_v2_quota(tmp_path, text, cpus):
    assert cgroup_cpu_quota(_v2(tmp_path, text)) == cpus


@pytest.mark.parametrize(("quota", "cpus"), [(-1, None), (400_000, 4.0), (250_000, 2.5)])
def test_cgroup_v1_quota(tmp_path, quota, cpus):
    assert cgroup_cpu_quota(_v1(tmp_path, quota)) == cpus


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None
    assert available_cpus(tmp_path) == schedulable_cpus()


def test_quota_rounds_up_and_never_exceeds_the_affinity(tmp_path):
    """1.5 CPUs of quota are paid for as 2 threads' worth; a quota above the CPUs this process
    may run on does not add threads that could not run."""
    assert available_cpus(_v2(tmp_path, "150000 100000")) == min(2, schedulable_cpus())
    assert available_cpus(_v2(tmp_path, "50000 100000")) == 1
    big = tmp_path / "big"
    big.mkdir()
    assert available_cpus(_v2(big, f"{1000 * 100_000} 100000")) == schedulable_cpus()


def test_env_overrides_the_quota(tmp_path):
    root = _v2(tmp_path, "100000 100000")
    assert default_threads({"DVID2NG_THREADS": "6"}, root) == 6
    assert default_threads({}, root) == 1
    assert default_threads({"DVID2NG_THREADS": " "}, root) == 1


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_env_threads_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="DVID2NG_THREADS"):
        threads_from_env({"DVID2NG_THREADS": bad})


@pytest.mark.parametrize(
    ("workers", "threads", "shards", "cpus", "want"),
    [
        (None, None, 1, 8, (1, 8)),  # one big shard: all cores as threads
        (None, None, 3, 8, (3, 2)),  # 3 x 2 = 6 of 8 (no core shared by two processes)
        (None, None, 100, 8, (8, 1)),  # many shards: processes scale best
        (None, None, 100, 2, (2, 1)),
        (2, None, 100, 8, (2, 4)),  # --workers 2
        (None, 4, 100, 8, (2, 4)),  # --threads 4
        (None, 4, 1, 8, (1, 4)),  # --threads 4, one shard
        (3, 3, 10, 2, (3, 3)),  # both given: as given
        (16, None, 100, 8, (16, 1)),  # more workers than CPUs: one thread each
        (None, None, 0, 4, (1, 4)),  # nothing planned yet
    ],
)
def test_embedded_rule(workers, threads, shards, cpus, want, monkeypatch):
    monkeypatch.delenv("DVID2NG_THREADS", raising=False)
    assert embedded_parallelism(workers, threads, shards, cpus) == want


def test_embedded_rule_takes_env_threads(monkeypatch):
    monkeypatch.setenv("DVID2NG_THREADS", "2")
    assert embedded_parallelism(None, None, 100, 8) == (4, 2)


def _pinned_to_one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_a_process_pinned_to_one_cpu_counts_one():
    """The real thing, not a fake cgroup folder: `taskset -c 0` (what cpusets and Docker's
    --cpuset-cpus do) leaves one CPU, whatever the host has."""
    code = "from dvid2ng.worker.cpus import available_cpus; print(available_cpus())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_pinned_to_one_cpu
    )
    assert done.stdout.strip() == "1", done.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
@pytest.mark.parametrize(
    ("env_threads", "want"), [(None, "1 workers x 1 threads"), ("3", "1 workers x 3 threads")]
)
def test_run_sizes_itself_from_the_cpus_it_may_use(tmp_path, env_threads, want):
    """`dvid2ng run` on one CPU starts one worker of one thread; $DVID2NG_THREADS sets the
    threads (and so leaves no CPU for a second worker)."""
    from tests.exports import make_export

    export = make_export(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DVID2NG_THREADS"}
    if env_threads:
        env["DVID2NG_THREADS"] = env_threads
    done = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "run", str(export.source),
         str(tmp_path / "vol"), "--spec", str(export.spec_path), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600, preexec_fn=_pinned_to_one_cpu,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"({want})" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("bad", ["0", "abc"])
def test_run_refuses_bad_env_threads_exit_2(tmp_path, bad):
    env = {**os.environ, "DVID2NG_THREADS": bad}
    done = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "run", str(tmp_path), str(tmp_path / "o"),
         "--spec", str(tmp_path / "spec.json")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "DVID2NG_THREADS" in done.stderr and "Traceback" not in done.stderr


def test_v2_quota_of_the_own_cgroup_and_its_ancestors(tmp_path):
    """On a host (no cgroup namespace) the process's cgroup is a folder below the mount; a
    quota on it or on any ancestor limits it, the smallest wins."""
    (tmp_path / "cpu.max").write_text("max 100000\n")
    own = tmp_path / "system.slice" / "dvid2ng.service"
    own.mkdir(parents=True)
    (tmp_path / "system.slice" / "cpu.max").write_text("300000 100000\n")
    (own / "cpu.max").write_text("max 100000\n")
    proc = "0::/system.slice/dvid2ng.service\n"
    assert cgroup_cpu_quota(tmp_path, proc) == 3.0
    (own / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 1.5


def test_v2_path_missing_below_the_mount_means_the_mount_is_the_container(tmp_path):
    """Inside a container without a cgroup namespace /proc/self/cgroup still names the host's
    path, while /sys/fs/cgroup is the container's own cgroup: its quota applies."""
    _v2(tmp_path, "200000 100000\n")
    assert cgroup_cpu_quota(tmp_path, "0::/kubepods/burstable/pod1/abc\n") == 2.0


def test_v1_nested_cpu_controller(tmp_path):
    _v1(tmp_path, -1)
    nested = tmp_path / "cpu" / "docker" / "abc"
    nested.mkdir(parents=True)
    (nested / "cpu.cfs_quota_us").write_text("50000\n")
    (nested / "cpu.cfs_period_us").write_text("100000\n")
    proc = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    assert cgroup_cpu_quota(tmp_path, proc) == 0.5
    assert cgroup_cpu_quota(tmp_path, "3:cpu,cpuacct:/\n") is None  # the root: -1, no quota


def test_this_machine_reads_without_error():
    """The real /sys/fs/cgroup and /proc/self/cgroup of wherever the tests run: a quota, if
    any, is positive and the count stays within the affinity."""
    quota = cgroup_cpu_quota()
    assert quota is None or quota > 0
    assert 1 <= available_cpus() <= schedulable_cpus()

"""worker/startup_gc.py: a worker's start-up runs without garbage collections, then freezes
what it made and collects again: at its first chunks, at a Numba compile, or after at most
MAX_PAUSE_S. Each case runs in a fresh interpreter: the collector's state is per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _python(code: str, timeout: float = 600, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pause_then_resume_freezes_and_collects_again():
    got = _python(
        """
import gc, json
from dvid2ng.worker import startup_gc as s
s.pause()
paused = gc.isenabled()
junk = [[] for _ in range(50000)]  # would have triggered young collections
s.resume()
during = s.collections_while_paused()
after = (gc.isenabled(), gc.get_freeze_count() > 50000)
s.pause()  # start-up is once per process
again = gc.isenabled()
print(json.dumps([paused, during, after, again]))
"""
    )
    assert got == [False, 0, [True, True], True]


def test_the_pause_ends_by_itself():
    got = _python(
        """
import gc, json, time
from dvid2ng.worker import startup_gc as s
s.MAX_PAUSE_S = 0.2
s.pause()
t = time.monotonic()
while not gc.isenabled() and time.monotonic() - t < 10:
    time.sleep(0.02)
print(json.dumps([gc.isenabled(), s.paused(), round(time.monotonic() - t, 1)]))
"""
    )
    assert got[0] is True and got[1] is False
    assert got[2] < 5


def test_a_collector_switched_off_by_the_caller_stays_off():
    got = _python(
        """
import gc, json
from dvid2ng.worker import startup_gc as s
gc.disable()
s.pause()
s.resume()
print(json.dumps([gc.isenabled(), gc.get_freeze_count()]))
"""
    )
    assert got == [False, 0]


def test_a_numba_compile_resumes_collection():
    """A cold cache compiles for seconds, making garbage: collection resumes at once."""
    got = _python(
        """
import gc, json
from dvid2ng.worker import startup_gc as s
s.MAX_PAUSE_S = 600
s.pause()
import numba
s.resume_on_compile()
before = gc.isenabled()

@numba.njit
def f(n):
    return n + 1

f(1)
print(json.dumps([before, gc.isenabled()]))
"""
    )
    assert got == [False, True]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[str, Path]:
    from tests.exports import make_export, publish_to_sqlite

    tmp = tmp_path_factory.mktemp("startup-gc")
    q, dest = publish_to_sqlite(make_export(tmp), tmp)
    return q, dest


def test_the_worker_program_starts_up_without_collections(published):
    """The real `dvid2ng worker` reports, with its first chunks, no collection so far and
    its start-up frozen; the control below shows the same imports do collect otherwise."""
    q, dest = published
    warm = subprocess.run(  # the worker's kernels in Numba's cache, as in the image
        [sys.executable, "-c", "from dvid2ng.kernels import warm_up_transcode as w; w()"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert warm.returncode == 0, warm.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "worker", "--queue", q, "--state", q,
         "--tier", "all", "--exit-when-idle", "--idle-seconds", "0", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "DVID2NG_LOG_FORMAT": "json"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    first = [e for e in events if e.get("event") == "first_chunks"]
    assert first, "the worker converted nothing"
    assert first[0]["startup_gc_collections"] == 0
    assert first[0]["gc_frozen"] > 10000
    assert any(dest.rglob("*.shard"))


def test_the_same_imports_collect_without_the_pause():
    """The control: importing what a worker imports triggers collections."""
    got = _python(
        """
import gc, json
import dvid2ng.worker.loop, dvid2ng.worker.transcode
print(json.dumps(sum(x["collections"] for x in gc.get_stats())))
"""
    )
    assert got > 10

"""worker/exit.py: a worker ends without the interpreter's teardown, but keeps what a normal
exit does for others (non-daemon threads finish, atexit handlers run, stdio is flushed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from dvid2ng.worker.exit import exit_now

out = Path(sys.argv[1]); out.mkdir(exist_ok=True)
atexit.register(lambda: (out / "atexit").write_text("ran"))

def late():
    time.sleep(0.3)
    (out / "thread").write_text("finished")

threading.Thread(target=late).start()
sys.stdout.write("buffered, no newline")
sys.stderr.write("err, no newline")

import os

class Teardown:
    def __init__(self):
        self.write = os.write  # bound now: module globals are gone at teardown

    def __del__(self):  # what exit_now skips: finalizers at interpreter teardown
        self.write(1, b" [teardown]")

keep = Teardown()
exit_now(7)
"""


def test_exit_now_keeps_threads_atexit_and_stdio(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 7, done.stderr
    assert done.stdout == "buffered, no newline"
    assert done.stderr == "err, no newline"
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "atexit").read_text() == "ran"
    # the teardown really is skipped: a plain exit runs the finalizer (the control below)
    plain = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("exit_now(7)", "sys.exit(7)"), str(tmp_path / "p")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert plain.returncode == 7
    assert plain.stdout == "buffered, no newline [teardown]"


PROGRAM = """
import os, sys
from dvid2ng.dispatcher.cli import main

class Teardown:
    def __init__(self):
        self.write = os.write  # bound now: module globals are gone at teardown

    def __del__(self):
        self.write(1, b"[teardown]")

keep = Teardown()
sys.argv = ["dvid2ng", *sys.argv[1:]]
sys.exit(main())  # as the console script calls it: argv from sys.argv
"""


@pytest.mark.parametrize("before", [[], ["--log-level", "info"]], ids=["plain", "global-option"])
def test_the_worker_program_skips_the_teardown(tmp_path: Path, before: list[str]):
    """`dvid2ng [--log-level L] worker ...` ends through exit_now, a top-level option before
    the command or not (the command is found the way argparse will find it)."""
    q = f"sqlite://{tmp_path}"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, *before, "worker", "--queue", q, "--state", q,
         "--tier", "all", "--exit-when-idle", "--idle-seconds", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[teardown]" not in done.stdout

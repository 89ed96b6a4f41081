"""`dvid2ng --help` stays instant and a worker loads only what it uses.

Each check runs the real command in a fresh interpreter and reads `sys.modules` at exit, so a
module-level import of a heavy library anywhere on these paths fails the test (no clock).
TensorStore, Numba and pyarrow cost about a second to import between them; the Google clients
another ~0.5 s and ~40 MiB, which a worker on the SQLite backends never needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# http.server (with email, html, ...: ~150 ms) is for `dvid2ng view` only
HEAVY = (
    "tensorstore", "numba", "pyarrow", "numpy", "zstandard", "google.cloud", "grpc", "http.server",
)  # fmt: skip

# Runs the CLI's main() as `dvid2ng ARGS...` would, then prints the loaded top-level packages
# (and google.cloud.*): exit codes are ignored, --help exits 0 via SystemExit.
PROBE = """
import json, sys
from dvid2ng.dispatcher.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(*args: str, env: dict | None = None) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["worker", "--help"],
        ["publish", "--help"],
        ["status", "--help"],
        ["verify", "--help"],
    ],
    ids=lambda a: " ".join(a),
)
def test_help_imports_no_heavy_library(args):
    assert heavy_in(loaded_modules(*args)) == []


def test_the_probe_sees_a_heavy_import():
    """The control: the same probe reports numpy once something on the path imports it."""
    mods = loaded_modules("--version")
    assert heavy_in(mods) == []
    done = subprocess.run(
        [sys.executable, "-c", "import numpy\n" + PROBE, "--version"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "numpy" in heavy_in(set(json.loads(done.stdout.strip().splitlines()[-1])))


def test_worker_on_sqlite_loads_no_google_client(tmp_path: Path):
    """A worker on the SQLite backends converts a shard without importing the Pub/Sub,
    Firestore or Storage clients (they are for pubsub://, firestore:// and gs:// URLs only),
    and loads its cached kernels without Numba's registries (kernels/cache_load.py)."""
    from tests.exports import make_export, publish_to_sqlite

    q, dest = publish_to_sqlite(make_export(tmp_path), tmp_path)
    warm = subprocess.run(  # the worker's kernels in Numba's cache, as in the image
        [sys.executable, "-c", "from dvid2ng.kernels import warm_up_transcode as w; w()"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert warm.returncode == 0, warm.stderr[-2000:]
    mods = loaded_modules(
        "worker", "--queue", q, "--state", q, "--tier", "all", "--exit-when-idle",
        "--idle-seconds", "0", "--threads", "1",
    )  # fmt: skip
    assert any(dest.rglob("*.shard")), "the worker converted nothing"
    assert "tensorstore" in mods and "numba" in mods  # it did convert
    assert [m for m in mods if m.startswith(("google.cloud", "grpc"))] == []
    # Numba's lowering registries (numba.np.linalg & co, ~0.3 s) are not needed to run cached
    # kernels
    assert "numba.np.linalg" not in mods


def test_ml_dtypes_is_one_that_imports_fast():
    """tensorstore imports ml_dtypes; 0.7.0's extension module took 1.1-1.3 s to initialise
    here against 8 ms for 0.6.0, before every worker's first chunk (pyproject.toml pins it)."""
    from importlib.metadata import version

    major, minor = (int(p) for p in version("ml_dtypes").split(".")[:2])
    assert (0, 5) <= (major, minor) < (0, 7)


def test_run_supervisor_imports_neither_numba_nor_tqdm(tmp_path: Path):
    """`dvid2ng run`'s own process plans and watches while its worker processes import and
    load the kernels: Numba (~0.5 s) in the supervisor would sit on every run's critical path,
    and tqdm (~0.1 s) is for a terminal's progress bar only."""
    from tests.exports import make_export

    export = make_export(tmp_path)
    dest = tmp_path / "vol"
    mods = loaded_modules(
        "run", str(export.source), str(dest), "--spec", str(export.spec_path), "--no-progress"
    )
    assert any(dest.rglob("*.shard")), "the run converted nothing"
    assert "tensorstore" in mods  # it did write the volume's info
    assert [m for m in mods if m == "numba" or m.startswith(("numba.", "tqdm"))] == []


def test_the_worker_loop_imports_no_numba():
    """The worker loop imports its converters when it converts: until then (opening the
    queue and state, the pull, the claim, the destination's info) a worker's main thread
    never waits for the kernel thread's Numba import (worker/warm.py)."""
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys, dvid2ng.worker.loop\n"
         "print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    mods = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "dvid2ng.worker.loop" in mods and "tensorstore" in mods  # the control
    assert [m for m in mods if m == "numba" or m.startswith("numba.")] == []

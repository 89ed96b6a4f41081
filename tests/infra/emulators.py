"""Google's Pub/Sub and Firestore emulators for the image's entrypoint test (loopback only,
each in its own process group, stopped by group even when the test fails; see
shared/reference/emulators.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SDK = Path("/usr/lib/google-cloud-sdk/platform")
PUBSUB = SDK / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
FIRESTORE = SDK / "cloud-firestore-emulator" / "cloud_firestore_emulator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready, what: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ready()
            return
        except Exception as e:  # not up yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready in {timeout:.0f} s ({e}); log {log}") from e
            time.sleep(0.3)


@contextlib.contextmanager
def google_emulators(workdir: Path, project: str) -> Iterator[dict[str, str]]:
    """Start both emulators; yield the environment that points clients at them."""
    missing = [str(p) for p in (PUBSUB, FIRESTORE) if not p.exists()]
    if missing:
        pytest.skip(f"Google Cloud emulators not installed: {', '.join(missing)}")
    ps_port, fs_port = _free_port(), _free_port()
    env = {**os.environ, "JAVA_TOOL_OPTIONS": "-Xmx256m -XX:+UseSerialGC"}
    procs = []
    try:
        for cmd, name in (
            ([str(PUBSUB), "--host=127.0.0.1", f"--port={ps_port}"], "pubsub"),
            (
                [
                    str(FIRESTORE),
                    "start",
                    "--host=127.0.0.1",
                    f"--port={fs_port}",
                    "--database-mode=firestore-native",
                ],
                "firestore",
            ),
        ):
            log = workdir / f"{name}.log"
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        emu = {
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{ps_port}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{fs_port}",
            "GOOGLE_CLOUD_PROJECT": project,
        }
        os.environ.update(emu)
        from google.cloud import firestore, pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        _wait(
            lambda: publisher.create_topic(name=f"projects/{project}/topics/ready-probe"),
            "Pub/Sub emulator",
            workdir / "pubsub.log",
        )
        db = firestore.Client(project=project)
        _wait(
            lambda: db.collection("ready").document("probe").set({"ok": True}),
            "Firestore emulator",
            workdir / "firestore.log",
        )
        yield emu
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for k in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"):
            os.environ.pop(k, None)

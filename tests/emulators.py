"""The real Google Cloud emulators (Pub/Sub, Firestore) for tests, once per session.

Where the Google Cloud CLI's emulator binaries are installed (every machine image of this
project: /usr/lib/google-cloud-sdk/platform/...), each emulator runs as a child process in its
own process group, output to a file in the session's temp folder (never a pipe: an orphan
holding one hangs the reader), JVM capped with JAVA_TOOL_OPTIONS. It is ready when a real RPC
answers (create a topic, write a document), and it is stopped by killing the whole process
group, even when a test failed: the Firestore start script is a bash wrapper that does not
`exec` java, so killing only the script would leave java running.

Where a binary (or java) is missing and a Docker engine answers, the same emulators start from
Google's image (`google/cloud-sdk:emulators`) through testcontainers. Where neither is there,
the tests that need them skip, naming the missing binary.

Isolation: the Pub/Sub emulator has no reset, so every test gets a fresh project id
(`fresh_project_id`); Firestore projects are isolated the same way.

Fixtures (wired in tests/conftest.py): `pubsub_emulator`, `firestore_emulator` (session; the
`Emulator` with `host` and `env()`), and `pubsub_project`, `firestore_project` (per test: set
the emulator variable for this test and any process it spawns, and return a fresh project id).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

JAVA_TOOL_OPTIONS = "-Xmx256m -XX:+UseSerialGC"
START_TIMEOUT_S = 90.0  # ~2 s on an idle machine; a loaded shared one is much slower
IMAGE = "google/cloud-sdk:emulators"  # Google's image with both emulators (testcontainers' default)
SDK_ROOTS = (
    "/usr/lib/google-cloud-sdk",
    "/usr/share/google-cloud-sdk",
    "/opt/google-cloud-sdk",
    "/usr/local/google-cloud-sdk",
    "~/google-cloud-sdk",
)


@dataclass(frozen=True)
class Kind:
    name: str  # "pubsub" / "firestore"
    env_var: str
    binary: str  # relative to the SDK root
    container_port: int

    def command(self, binary: Path, port: int) -> list[str]:
        if self.name == "pubsub":
            return [str(binary), "--host=127.0.0.1", f"--port={port}"]
        return [
            str(binary),
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--database-mode=firestore-native",
        ]

    def container_command(self) -> str:
        if self.name == "pubsub":
            return (  # as testcontainers' PubSubContainer runs it
                f"gcloud beta emulators pubsub start --host-port=0.0.0.0:{self.container_port}"
            )
        return (
            "gcloud emulators firestore start --database-mode=firestore-native "
            f"--host-port=0.0.0.0:{self.container_port}"
        )


PUBSUB = Kind(
    "pubsub", "PUBSUB_EMULATOR_HOST", "platform/pubsub-emulator/bin/cloud-pubsub-emulator", 8085
)
FIRESTORE = Kind(
    "firestore",
    "FIRESTORE_EMULATOR_HOST",
    "platform/cloud-firestore-emulator/cloud_firestore_emulator",
    8080,
)


class EmulatorUnavailable(RuntimeError):
    """Neither the emulator binary (with java) nor a Docker engine is available."""


def fresh_project_id() -> str:
    """A project id no earlier test used (the emulators isolate projects)."""
    return f"test-{uuid.uuid4().hex[:16]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sdk_roots() -> list[Path]:
    roots = [os.environ.get("CLOUDSDK_ROOT_DIR", "")]
    gcloud = shutil.which("gcloud")
    if gcloud:  # .../google-cloud-sdk/bin/gcloud
        roots.append(str(Path(gcloud).resolve().parent.parent))
    roots += SDK_ROOTS
    return [Path(r).expanduser() for r in roots if r]


def find_binary(kind: Kind) -> Path | None:
    for root in sdk_roots():
        candidate = root / kind.binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


# -- readiness: a real RPC ------------------------------------------------------------------


def _pubsub_ready(host: str) -> None:
    from google.cloud import pubsub_v1

    with mock.patch.dict(os.environ, {PUBSUB.env_var: host}):
        publisher = pubsub_v1.PublisherClient()
    try:
        topic = f"projects/{fresh_project_id()}/topics/emulator-ready"
        publisher.create_topic(request={"name": topic}, timeout=3, retry=None)
    finally:
        publisher.transport.close()


def _firestore_ready(host: str) -> None:
    from google.cloud import firestore

    with mock.patch.dict(os.environ, {FIRESTORE.env_var: host}):
        client = firestore.Client(project=fresh_project_id())
    try:
        client.collection("emulator-ready").document("probe").set({"ok": True}, timeout=3)
    finally:
        client.close()


READY: dict[str, Callable[[str], None]] = {"pubsub": _pubsub_ready, "firestore": _firestore_ready}


def _wait_ready(
    kind: Kind, host: str, alive: Callable[[], bool], describe: Callable[[], str]
) -> float:
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < START_TIMEOUT_S:
        if not alive():
            raise RuntimeError(f"the {kind.name} emulator exited while starting:\n{describe()}")
        try:
            READY[kind.name](host)
            return time.monotonic() - started
        except Exception as e:  # not listening yet, or still starting its server
            last = e
            time.sleep(0.2)
    raise RuntimeError(
        f"the {kind.name} emulator did not answer within {START_TIMEOUT_S:g} s "
        f"(last error: {last}):\n{describe()}"
    )


# -- the emulator processes -----------------------------------------------------------------


class Emulator:
    """One running emulator (a local process group, or a container)."""

    kind: Kind
    host: str  # "HOST:PORT"
    startup_s: float

    def env(self) -> dict[str, str]:
        return {self.kind.env_var: self.host}

    def stop(self) -> None:
        raise NotImplementedError


class LocalEmulator(Emulator):
    def __init__(
        self, kind: Kind, binary: Path, workdir: Path, java_options: str = JAVA_TOOL_OPTIONS
    ):
        self.kind = kind
        port = free_port()
        self.host = f"127.0.0.1:{port}"
        self.log_path = workdir / f"{kind.name}-emulator.log"
        env = {**os.environ, "JAVA_TOOL_OPTIONS": java_options}
        for k in (PUBSUB.env_var, FIRESTORE.env_var):  # never point an emulator at another
            env.pop(k, None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                kind.command(binary, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills java too
                env=env,
                cwd=workdir,
            )
        atexit.register(self.stop)  # also when the session dies before its teardown
        try:
            self.startup_s = _wait_ready(
                kind, self.host, lambda: self.proc.poll() is None, self.log_tail
            )
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Kill the whole process group (SIGTERM, then SIGKILL) and wait until it is gone."""
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.1)
                try:
                    os.killpg(pgid, 0)  # anyone left in the group (java under the script)?
                except ProcessLookupError:
                    return
                time.sleep(0.1)


class ContainerEmulator(Emulator):
    """The same emulator from Google's image, where the binary is missing but Docker runs.

    Checked on a machine without a Docker engine only: imports, argument construction, and the
    choice of this path (tests/test_emulators.py); see docs/backends.md."""

    def __init__(self, kind: Kind, image: str = IMAGE):
        self.kind = kind
        self.container = make_container(kind, image)
        self.container.start()
        try:
            host = self.container.get_container_host_ip()
            port = self.container.get_exposed_port(kind.container_port)
            self.host = f"{host}:{port}"
            self.startup_s = _wait_ready(kind, self.host, self._running, self._logs)
        except BaseException:
            self.stop()
            raise

    def _running(self) -> bool:
        try:
            self.container.reload()
            return self.container.status in ("created", "running", "restarting")
        except Exception:
            return True  # cannot tell: let the RPC decide

    def _logs(self) -> str:
        try:
            out, err = self.container.get_logs()
            return (out + err).decode(errors="replace")[-4000:]
        except Exception as e:
            return f"(no logs: {e})"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.container.stop()


def container_spec(kind: Kind, image: str = IMAGE) -> tuple[str, str, int]:
    """(image, command, port) of the container that runs `kind`."""
    return image, kind.container_command(), kind.container_port


def make_container(kind: Kind, image: str = IMAGE):
    """The testcontainers container for `kind` (not started). A plain DockerContainer for
    both: testcontainers' own PubSubContainer cannot even be imported without
    google-cloud-datastore (its package imports the Datastore container too). Creating one
    already asks the Docker engine for its API version."""
    from testcontainers.core.container import DockerContainer

    image, command, port = container_spec(kind, image)
    container = DockerContainer(image)
    container.with_exposed_ports(port)
    container.with_command(command)
    return container


def choose_runner(kind: Kind) -> tuple[str, Path | None]:
    """("local", binary) where the binary and java are installed, else ("container", None)
    where a Docker engine answers, else EmulatorUnavailable naming what is missing."""
    binary = find_binary(kind)
    if binary is not None and shutil.which("java") is not None:
        return "local", binary
    if docker_available():
        return "container", None
    missing = (
        f"the {kind.name} emulator binary ({kind.binary} under "
        f"{', '.join(str(r) for r in sdk_roots())})"
        if binary is None
        else "java (the emulators are Java programs)"
    )
    component = "pubsub-emulator beta" if kind.name == "pubsub" else "cloud-firestore-emulator"
    raise EmulatorUnavailable(
        f"{missing} is not installed and no Docker engine answers: install it "
        f"(gcloud components install {component}) or start Docker"
    )


def start_emulator(kind: Kind, workdir: Path, java_options: str = JAVA_TOOL_OPTIONS) -> Emulator:
    """Start `kind` locally, else through Docker, else raise EmulatorUnavailable.
    `java_options`: the JVM flags of a local emulator (tests: a 256 MB heap; the benchmark's
    26,000 shard documents need more)."""
    runner, binary = choose_runner(kind)
    if runner == "local":
        assert binary is not None
        return LocalEmulator(kind, binary, workdir, java_options)
    return ContainerEmulator(kind)


def _session_emulator(kind: Kind, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    try:
        emulator = start_emulator(kind, tmp_path_factory.mktemp(f"{kind.name}-emulator"))
    except EmulatorUnavailable as e:
        pytest.skip(str(e))
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    yield from _session_emulator(PUBSUB, tmp_path_factory)


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    yield from _session_emulator(FIRESTORE, tmp_path_factory)


@pytest.fixture
def pubsub_project(pubsub_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Pub/Sub project on the emulator; PUBSUB_EMULATOR_HOST is set for this test
    (and inherited by the processes it spawns)."""
    for k, v in pubsub_emulator.env().items():
        monkeypatch.setenv(k, v)
    return fresh_project_id()


@pytest.fixture
def firestore_project(firestore_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Firestore project on the emulator; FIRESTORE_EMULATOR_HOST is set for this test."""
    for k, v in firestore_emulator.env().items():
        monkeypatch.setenv(k, v)
    return fresh_project_id()

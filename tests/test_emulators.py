"""The emulator fixtures themselves: the process group really goes (java included), a missing
binary is named, and the Docker path is built right (import- and argument-checked only: this
machine has no Docker engine, see docs/backends.md)."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

from tests import emulators
from tests.emulators import FIRESTORE, PUBSUB, EmulatorUnavailable, LocalEmulator


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
            except ProcessLookupError:
                pass
    return members


def test_stopping_firestore_kills_java_under_its_start_script(tmp_path: Path):
    """The Firestore start script is bash that runs java as a child (no exec): killing the
    script alone would leave java serving. stop() kills the whole process group."""
    binary = emulators.find_binary(FIRESTORE)
    if binary is None:
        pytest.skip(f"no Firestore emulator binary ({FIRESTORE.binary})")
    emu = LocalEmulator(FIRESTORE, binary, tmp_path)
    try:
        members = _group_members(emu.proc.pid)
        assert len(members) >= 2, "expected the start script and java in one process group"
        assert emu.startup_s > 0 and emu.env() == {"FIRESTORE_EMULATOR_HOST": emu.host}
    finally:
        emu.stop()
    assert _group_members(emu.proc.pid) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(emu.proc.pid, 0)
    assert (tmp_path / "firestore-emulator.log").stat().st_size > 0  # output went to a file


def test_a_missing_binary_without_docker_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(emulators, "find_binary", lambda kind: None)
    monkeypatch.setattr(emulators, "docker_available", lambda: False)
    for kind in (PUBSUB, FIRESTORE):
        with pytest.raises(EmulatorUnavailable, match=re.escape(kind.binary)):
            emulators.choose_runner(kind)


def test_a_missing_binary_with_docker_uses_the_container(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(emulators, "find_binary", lambda kind: None)
    monkeypatch.setattr(emulators, "docker_available", lambda: True)
    assert emulators.choose_runner(PUBSUB) == ("container", None)
    monkeypatch.setattr(emulators, "find_binary", lambda kind: Path("/bin/true"))
    monkeypatch.setattr(emulators.shutil, "which", lambda name: None)  # no java
    assert emulators.choose_runner(FIRESTORE) == ("container", None)


def test_no_docker_engine_here_is_detected():
    if Path("/var/run/docker.sock").exists():
        pytest.skip("a Docker socket exists on this machine")
    assert emulators.docker_available() is False


def test_container_arguments_match_what_the_image_and_testcontainers_take():
    """What can be checked without a Docker engine: the commands Google's image runs (gcloud's
    own flags), the ports, and that testcontainers' DockerContainer takes the calls we make."""
    from testcontainers.core.container import DockerContainer

    image, command, port = emulators.container_spec(PUBSUB)
    assert image == "google/cloud-sdk:emulators"
    assert command == "gcloud beta emulators pubsub start --host-port=0.0.0.0:8085" and port == 8085
    image, command, port = emulators.container_spec(FIRESTORE)
    assert command.split() == [
        "gcloud", "emulators", "firestore", "start",
        "--database-mode=firestore-native", "--host-port=0.0.0.0:8080",
    ]  # fmt: skip
    assert port == 8080
    for method, params in {
        "with_exposed_ports": ["ports"],
        "with_command": ["command"],
        "get_exposed_port": ["port"],
        "get_container_host_ip": [],
        "get_logs": [],
        "start": [],
        "stop": ["force", "delete_volume"],
        "reload": [],
    }.items():
        sig = inspect.signature(getattr(DockerContainer, method))
        assert list(sig.parameters)[1:] == params, (method, sig)
    assert isinstance(inspect.getattr_static(DockerContainer, "status"), property)
    assert "image" in inspect.signature(DockerContainer).parameters


def test_local_commands_use_the_emulators_own_flags():
    assert PUBSUB.command(Path("/x/ps"), 1234) == ["/x/ps", "--host=127.0.0.1", "--port=1234"]
    assert FIRESTORE.command(Path("/x/fs"), 99) == [
        "/x/fs", "start", "--host=127.0.0.1", "--port=99", "--database-mode=firestore-native",
    ]  # fmt: skip
    assert emulators.JAVA_TOOL_OPTIONS == "-Xmx256m -XX:+UseSerialGC"

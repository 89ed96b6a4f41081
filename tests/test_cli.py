"""The command line as a person uses it: help that teaches, the demo, status, exit codes."""

import json
import subprocess
import sys
from importlib.metadata import version

import pytest

from dvid2ng.dispatcher.cli import main
from tests.exports import make_export


def test_help_explains_commands_and_exit_codes():
    out = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for word in ("run", "demo", "status", "exit codes", "130"):
        assert word in out.stdout
    run_help = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "run", "--help"],
        capture_output=True,
        text=True,
    )
    for word in ("--scales", "--supervoxels", "--workers", "resumes", "examples"):
        assert word in run_help.stdout


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert (
        subprocess.run(
            [sys.executable, "-m", "dvid2ng.dispatcher.cli", "run", "a", "b"], capture_output=True
        ).returncode
        == 2
    )
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    assert main(["run", str(tmp_path), str(tmp_path / "out"), "--spec", str(spec)]) == 2
    assert "'scales' must be a non-empty list" in capsys.readouterr().err


def test_demo_converts_and_verifies(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "match the source labels" in err
    assert " view " in err and "--segments" in err  # how to see it
    assert (tmp_path / "demo/volume/info").exists()
    # running it again in the same folder starts over cleanly
    assert main(["demo", str(tmp_path / "demo"), "--workers", "1"]) == 0


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        main(["demo", str(tmp_path)])
    assert "not empty" in str(e.value)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "--version"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"dvid2ng {version('dvid2ng')}"


def test_status_json(tmp_path, capsys):
    export = make_export(tmp_path, csv_layout="legacy")
    dest = tmp_path / "vol"
    assert (
        main(
            [
                "run",
                str(export.source),
                str(dest),
                "--spec",
                str(export.spec_path),
                "--scales",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["status", str(dest), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["finished"] is True
    assert status["counts"]["failed"] == 0
    assert status["counts"]["done"] + status["counts"]["empty"] == len(
        list((export.source / "s1").glob("*.arrow"))
    )
    assert status["chunks_done"] == status["chunks_expected"] > 0
    assert status["unplanned_scales"] == [0]  # the spec's s0 was left out by --scales 1
    assert main(["status", str(dest)]) == 0
    text = capsys.readouterr().out
    assert "scales 0 of the spec have no data yet" in text and "finished" in text
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "no conversion state" in capsys.readouterr().err

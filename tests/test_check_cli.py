"""The validate-dvid / verify / run --z-compress command lines: help that teaches, argument
errors with exit code 2, and the light CLI module agreeing with the schema constants."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dvid2ng.dispatcher import check_cli
from dvid2ng.dispatcher.cli import main
from dvid2ng.schemas.spec import Z_COMPRESS_VALUES
from dvid2ng.worker.shard_reader import DEFAULT_WINDOW


def _help(*cmd: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", *cmd, "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    return out.stdout


def test_help_teaches():
    top = _help()
    assert "validate-dvid" in top and "verify" in top
    v = _help("verify")
    for word in (
        "present",
        "missing",
        "empty-source",
        "unexpected",
        "corrupt",
        "--values",
        "byte ranges",
        "exit codes",
        "examples",
        "gs://",
        "--z-compress",
    ):
        assert word in v, word
    d = _help("validate-dvid")
    for word in ("--sample", "collide", "CSV index", "exit codes", "--z-compress", "--jobs"):
        assert word in d, word
    assert "--z-compress" in _help("run")


def test_constants_agree():
    assert check_cli.Z_COMPRESS_VALUES == Z_COMPRESS_VALUES
    assert check_cli.DEFAULT_WINDOW == DEFAULT_WINDOW


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "a", "b", "--z-compress", "2"],
        ["verify", "a", "b", "--values", "0"],
        ["verify", "a", "b", "--supervoxels", "--labels"],
        ["validate-dvid", "a"],
        ["validate-dvid", "a", "--spec", "s", "--sample", "x"],
        ["run", "a", "b", "--spec", "s", "--z-compress", "5"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    capsys.readouterr()

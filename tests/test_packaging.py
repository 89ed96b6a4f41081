"""dvid2ng installs as ONE package, `dvid2ng`, whatever else is installed beside it.

PyPI has packages named `kernels`, `backends`, `schemas`, `worker` and `dispatcher`; if our
folders were installed under those names they would shadow or mix with them.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE_FOLDERS = ("schemas", "kernels", "worker", "dispatcher", "backends", "dvidexport")


def _python_files():
    for folder in (*PACKAGE_FOLDERS, "tests", "bench"):
        yield from sorted((REPO_ROOT / folder).rglob("*.py"))


def test_no_module_imports_a_top_level_package_name():
    """Every import of our own code goes through `dvid2ng.` (an `import kernels` would pick up
    whatever `kernels` is installed)."""
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in PACKAGE_FOLDERS:
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {name}")
    assert not offenders, "imports that bypass the dvid2ng package:\n" + "\n".join(offenders)


@pytest.fixture(scope="module")
def impostors(tmp_path_factory) -> Path:
    """A folder of stand-in top-level packages with our folder names, each failing on import."""
    root = tmp_path_factory.mktemp("impostors")
    for name in PACKAGE_FOLDERS:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f"raise ImportError('the unrelated PyPI package {name!r} was imported')\n"
        )
    return root


def test_every_module_imports_beside_packages_with_our_folder_names(impostors, tmp_path):
    """With foreign `kernels`, `schemas`, ... first on sys.path, all of dvid2ng still imports
    and the CLI runs (run from a folder that is not the checkout, as a user would)."""
    modules = [
        ".".join(("dvid2ng", *path.relative_to(REPO_ROOT).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for folder in PACKAGE_FOLDERS
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
    ]
    code = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "print(len(sys.argv) - 1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(impostors)}
    out = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(modules) >= 20
    cli = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("dvid2ng ")


@pytest.mark.slow
def test_wheel_contains_only_the_dvid2ng_package(tmp_path):
    """Build the wheel (no network: the venv's setuptools) from a copy of the checkout (setuptools
    leaves a build/ folder behind) and list it."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO_ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".tools", ".git", "build", "*.egg-info", "__pycache__"
        ),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("dvid2ng-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"dvid2ng"}, sorted(tops)
    for folder in PACKAGE_FOLDERS:
        assert f"dvid2ng/{folder}/__init__.py" in names
    assert "dvid2ng/schemas/json/task.schema.json" in names  # package data moved along
    assert not any(n.startswith("dvid2ng/tests") or "/bench/" in n for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "dvid2ng = dvid2ng.dispatcher.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )

"""kernels/cache_load.py: cached kernels loaded without Numba's registry refresh (and without
importing modules for their environments' globals) give the same results, and a compile
afterwards still gets every registry. Each case is a fresh process (the
patch and Numba's registries are per process); the first fills Numba's cache the normal way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = r"""
import hashlib, json, os, sys
import numpy as np
from dvid2ng.kernels.cache_load import load_cached_lightly

light = load_cached_lightly() if sys.argv[1] == "light" else False
from numba.core import entrypoints
from dvid2ng import kernels as K
from dvid2ng.kernels import _tiny_block, dvid_block_to_cseg

blk = _tiny_block()
hashes = []
for labels, extent in ((None, None), (np.array([1, 1, 0], np.uint64), (9, 16, 3))):
    cseg, nonzero = dvid_block_to_cseg(blk, labels, extent)
    hashes.append([hashlib.sha256(bytes(cseg)).hexdigest(), bool(nonzero)])
K._warm_up_scan()
import pickle
from numba.core import environment

bare = [e for e in list(environment.Environment._memo.values()) if len(e.globals) == 1]
pickled = [pickle.dumps(e) for e in bare]
before = {
    "light": light,
    "hashes": hashes,
    "registries_loaded": "numba.np.linalg" in sys.modules,
    "entry_points_scanned": entrypoints._already_initialized,
    "arrayobj_imported": "numba.np.arrayobj" in sys.modules,
    "bare_env_modules": sorted({e.globals["__name__"] for e in bare}),
    "bare_envs_pickle_as_numba": all(b"numba.core.environment" in p for p in pickled),
    "bare_envs_unpickle_to_themselves": all(
        pickle.loads(p) is e for p, e in zip(pickled, bare)
    ),
}
from dvid2ng.kernels import nrt_cache
from numba.core.registry import cpu_target

before["nrt_source"] = nrt_cache.last_source
before["nrt_file"] = str(nrt_cache.cache_file(cpu_target.target_context))

import numba

@numba.njit
def needs_registries(n):  # numba.np.arraymath's lowering: only there after a refresh
    return np.median(np.arange(n, dtype=np.float64))

@numba.njit
def allocates_and_raises(n):  # arrayobj's np.empty, and an exception from the environment
    a = np.empty(n, np.int64)
    if n > 3:
        raise ValueError("too many", n)
    a[:] = n
    return a.sum()

try:
    allocates_and_raises(5)
    raised = None
except ValueError as e:
    raised = list(e.args)
after = {
    "compiled": needs_registries(4),
    "allocated": int(allocates_and_raises(3)),
    "raised": raised,
    "registries_loaded": "numba.np.linalg" in sys.modules,
    "entry_points_scanned": entrypoints._already_initialized,
}
print(json.dumps({"before": before, "after": after}))
"""


def _child(mode: str, **env: str) -> dict:
    import os

    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def normal() -> dict:
    return _child("normal")  # also fills the cache the light process loads from


@pytest.fixture(scope="module")
def light(normal) -> dict:
    return _child("light")


def test_normal_load_refreshes_the_registries(normal):
    """The control: Numba's own cache load imports the registries and scans entry points
    before the first kernel runs, which is what the light load must avoid."""
    assert normal["before"]["light"] is False
    assert normal["before"]["registries_loaded"]
    assert normal["before"]["entry_points_scanned"]


def test_light_load_skips_the_refresh_and_gives_the_same_bytes(normal, light):
    assert light["before"]["light"] is True
    assert not light["before"]["registries_loaded"], "the cache hit refreshed the registries"
    assert not light["before"]["entry_points_scanned"]
    assert light["before"]["hashes"] == normal["before"]["hashes"]


def test_light_load_does_not_import_modules_for_environment_globals(normal, light):
    """The transcoder's cached environments include one of numba.np.arrayobj (np.empty):
    Numba's load imports that module (and 16 more) for its globals, the light load does not,
    and such a bare environment still pickles as numba's own and unpickles to itself."""
    assert normal["before"]["arrayobj_imported"]  # the control
    assert normal["before"]["bare_env_modules"] == []
    assert not light["before"]["arrayobj_imported"]
    assert "numba.np.arrayobj" in light["before"]["bare_env_modules"]
    assert light["before"]["bare_envs_pickle_as_numba"]
    assert light["before"]["bare_envs_unpickle_to_themselves"]


def test_a_compile_after_a_light_load_gets_every_registry(normal, light):
    assert light["after"]["registries_loaded"]
    assert light["after"]["entry_points_scanned"]
    assert light["after"]["compiled"] == normal["after"]["compiled"]
    assert light["after"]["compiled"] == 1.5
    # a new function using what a bare environment stands for: allocation and exceptions
    assert light["after"]["allocated"] == normal["after"]["allocated"] == 9
    assert light["after"]["raised"] == normal["after"]["raised"] == ["too many", 5]


def test_the_light_load_can_be_turned_off(normal):
    off = _child("light", DVID2NG_LIGHT_CACHE_LOAD="0")
    assert off["before"]["light"] is False
    assert off["before"]["registries_loaded"]


def test_the_runtime_is_compiled_once_then_loaded_from_its_file(normal, light):
    """kernels/nrt_cache.py: Numba's own load compiles the NRT and writes no file; a light
    load writes it if missing, the next one loads it, and both compute the same bytes and
    compile and run new functions (allocation, exceptions) the same."""
    from pathlib import Path

    assert normal["before"]["nrt_source"] is None
    assert light["before"]["nrt_source"] in ("file", "compiled")
    assert Path(light["before"]["nrt_file"]).is_file()
    again = _child("light")
    assert again["before"]["nrt_source"] == "file"
    assert again["before"]["hashes"] == normal["before"]["hashes"]
    assert again["after"] == normal["after"]


def test_a_damaged_runtime_file_is_compiled_again_and_replaced(light):
    from pathlib import Path

    path = Path(light["before"]["nrt_file"])
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    got = _child("light")
    assert got["before"]["nrt_source"] == "compiled"
    assert got["after"]["allocated"] == 9 and got["after"]["raised"] == ["too many", 5]
    assert path.read_bytes() != bytes(damaged)
    assert _child("light")["before"]["nrt_source"] == "file"

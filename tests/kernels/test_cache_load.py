"""kernels/cache_load.py: cached kernels loaded without Numba's registry refresh give the same
results, and a compile afterwards still gets every registry. Each case is a fresh process (the
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
before = {
    "light": light,
    "hashes": hashes,
    "registries_loaded": "numba.np.linalg" in sys.modules,
    "entry_points_scanned": entrypoints._already_initialized,
}

import numba

@numba.njit
def needs_registries(n):  # numba.np.arraymath's lowering: only there after a refresh
    return np.median(np.arange(n, dtype=np.float64))

after = {
    "compiled": needs_registries(4),
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


def test_a_compile_after_a_light_load_gets_every_registry(normal, light):
    assert light["after"]["registries_loaded"]
    assert light["after"]["entry_points_scanned"]
    assert light["after"]["compiled"] == normal["after"]["compiled"]
    assert light["after"]["compiled"] == 1.5


def test_the_light_load_can_be_turned_off(normal):
    off = _child("light", DVID2NG_LIGHT_CACHE_LOAD="0")
    assert off["before"]["light"] is False
    assert off["before"]["registries_loaded"]

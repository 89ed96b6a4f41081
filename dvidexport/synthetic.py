"""Synthetic s0-like segmentation and agglomeration for the demo, tests and benchmarks.

`synthetic_volume` is a Voronoi tessellation of jittered lattice seed points: convex "cells"
sized so that a 64^3 block meets roughly `n_labels` of them (~20-45 for the default 30) and
most 8^3 sub-blocks hold 1-4 labels. Cells are computed at half resolution (2^3-voxel
granules, which still cut sub-blocks unevenly) in a parallel Numba kernel: 512^3 takes 1-3 s.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _voronoi(out, seeds, ids, spacing, granule):
    """out[z, y, x] = ids of the nearest seed (searching the 3^3 neighbouring lattice cells),
    evaluated once per granule^3 voxels."""
    nz, ny, nx = out.shape
    lz, ly, lx = ids.shape
    cz_n = (nz + granule - 1) // granule
    cy_n = (ny + granule - 1) // granule
    cx_n = (nx + granule - 1) // granule
    half = 0.5 * granule
    for gz in prange(cz_n):
        pz = gz * granule + half
        for gy in range(cy_n):
            py = gy * granule + half
            for gx in range(cx_n):
                px = gx * granule + half
                iz = int(pz / spacing)
                iy = int(py / spacing)
                ix = int(px / spacing)
                best = 1e30
                label = np.uint64(0)
                for dz in range(-1, 2):
                    z = iz + dz
                    if z < 0 or z >= lz:
                        continue
                    for dy in range(-1, 2):
                        y = iy + dy
                        if y < 0 or y >= ly:
                            continue
                        for dx in range(-1, 2):
                            x = ix + dx
                            if x < 0 or x >= lx:
                                continue
                            ddz = seeds[z, y, x, 0] - pz
                            ddy = seeds[z, y, x, 1] - py
                            ddx = seeds[z, y, x, 2] - px
                            d = ddz * ddz + ddy * ddy + ddx * ddx
                            if d < best:
                                best = d
                                label = ids[z, y, x]
                for vz in range(gz * granule, min(nz, gz * granule + granule)):
                    for vy in range(gy * granule, min(ny, gy * granule + granule)):
                        for vx in range(gx * granule, min(nx, gx * granule + granule)):
                            out[vz, vy, vx] = label


def _unique_ids(rng: np.random.Generator, n: int, big_ids: bool) -> np.ndarray:
    """n distinct non-zero uint64 ids; with big_ids about a third are >= 2^63."""
    got = np.zeros(0, dtype=np.uint64)
    while len(got) < n:
        m = 2 * (n - len(got)) + 16
        if big_ids:
            small = rng.integers(1, 2**40, size=m, dtype=np.uint64)
            big = rng.integers(2**63, 2**64 - 1, size=m, dtype=np.uint64, endpoint=True)
            cand = np.where(rng.random(m) < 1 / 3, big, small)
        else:
            cand = rng.integers(1, 2**32, size=m, dtype=np.uint64)
        got = np.unique(np.concatenate([got, cand]))
    return rng.permutation(got)[:n]


def synthetic_volume(
    shape_zyx: tuple[int, int, int],
    *,
    n_labels: int = 30,
    seed: int = 0,
    big_ids: bool = True,
    background_fraction: float = 0.2,
) -> np.ndarray:
    """A uint64 (z, y, x) segmentation of Voronoi cells, about `n_labels` distinct labels per
    64^3 block; a `background_fraction` of the cells are 0. Deterministic for a given seed."""
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"shape_zyx must be 3 positive sizes, got {shape_zyx}")
    if n_labels < 1:
        raise ValueError(f"n_labels must be >= 1, got {n_labels}")
    rng = np.random.default_rng(seed)
    # a 64^3 block meets about (64 / spacing + 1)^3 cells
    spacing = 64.0 / max(n_labels ** (1 / 3) - 1.0, 0.5)
    lattice = tuple(int(np.ceil(s / spacing)) + 1 for s in shape)
    base = np.stack(np.meshgrid(*[np.arange(n) for n in lattice], indexing="ij"), axis=-1)
    seeds = ((base + rng.random(base.shape)) * spacing).astype(np.float64)
    ncells = int(np.prod(lattice))
    ids = _unique_ids(rng, ncells, big_ids)
    ids[rng.random(ncells) < background_fraction] = 0
    ids = ids.reshape(lattice)
    out = np.empty(shape, dtype=np.uint64)
    _voronoi(out, np.ascontiguousarray(seeds), ids, spacing, 2)
    return out


def synthetic_agglomeration(
    supervoxel_ids: np.ndarray, seed: int = 0, max_group: int = 4
) -> Callable[[np.ndarray], np.ndarray]:
    """A many-to-one supervoxel -> body mapping over the non-zero `supervoxel_ids`: random
    groups of 1..max_group supervoxels, each body named after one of its members (as DVID body
    ids are). The returned function maps an array of supervoxels; 0 and ids it does not know map
    to themselves (DVID: unmapped supervoxels are their own body). It carries the mapping as
    `.keys` (sorted supervoxels) and `.values` (their bodies)."""
    ids = np.unique(np.asarray(supervoxel_ids, dtype=np.uint64).reshape(-1))
    ids = ids[ids != 0]
    rng = np.random.default_rng(seed)
    members = rng.permutation(ids)
    sizes = rng.integers(1, max_group + 1, size=len(members) + 1)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    starts = starts[starts < len(members)]
    group = np.zeros(len(members), dtype=np.int64)
    group[starts[1:]] = 1
    group = np.cumsum(group)
    bodies = members[starts][group]  # first member names the body
    order = np.argsort(members)
    keys = members[order]
    values = bodies[order]

    def labels_of(supervoxels: np.ndarray) -> np.ndarray:
        sv = np.asarray(supervoxels, dtype=np.uint64)
        if len(keys) == 0:
            return sv.copy()
        pos = np.minimum(np.searchsorted(keys, sv), len(keys) - 1)
        return np.where(keys[pos] == sv, values[pos], sv)

    labels_of.keys = keys  # type: ignore[attr-defined]
    labels_of.values = values  # type: ignore[attr-defined]
    return labels_of

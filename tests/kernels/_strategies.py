"""Hypothesis strategies shared by the kernel tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from tests.kernels.reference import assemble_dvid_block

U64MAX = 2**64 - 1

label_values = st.one_of(
    st.just(0),
    st.integers(1, 40),
    st.integers(2**63 - 2, 2**63 + 2),
    st.integers(U64MAX - 3, U64MAX),
    st.integers(0, U64MAX),
)


def _fill(rng: np.random.Generator, shape, alphabet: np.ndarray, kind: str) -> np.ndarray:
    n = len(alphabet)
    if kind == "noise":
        idx = rng.integers(0, n, size=shape)
    elif kind == "blobs":  # coarse random grid, upsampled: spatially coherent regions
        cell = int(rng.integers(2, 9))
        coarse = rng.integers(0, n, size=tuple(-(-s // cell) for s in shape))
        idx = (
            coarse.repeat(cell, 0)
            .repeat(cell, 1)
            .repeat(cell, 2)[: shape[0], : shape[1], : shape[2]]
        )
    elif kind == "slabs":  # label changes along x only, at random positions
        cuts = np.sort(rng.integers(0, shape[2] + 1, size=n - 1)) if n > 1 else np.zeros(0, int)
        idx = np.broadcast_to(np.searchsorted(cuts, np.arange(shape[2]), side="right"), shape)
    else:  # "mostly": one dominant label with sparse others
        idx = np.where(rng.random(shape) < 0.97, 0, rng.integers(0, n, size=shape))
    return alphabet[np.asarray(idx)]


@st.composite
def label_volumes(draw, shape=None, max_side: int = 20, max_labels: int = 9):
    """uint64 ZYX volumes: small alphabets (sometimes large ones), ids over the whole uint64
    range incl. 0 and 2**64-1, several spatial patterns."""
    if shape is None:
        shape = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    n = draw(st.one_of(st.integers(1, max_labels), st.sampled_from([17, 40, 300])))
    alphabet = draw(st.lists(label_values, min_size=1, max_size=n, unique=True))
    kind = draw(st.sampled_from(["noise", "blobs", "slabs", "mostly"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(_fill(rng, shape, np.array(alphabet, dtype=np.uint64), kind))


@st.composite
def dvid_grids(draw, max_g: int = 3):
    return tuple(draw(st.integers(1, max_g)) for _ in range(3))


@st.composite
def dvid_volumes(draw, max_g: int = 3, max_labels: int = 9):
    """Volumes whose sides are multiples of 8 (encodable as one DVID block)."""
    gx, gy, gz = draw(dvid_grids(max_g))
    return draw(label_volumes(shape=(8 * gz, 8 * gy, 8 * gx), max_labels=max_labels))


@st.composite
def assembled_blocks(draw, max_g: int = 2):
    """Valid DVID blocks with structure DVID's encoder never writes: empty (n = 0) sub-blocks,
    palette entries no voxel uses, repeated palette indices, stale table entries, large
    palettes. Returns (block bytes, N)."""
    grid = draw(dvid_grids(max_g))
    nsb = grid[0] * grid[1] * grid[2]
    n_table = draw(st.integers(2, 40))
    table = draw(st.lists(label_values, min_size=n_table, max_size=n_table))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    palettes, values = [], []
    for _ in range(nsb):
        kind = draw(st.sampled_from(["empty", "solid", "small", "small", "small", "unused", "big"]))
        if kind == "empty":
            palettes.append([])
            values.append(None)
            continue
        if kind == "solid":
            palettes.append([int(rng.integers(0, n_table))])
            values.append(None)
            continue
        n = {
            "small": int(rng.integers(2, 17)),
            "unused": int(rng.integers(2, 17)),
            "big": int(rng.integers(17, 70)),
        }[kind]
        pal = rng.integers(0, n_table, size=n).tolist()  # repeats allowed
        if kind == "unused":  # some entries never referenced by a voxel
            k = int(rng.integers(1, n + 1))
            used = rng.choice(n, size=k, replace=False)
            vals = used[rng.integers(0, k, size=512)]
        else:
            vals = rng.integers(0, n, size=512)
            if rng.random() < 0.5:  # coherent runs
                vals = np.repeat(vals[:64], 8)
        palettes.append(pal)
        values.append(vals)
    return assemble_dvid_block(grid, table, palettes, values), n_table

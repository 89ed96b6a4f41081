"""Helpers for the pyramid tests: specs with several shards at every scale, an s0 written
straight through TensorStore, and an independent numpy reference of 2x2x2 downsampling."""

from __future__ import annotations

import math

import numpy as np
import tensorstore as ts

from dvid2ng.schemas.spec import VolumeSpec
from dvid2ng.worker.output import kvstore_spec, write_info

U64MAX = np.uint64(2**64 - 1)


def pyramid_spec(
    size_xyz: tuple[int, int, int],
    chunks: list[int],
    *,
    preshift: int = 2,
    minishard: int = 1,
) -> dict:
    """A spec of len(chunks) scales, each half the size of the one above (rounded up), cubic
    chunks of the given sides, and sharding bits that add up (so most scales have several
    shards). preshift + minishard = 3 gives 2x2x2-chunk shards, cubic as DVID's export
    naming needs."""
    scales = []
    size = list(size_xyz)
    for i, c in enumerate(chunks):
        grid = [math.ceil(s / c) for s in size]
        total = sum(max(0, (g - 1).bit_length()) for g in grid)
        p = min(preshift, total)
        m = min(minishard, total - p)
        scales.append(
            {
                "key": f"s{i}",
                "size": list(size),
                "resolution": [8 * 2**i] * 3,
                "voxel_offset": [0, 0, 0],
                "chunk_sizes": [[c, c, c]],
                "encoding": "compressed_segmentation",
                "compressed_segmentation_block_size": [8, 8, 8],
                "sharding": {
                    "@type": "neuroglancer_uint64_sharded_v1",
                    "hash": "identity",
                    "preshift_bits": p,
                    "minishard_bits": m,
                    "shard_bits": total - p - m,
                    "minishard_index_encoding": "gzip",
                    "data_encoding": "gzip",
                },
            }
        )
        size = [(s + 1) // 2 for s in size]
    return {"type": "segmentation", "data_type": "uint64", "num_channels": 1, "scales": scales}


def write_scale(dest: str, spec: VolumeSpec, scale: int, vol_zyx: np.ndarray) -> None:
    """Write a whole scale through TensorStore's own neuroglancer_precomputed writer."""
    write_info(dest, spec.info())
    store = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": kvstore_spec(dest), "scale_index": scale},
        write=True,
    ).result()
    with ts.Transaction() as txn:
        store.with_transaction(txn)[...] = vol_zyx.transpose(2, 1, 0)[..., np.newaxis]


def mode_downsample_numpy(vol: np.ndarray, method: str = "mode") -> np.ndarray:
    """2x2x2 vote in plain numpy, written apart from the kernel: pad to even sizes, mark the
    padding invalid, count equal valid values per window, take the smallest of the most
    frequent (`dvid`: zeros get no votes, all-zero windows give 0)."""
    pads = [(0, s % 2) for s in vol.shape]
    values = np.pad(vol, pads)
    valid = np.pad(np.ones(vol.shape, bool), pads)
    nz, ny, nx = (s // 2 for s in values.shape)

    def windows(a: np.ndarray) -> np.ndarray:
        return a.reshape(nz, 2, ny, 2, nx, 2).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)

    w, ok = windows(values), windows(valid)
    out = np.empty(len(w), np.uint64)
    step = 1 << 16
    for i in range(0, len(w), step):
        wv, okv = w[i : i + step], ok[i : i + step]
        voter = okv if method == "mode" else okv & (wv != 0)
        counts = ((wv[:, :, None] == wv[:, None, :]) & voter[:, None, :]).sum(axis=2)
        counts = np.where(voter, counts, 0)
        top = counts.max(axis=1, keepdims=True)
        best = np.where((counts == top) & voter, wv, U64MAX).min(axis=1)
        out[i : i + step] = np.where(top[:, 0] == 0, np.uint64(0), best)
    return out.reshape(nz, ny, nx)


def reference_pyramid(s0: np.ndarray, n_scales: int, method: str = "mode") -> list[np.ndarray]:
    out = [s0]
    for _ in range(1, n_scales):
        out.append(mode_downsample_numpy(out[-1], method))
    return out

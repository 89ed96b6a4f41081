"""DVID compressed label block encoder (DVID `labels.MakeBlock` + `MarshalBinary`).

Byte layout (formats reference 5.1), all little-endian::

    gx gy gz N (uint32)  table[N] (uint64)            -- a "solid" block ends here when N == 1
    NumSBLabels[gx*gy*gz] (uint16)  SBIndices[S] (uint32)  SBValues (MSB-first bit stream)

Encoder behaviour follows MakeBlock (5.2): each 8^3 sub-block's palette lists its labels in
order of first appearance scanning z, y, x; the block table is the union of the palettes; a
sub-block with n >= 2 labels stores bit_length(n - 1) bits per voxel, MSB first, and the bit
position is rounded up to a byte after each sub-block. DVID's table order comes from Go map
iteration (random); here it is `table_order` if given, a shuffle by `rng` if given, else order
of first appearance.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SUB = 8  # sub-block side
SUB_VOXELS = SUB * SUB * SUB


@njit(cache=True, nogil=True)
def _hash_slot(key, shift):
    return np.int64((key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift))


@njit(cache=True, nogil=True)
def _scan_into(volume, logsize, keys, vals, labels, stamp, local, counts, palette, values):
    """One attempt of `_scan` with fixed capacities. Returns (labels, palette entries) used,
    or (-1, -1) when `labels` or the hash table is full, (-2, -2) when `palette` is full.
    No array is reallocated here: reassigning arrays inside the voxel loop makes Numba
    reference-count them on every iteration, which costs ~20x."""
    nz, ny, nx = volume.shape
    gz, gy, gx = nz // SUB, ny // SUB, nx // SUB
    cap = 1 << logsize
    shift = 64 - logsize
    max_labels = min(labels.shape[0], cap // 2)
    max_pal = palette.shape[0]
    nlabels = 0
    npal = 0
    sb = 0
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                n = 0
                prev_label = np.uint64(0)
                prev_local = -1
                base = sb * SUB_VOXELS
                k = 0
                for z in range(sz * SUB, sz * SUB + SUB):
                    for y in range(sy * SUB, sy * SUB + SUB):
                        for x in range(sx * SUB, sx * SUB + SUB):
                            label = volume[z, y, x]
                            if prev_local >= 0 and label == prev_label:
                                values[base + k] = prev_local
                                k += 1
                                continue
                            h = _hash_slot(label, shift)
                            while vals[h] >= 0 and keys[h] != label:
                                h = (h + 1) & (cap - 1)
                            idx = vals[h]
                            if idx < 0:
                                if nlabels == max_labels:
                                    return -1, -1
                                idx = nlabels
                                labels[idx] = label
                                stamp[idx] = -1
                                nlabels += 1
                                keys[h] = label
                                vals[h] = idx
                            if stamp[idx] != sb:
                                if npal == max_pal:
                                    return -2, -2
                                stamp[idx] = sb
                                local[idx] = n
                                palette[npal] = idx
                                npal += 1
                                n += 1
                            prev_local = local[idx]
                            prev_label = label
                            values[base + k] = prev_local
                            k += 1
                counts[sb] = n
                sb += 1
    return nlabels, npal


@njit(cache=True, nogil=True)
def _scan(volume):
    """Palettes and local indices of every sub-block.

    Returns (labels in order of first appearance, NumSBLabels, palette entries as first-appearance
    indices, local palette index of every voxel in sub-block order)."""
    nz, ny, nx = volume.shape
    nsb = (nz // SUB) * (ny // SUB) * (nx // SUB)
    nvox = nz * ny * nx
    counts = np.zeros(nsb, dtype=np.uint16)
    values = np.empty(nvox, dtype=np.uint16)
    logsize = 11
    max_labels = 1024
    max_pal = nsb * 4
    while True:
        cap = 1 << logsize
        keys = np.zeros(cap, dtype=np.uint64)
        vals = np.full(cap, -1, dtype=np.int64)
        labels = np.empty(max_labels, dtype=np.uint64)
        stamp = np.empty(max_labels, dtype=np.int64)
        local = np.empty(max_labels, dtype=np.int64)
        palette = np.empty(max_pal, dtype=np.int64)
        nl, npal = _scan_into(
            volume, logsize, keys, vals, labels, stamp, local, counts, palette, values
        )
        if nl == -1:
            logsize += 1
            max_labels *= 2
        elif nl == -2:
            max_pal = min(2 * max_pal, nvox)
        else:
            return labels[:nl].copy(), counts, palette[:npal].copy(), values


@njit(cache=True, nogil=True)
def _bits_for(n):
    if n < 2:
        return 0
    b = 0
    m = n - 1
    while m > 0:
        b += 1
        m >>= 1
    return b


@njit(cache=True, nogil=True)
def _pack(gx, gy, gz, table, counts, palette, position, values):
    """Serialise the block. `position[i]` = table index of first-appearance label i."""
    ntab = table.shape[0]
    nsb = counts.shape[0]
    npal = palette.shape[0]
    if ntab == 1:
        size = 16 + 8
    else:
        size = 16 + 8 * ntab + 2 * nsb + 4 * npal
        for i in range(nsb):
            size += (SUB_VOXELS * _bits_for(counts[i]) + 7) // 8
    out = np.zeros(size, dtype=np.uint8)
    hdr = np.array([gx, gy, gz, ntab], dtype=np.uint32)
    out[0:16] = hdr.view(np.uint8)
    out[16 : 16 + 8 * ntab] = table.view(np.uint8)
    if ntab == 1:
        return out
    p = 16 + 8 * ntab
    out[p : p + 2 * nsb] = counts.view(np.uint8)
    p += 2 * nsb
    idx = np.empty(npal, dtype=np.uint32)
    for j in range(npal):
        idx[j] = position[palette[j]]
    out[p : p + 4 * npal] = idx.view(np.uint8)
    p += 4 * npal
    for i in range(nsb):
        bits = _bits_for(counts[i])
        if bits == 0:
            continue
        acc = 0
        nacc = 0
        base = i * SUB_VOXELS
        for k in range(SUB_VOXELS):
            acc = (acc << bits) | values[base + k]
            nacc += bits
            while nacc >= 8:
                nacc -= 8
                out[p] = (acc >> nacc) & 0xFF
                p += 1
            acc &= (1 << nacc) - 1
        if nacc > 0:  # pad to the next byte
            out[p] = (acc << (8 - nacc)) & 0xFF
            p += 1
    return out


def encode_dvid_block(
    volume: np.ndarray,
    table_order: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> bytes:
    """Encode a uint64 ZYX volume (each side a multiple of 8, normally 64^3) as a DVID block.

    `table_order`, if given, must hold exactly the distinct labels of the volume and becomes the
    block's label table; otherwise the table is shuffled with `rng` (like Go map order) or, with
    neither, kept in order of first appearance.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-d (z, y, x), got shape {vol.shape}")
    if any(s % SUB or s == 0 for s in vol.shape):
        raise ValueError(f"volume sides must be positive multiples of {SUB}, got {vol.shape}")
    if vol.dtype != np.uint64:
        if not np.issubdtype(vol.dtype, np.integer):
            raise ValueError(f"volume must hold integers, got {vol.dtype}")
        vol = vol.astype(np.uint64)
    vol = np.ascontiguousarray(vol)
    nz, ny, nx = vol.shape
    gx, gy, gz = nx // SUB, ny // SUB, nz // SUB

    first, counts, palette, values = _scan(vol)
    n = len(first)
    if table_order is not None:
        table = np.asarray(table_order)
        if table.ndim != 1 or len(table) != n or not np.issubdtype(table.dtype, np.integer):
            raise ValueError(
                f"table_order must list the {n} distinct labels of the volume, got {len(table)}"
            )
        table = table.astype(np.uint64)
        order = np.argsort(table, kind="stable")
        sorted_table = table[order]
        if n > 1 and np.any(sorted_table[1:] == sorted_table[:-1]):
            raise ValueError("table_order holds a label twice")
        pos = np.searchsorted(sorted_table, first)
        pos = np.minimum(pos, n - 1)
        if not np.array_equal(sorted_table[pos], first):
            raise ValueError("table_order does not hold exactly the labels of the volume")
        position = order[pos].astype(np.int64)
    elif rng is not None:
        perm = rng.permutation(n)  # table[j] = first[perm[j]]
        table = first[perm]
        position = np.empty(n, dtype=np.int64)
        position[perm] = np.arange(n)
    else:
        table = first
        position = np.arange(n, dtype=np.int64)
    out = _pack(
        gx, gy, gz, np.ascontiguousarray(table, dtype=np.uint64), counts, palette, position, values
    )
    return out.tobytes()

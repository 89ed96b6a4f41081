"""Reference DVID block decoder for tests (plain numpy, written from formats reference 5.3).

Deliberately independent of the production kernels so that encoder tests check against the
specification rather than against another piece of our own code."""

from __future__ import annotations

import numpy as np


def block_table(block: bytes) -> np.ndarray:
    n = int(np.frombuffer(block, "<u4", 1, 12)[0])
    return np.frombuffer(block, "<u8", int(n), 16).copy()


def decode_dvid_block(block: bytes) -> np.ndarray:
    """DVID compressed label block -> uint64 volume (z, y, x)."""
    gx, gy, gz, n = (int(v) for v in np.frombuffer(block, "<u4", 4))
    table = np.frombuffer(block, "<u8", n, 16)
    out = np.zeros((8 * gz, 8 * gy, 8 * gx), dtype=np.uint64)
    if n == 0:
        raise ValueError("0 labels")
    if n == 1:
        assert len(block) == 24, len(block)
        out[:] = table[0]
        return out
    nsb = gx * gy * gz
    p = 16 + 8 * n
    counts = np.frombuffer(block, "<u2", nsb, p).astype(np.int64)
    p += 2 * nsb
    total = int(counts.sum())
    idx = np.frombuffer(block, "<u4", total, p)
    p += 4 * total
    bits_all = np.frombuffer(block, np.uint8, len(block) - p, p)
    bitstream = np.unpackbits(bits_all)  # MSB first
    bitpos = 0
    ip = 0
    sb = 0
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                c = int(counts[sb])
                pal = table[idx[ip : ip + c]]
                ip += c
                region = out[8 * sz : 8 * sz + 8, 8 * sy : 8 * sy + 8, 8 * sx : 8 * sx + 8]
                if c == 0:
                    region[:] = 0
                elif c == 1:
                    region[:] = pal[0]
                else:
                    b = (c - 1).bit_length()
                    chunk = bitstream[bitpos : bitpos + 512 * b].reshape(512, b).astype(np.int64)
                    weights = 1 << np.arange(b - 1, -1, -1)
                    v = chunk @ weights
                    assert v.max() < c
                    region[:] = pal[v].reshape(8, 8, 8)
                    bitpos += 512 * b
                    bitpos = (bitpos + 7) // 8 * 8
                sb += 1
    assert bitpos == 8 * len(bits_all), (bitpos, len(bits_all))
    return out

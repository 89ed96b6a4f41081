"""Arrow IPC record batch messages of a DVID export, scanned in bulk.

DVID writes one record batch per block, so a per-message Python decoder pays its fixed cost
(framing, two flatbuffers, a dozen checks) for every chunk. `scan_record_batches` walks the
messages of a buffer holding many of them and extracts, per row, the chunk coordinates and
where its label lists and zstd block lie in the buffer, applying the checks the reader's
Python path applies (framing, metadata version, layout against the schema, buffers inside the
body and 8-byte aligned, no nulls, offsets monotone and inside their buffers, equal label list
lengths, non-negative coordinates).

It never decides that input is bad: at the first message it does not fully understand (the
end-of-stream marker, anything that fails a check, compression, custom metadata, an empty
batch) it stops and reports where, and the caller decodes that one message with the Python
path, which either accepts it or raises the precise error. So the error messages stay those
of one implementation, and this one only has to be right about what it accepts.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "OUT_COLUMNS",
    "SCAN_BAIL",
    "SCAN_FULL",
    "SCAN_NEED_MORE",
    "scan_record_batches",
]

# scan status
SCAN_BAIL = 0  # the message at `pos` must be decoded by the Python path
SCAN_NEED_MORE = 1  # the message at `pos` does not end inside the buffer; `need` bytes from pos
SCAN_FULL = 2  # the output has no room for the next batch's rows

# columns of the output (one row per record)
C_X, C_Y, C_Z, C_LAB, C_SV, C_NLAB, C_BLOCK, C_BLEN, C_USIZE, C_MSG, C_MSIZE, C_ROW, C_BATCH = (
    range(13)
)
OUT_COLUMNS = 13

_RECORD_BATCH = 3
_METADATA_V5 = 4
_MAX_METADATA = 16 << 20


@njit(cache=True, nogil=True, inline="always")
def _u16(b, p):
    return np.int64(b[p]) | (np.int64(b[p + 1]) << 8)


@njit(cache=True, nogil=True, inline="always")
def _u32(b, p):
    return (
        np.int64(b[p])
        | (np.int64(b[p + 1]) << 8)
        | (np.int64(b[p + 2]) << 16)
        | (np.int64(b[p + 3]) << 24)
    )


@njit(cache=True, nogil=True, inline="always")
def _i32(b, p):
    v = _u32(b, p)
    return v - (np.int64(1) << 32) if v >= (np.int64(1) << 31) else v


@njit(cache=True, nogil=True, inline="always")
def _i64(b, p):
    v = np.int64(0)
    for k in range(7, -1, -1):
        v = (v << 8) | np.int64(b[p + k])
    return v


@njit(cache=True, nogil=True)
def _field(b, lo, hi, table, slot):
    """Absolute position of field `slot` of the flatbuffer table at `table` (inside [lo, hi)),
    0 when absent, -1 when the vtable does not lie inside the buffer."""
    if table < lo or table + 4 > hi:
        return -1
    vt = table - _i32(b, table)
    if vt < lo or vt + 4 > hi:
        return -1
    vsize = _u16(b, vt)
    if vsize < 4 or vsize % 2 or vt + vsize > hi:
        return -1
    entry = 4 + 2 * slot
    if entry + 2 > vsize:
        return 0
    rel = _u16(b, vt + entry)
    if rel == 0:
        return 0
    if table + rel >= hi:
        return -1
    return table + rel


@njit(cache=True, nogil=True)
def _slots_beyond(b, lo, hi, table, first):
    """True if the table at `table` sets any field from slot `first` on."""
    vt = table - _i32(b, table)
    vsize = _u16(b, vt)
    for entry in range(4 + 2 * first, vsize, 2):  # noqa: SIM110 (no generators in Numba)
        if _u16(b, vt + entry) != 0:
            return True
    return False


@njit(cache=True, nogil=True)
def _deref(b, lo, hi, pos):
    """Target of the uoffset at `pos`, or -1 outside [lo, hi)."""
    if pos < lo or pos + 4 > hi:
        return -1
    t = pos + _u32(b, pos)
    return t if t < hi else -1


@njit(cache=True, nogil=True)
def _vector(b, lo, hi, pos, elem):
    """(start, count) of the vector referenced at `pos`; (-1, 0) when outside [lo, hi)."""
    v = _deref(b, lo, hi, pos)
    if v < 0 or v + 4 > hi:
        return -1, 0
    count = _u32(b, v)
    if v + 4 + count * elem > hi:
        return -1, 0
    return v + 4, count


@njit(cache=True, nogil=True)
def _offsets_ok(b, start, rows, limit):
    """The int32 offsets at `start` (rows + 1 of them) start >= 0, never fall, end <= limit."""
    prev = _i32(b, start)
    if prev < 0:
        return False
    for i in range(1, rows + 1):
        cur = _i32(b, start + 4 * i)
        if cur < prev:
            return False
        prev = cur
    return prev <= limit


@njit(cache=True, nogil=True)
def scan_record_batches(buf, pos, end, fields, n_nodes, n_buffers, out, state):
    """Scan the messages in buf[pos:end]; fill out[:n] (see the C_* columns) and return
        (status, pos, n, need): the next message to look at starts at `pos` (messages before it are
        fully scanned and their rows are in out[:n]); `need` is its size when status is
        SCAN_NEED_MORE. `fields[f] = (first node, first buffer)` of the required fields in the
        order chunk_x, chunk_y, chunk_z, labels, supervoxels, dvid_compressed_block,
        uncompressed_size. `state[0]` is the number of the next batch (counted up per batch scanned,
    written to each row's C_BATCH)."""
    cap = out.shape[0]
    n = 0
    starts = np.empty(7, np.int64)  # per field: where its values (or offsets) start
    lvals = np.empty(2, np.int64)  # labels, supervoxels: where their uint64 values start
    while True:
        if pos % 8 != 0:
            return SCAN_BAIL, pos, n, 0
        if pos + 8 > end:
            return SCAN_NEED_MORE, pos, n, 8
        if _u32(buf, pos) != 0xFFFFFFFF:
            return SCAN_BAIL, pos, n, 0
        meta_len = _i32(buf, pos + 4)
        if meta_len <= 0 or meta_len > _MAX_METADATA or meta_len % 8 != 0:
            return SCAN_BAIL, pos, n, 0  # end-of-stream marker, or odd framing
        lo = pos + 8
        hi = lo + meta_len
        if hi > end:
            return SCAN_NEED_MORE, pos, n, 8 + meta_len
        # Message: version (0), header_type (1), header (2), bodyLength (3), custom_metadata (4)
        root = _deref(buf, lo, hi, lo)
        if root < 0:
            return SCAN_BAIL, pos, n, 0
        p = _field(buf, lo, hi, root, 0)
        if p <= 0 or p + 2 > hi or _u16(buf, p) != _METADATA_V5:
            return SCAN_BAIL, pos, n, 0
        p = _field(buf, lo, hi, root, 1)
        if p <= 0 or buf[p] != _RECORD_BATCH:
            return SCAN_BAIL, pos, n, 0
        if _slots_beyond(buf, lo, hi, root, 4):
            return SCAN_BAIL, pos, n, 0  # custom metadata: let pyarrow look at it
        p = _field(buf, lo, hi, root, 3)
        if p <= 0 or p + 8 > hi:
            return SCAN_BAIL, pos, n, 0
        body_len = _i64(buf, p)
        if body_len < 0 or body_len > (np.int64(1) << 40):
            return SCAN_BAIL, pos, n, 0
        body = hi
        size = 8 + meta_len + body_len
        if body + body_len > end:
            return SCAN_NEED_MORE, pos, n, size
        p = _field(buf, lo, hi, root, 2)
        if p <= 0:
            return SCAN_BAIL, pos, n, 0
        rb = _deref(buf, lo, hi, p)
        if rb < 0:
            return SCAN_BAIL, pos, n, 0
        # RecordBatch: length (0), nodes (1), buffers (2); compression (3) etc. -> Python
        p = _field(buf, lo, hi, rb, 0)
        if p < 0 or p + 8 > hi:
            return SCAN_BAIL, pos, n, 0
        rows = _i64(buf, p) if p > 0 else np.int64(0)
        if rows <= 0 or _slots_beyond(buf, lo, hi, rb, 3):
            return SCAN_BAIL, pos, n, 0
        p = _field(buf, lo, hi, rb, 1)
        if p <= 0:
            return SCAN_BAIL, pos, n, 0
        nodes, count = _vector(buf, lo, hi, p, 16)
        if nodes < 0 or count != n_nodes:
            return SCAN_BAIL, pos, n, 0
        p = _field(buf, lo, hi, rb, 2)
        if p <= 0:
            return SCAN_BAIL, pos, n, 0
        bufs, count = _vector(buf, lo, hi, p, 16)
        if bufs < 0 or count != n_buffers:
            return SCAN_BAIL, pos, n, 0
        bad = False
        for k in range(n_buffers):
            off = _i64(buf, bufs + 16 * k)
            length = _i64(buf, bufs + 16 * k + 8)
            if off < 0 or length < 0 or length > body_len or off > body_len - length or off % 8:
                bad = True
        for k in range(n_nodes):
            if _i64(buf, nodes + 16 * k) < 0 or _i64(buf, nodes + 16 * k + 8) < 0:
                bad = True
        if bad:
            return SCAN_BAIL, pos, n, 0
        for f in range(7):  # every required field: one value per row, no nulls
            nd = nodes + 16 * fields[f, 0]
            if _i64(buf, nd) != rows or _i64(buf, nd + 8) != 0:
                return SCAN_BAIL, pos, n, 0
        if rows > cap - n:
            if n == 0:
                return SCAN_BAIL, pos, n, 0  # a batch larger than the output: Python decodes it
            return SCAN_FULL, pos, n, 0
        for f in range(3):  # int32 coordinates: validity, values
            b0 = bufs + 16 * (fields[f, 1] + 1)
            if _i64(buf, b0 + 8) < 4 * rows:
                return SCAN_BAIL, pos, n, 0
            starts[f] = body + _i64(buf, b0)
        lists_ok = True
        for j in range(2):  # labels, supervoxels: validity, offsets, child validity, values
            f = 3 + j
            child = nodes + 16 * (fields[f, 0] + 1)
            m = _i64(buf, child)
            if _i64(buf, child + 8) != 0:
                lists_ok = False
                break
            ob = bufs + 16 * (fields[f, 1] + 1)
            vb = bufs + 16 * (fields[f, 1] + 3)
            if _i64(buf, ob + 8) < 4 * (rows + 1) or _i64(buf, vb + 8) < 8 * m:
                lists_ok = False
                break
            starts[f] = body + _i64(buf, ob)
            lvals[j] = body + _i64(buf, vb)
            if not _offsets_ok(buf, starts[f], rows, m):
                lists_ok = False
                break
        if not lists_ok:
            return SCAN_BAIL, pos, n, 0
        ob = bufs + 16 * (fields[5, 1] + 1)  # binary: validity, offsets, data
        db = bufs + 16 * (fields[5, 1] + 2)
        dsize = _i64(buf, db + 8)
        if _i64(buf, ob + 8) < 4 * (rows + 1):
            return SCAN_BAIL, pos, n, 0
        starts[5] = body + _i64(buf, ob)
        data = body + _i64(buf, db)
        if not _offsets_ok(buf, starts[5], rows, dsize):
            return SCAN_BAIL, pos, n, 0
        b0 = bufs + 16 * (fields[6, 1] + 1)  # uint32: validity, values
        if _i64(buf, b0 + 8) < 4 * rows:
            return SCAN_BAIL, pos, n, 0
        starts[6] = body + _i64(buf, b0)
        for i in range(rows):  # checks first: a bad row leaves nothing of its batch behind
            x = _i32(buf, starts[0] + 4 * i)
            y = _i32(buf, starts[1] + 4 * i)
            z = _i32(buf, starts[2] + 4 * i)
            if x < 0 or y < 0 or z < 0:
                return SCAN_BAIL, pos, n, 0
            nl = _i32(buf, starts[3] + 4 * i + 4) - _i32(buf, starts[3] + 4 * i)
            ns = _i32(buf, starts[4] + 4 * i + 4) - _i32(buf, starts[4] + 4 * i)
            if nl != ns:
                return SCAN_BAIL, pos, n, 0
        for i in range(rows):
            r = n + i
            out[r, C_X] = _i32(buf, starts[0] + 4 * i)
            out[r, C_Y] = _i32(buf, starts[1] + 4 * i)
            out[r, C_Z] = _i32(buf, starts[2] + 4 * i)
            lo_l = _i32(buf, starts[3] + 4 * i)
            out[r, C_LAB] = lvals[0] + 8 * lo_l
            out[r, C_NLAB] = _i32(buf, starts[3] + 4 * i + 4) - lo_l
            out[r, C_SV] = lvals[1] + 8 * _i32(buf, starts[4] + 4 * i)
            bo = _i32(buf, starts[5] + 4 * i)
            out[r, C_BLOCK] = data + bo
            out[r, C_BLEN] = _i32(buf, starts[5] + 4 * i + 4) - bo
            out[r, C_USIZE] = _u32(buf, starts[6] + 4 * i)
            out[r, C_MSG] = pos
            out[r, C_MSIZE] = size
            out[r, C_ROW] = i
            out[r, C_BATCH] = state[0]
        n += rows
        state[0] += 1
        pos = pos + size

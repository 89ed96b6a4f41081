"""The neuroglancer_uint64_sharded_v1 shard file, read and written in plain Python + numpy.

Pure format logic, no storage (the I/O is `dvid2ng.worker.shard_reader`). Layout (formats.md
§7.4, neuroglancer `sharded.md`):

    [shard index: 2^minishard_bits x (uint64le start, uint64le end)]   offsets relative to the
                                                                         END of the shard index
    per non-empty minishard, ascending: [its chunks' data][its minishard index]

A minishard index decodes (after gzip when `minishard_index_encoding` is gzip) to 3 x n
uint64le in C order: chunk ids delta-encoded (first absolute); data starts delta-encoded
against the end of the previous chunk (first relative to the end of the shard index); sizes.

Everything wrong raises `ShardFormatError` with the cause, so a verifier can name it.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

ENTRY_BYTES = 16  # one (start, end) pair of the shard index
_MAX_OFFSET = np.uint64(1 << 40)  # no shard file comes near 1 TiB; larger values are corruption


class ShardFormatError(ValueError):
    """A shard index or minishard index is malformed; the message says what and where."""


def shard_index_bytes(minishard_bits: int) -> int:
    """Length of the shard index at the start of every shard file."""
    return ENTRY_BYTES << minishard_bits


@dataclass(frozen=True)
class ShardIndex:
    """The decoded shard index: per minishard the byte range [start, end) of its minishard index,
    absolute in the file (the relative offsets of the file plus the index length)."""

    starts: np.ndarray  # uint64, absolute offsets
    ends: np.ndarray  # uint64, absolute offsets
    index_bytes: int

    @property
    def nonempty(self) -> np.ndarray:
        """Minishard numbers that hold chunks (start < end)."""
        return np.flatnonzero(self.ends > self.starts)

    @property
    def file_size(self) -> int:
        """Where the file must end: the end of its last minishard index (or of the index)."""
        return int(self.ends.max(initial=self.index_bytes)) if len(self.ends) else self.index_bytes


def parse_shard_index(data: bytes | memoryview, minishard_bits: int) -> ShardIndex:
    """Decode the shard index (the first 16 * 2^minishard_bits bytes of a shard file)."""
    want = shard_index_bytes(minishard_bits)
    if len(data) != want:
        raise ShardFormatError(
            f"shard index is {len(data)} bytes, expected {want} (2^{minishard_bits} minishards)"
        )
    pairs = np.frombuffer(data, dtype="<u8").reshape(-1, 2).astype(np.uint64)
    rel_start, rel_end = pairs[:, 0], pairs[:, 1]
    bad = np.flatnonzero(rel_end < rel_start)
    if len(bad):
        m = int(bad[0])
        raise ShardFormatError(
            f"shard index entry of minishard {m} ends before it starts "
            f"({int(rel_start[m])}..{int(rel_end[m])})"
        )
    huge = np.flatnonzero(rel_end >= _MAX_OFFSET)
    if len(huge):
        raise ShardFormatError(
            f"shard index entry of minishard {int(huge[0])} points past 2^40 bytes "
            f"(end {int(rel_end[huge[0]])}): not a shard index"
        )
    base = np.uint64(want)
    return ShardIndex(rel_start + base, rel_end + base, want)


@dataclass(frozen=True)
class MinishardIndex:
    """Chunks of one minishard: ids and absolute byte ranges [start, start + size) in the file."""

    chunk_ids: np.ndarray  # uint64, ascending
    starts: np.ndarray  # uint64, absolute offsets
    sizes: np.ndarray  # uint64

    def __len__(self) -> int:
        return len(self.chunk_ids)


def decode_minishard_index(
    raw: bytes | memoryview,
    *,
    encoding: str,
    index_bytes: int,
    index_start: int,
    max_entries: int,
    minishard: int = -1,
) -> MinishardIndex:
    """Decode one minishard index read from [index_start, ...) of the file.

    Checks that chunk ids ascend without repeats, that there are at most `max_entries` of them
    (a minishard holds at most 2^preshift_bits chunk ids; this also bounds a corrupt gzip
    stream), and that every chunk's data lies between the shard index and this minishard index
    (where the format puts it). `minishard` only names it in errors.
    """
    index, _ = decode_minishard_indices(
        [(minishard, index_start, raw)],
        encoding=encoding,
        index_bytes=index_bytes,
        max_entries=max_entries,
    )
    return index


def decode_minishard_indices(
    parts: list[tuple[int, int, bytes | memoryview]],
    *,
    encoding: str,
    index_bytes: int,
    max_entries: int,
) -> tuple[MinishardIndex, np.ndarray]:
    """Decode the minishard indices of one shard at once: `parts` holds (minishard number,
    index start in the file, raw bytes). Returns the entries of all of them (in the order
    given, each minishard's ascending) and the minishard of each entry. Same checks as
    `decode_minishard_index`, done with a few numpy passes instead of a few per minishard."""
    if encoding not in ("gzip", "raw"):
        raise ValueError(f"unknown minishard_index_encoding {encoding!r}")
    limit = 24 * max_entries
    views, lengths = [], []
    for m, _, raw in parts:
        where = _where(m)
        data = _gunzip(bytes(raw), where, limit + 1) if encoding == "gzip" else bytes(raw)
        if len(data) > limit:
            raise ShardFormatError(
                f"{where} lists more than {max_entries} chunks, more than a minishard can hold"
            )
        if len(data) == 0 or len(data) % 24:
            raise ShardFormatError(
                f"{where} decodes to {len(data)} bytes, not a non-empty multiple of 24 "
                "(3 x n uint64: ids, offsets, sizes)"
            )
        views.append(np.frombuffer(data, dtype="<u8").reshape(3, -1))
        lengths.append(views[-1].shape[1])
    if not parts:
        empty = np.zeros(0, np.uint64)
        return MinishardIndex(empty, empty, empty), np.zeros(0, np.int64)
    n = np.asarray(lengths)
    first = np.concatenate([[0], np.cumsum(n)[:-1]])  # first entry of each minishard
    seg = np.repeat(np.arange(len(parts)), n)
    deltas, offs, sizes = (
        np.concatenate([v[r] for v in views]).astype(np.uint64) for r in range(3)
    )
    is_first = np.zeros(len(deltas), bool)
    is_first[first] = True

    def fail(mask: np.ndarray, what) -> None:
        bad = np.flatnonzero(mask)
        if len(bad):
            i = int(bad[0])
            k = int(seg[i])
            raise ShardFormatError(f"{_where(parts[k][0])}: {what(i, i - int(first[k]))}")

    fail((deltas == 0) & ~is_first, lambda i, e: f"chunk id repeated at entry {e}")
    fail(
        (offs >= _MAX_OFFSET) | (sizes >= _MAX_OFFSET),
        lambda i, e: "chunk offsets or sizes above 2^40 bytes (corrupt index)",
    )
    with np.errstate(over="ignore"):
        ids = _segment_cumsum(deltas, first, n)
        # start_i = end_(i-1) + off_i, with end_(-1) = 0 (relative to the end of the shard index)
        ends = _segment_cumsum(offs + sizes, first, n)
    later = ~is_first[1:]
    fail(
        np.concatenate([[False], ((ids[1:] <= ids[:-1]) | (ends[1:] < ends[:-1])) & later]),
        lambda i, e: "chunk ids or offsets overflow 64 bits (corrupt index)",
    )
    starts_rel = ends - sizes
    data_end = np.repeat(
        np.array([max(0, start - index_bytes) for _, start, _ in parts], np.uint64), n
    )  # chunk data must end before its minishard index
    fail(
        ends > data_end,
        lambda i, e: (
            f"chunk {int(ids[i])} data [{int(starts_rel[i]) + index_bytes}, "
            f"{int(ends[i]) + index_bytes}) runs into or past the minishard index at byte "
            f"{parts[int(seg[i])][1]}"
        ),
    )
    minishards = np.repeat(np.array([m for m, _, _ in parts], np.int64), n)
    return MinishardIndex(ids, starts_rel + np.uint64(index_bytes), sizes), minishards


def _where(minishard: int) -> str:
    return f"minishard {minishard} index" if minishard >= 0 else "minishard index"


def _segment_cumsum(values: np.ndarray, first: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each segment (uint64, wrapping like np.cumsum)."""
    total = np.cumsum(values, dtype=np.uint64)
    before = np.concatenate([[np.uint64(0)], total[first[1:] - 1]]).astype(np.uint64)
    return total - np.repeat(before, n)


def _gunzip(data: bytes, where: str, max_out: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, max_out)
    except zlib.error as e:
        raise ShardFormatError(f"{where} is not valid gzip: {e}") from None
    if len(out) >= max_out:
        return out  # the caller reports "too many entries"
    if not d.eof:
        raise ShardFormatError(f"{where}: gzip stream is truncated")
    if d.unused_data:
        raise ShardFormatError(f"{where}: {len(d.unused_data)} bytes after the gzip stream")
    return out


def encode_minishard_index(
    chunk_ids: np.ndarray, rel_starts: np.ndarray, sizes: np.ndarray, encoding: str = "gzip"
) -> bytes:
    """The minishard index of chunks (ids ascending) at `rel_starts` (relative to the end of the
    shard index), for writing test and benchmark shards."""
    ids = np.asarray(chunk_ids, np.uint64)
    starts = np.asarray(rel_starts, np.uint64)
    sizes = np.asarray(sizes, np.uint64)
    deltas = np.diff(ids, prepend=np.uint64(0))
    prev_end = np.concatenate([[np.uint64(0)], starts[:-1] + sizes[:-1]]).astype(np.uint64)
    body = np.stack([deltas, starts - prev_end, sizes]).astype("<u8").tobytes()
    return _gzip(body) if encoding == "gzip" else body


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def encode_shard(
    chunks: Mapping[int, bytes], minishard_of: Mapping[int, int], minishard_bits: int
) -> bytes:
    """A whole shard file from encoded chunk bytes by chunk id (`minishard_of[id]` gives each
    chunk's minishard), laid out as TensorStore does: minishards ascending, chunks ascending
    by id, each minishard's data followed by its gzipped index. Empty minishards get (0, 0)."""
    n_mini = 1 << minishard_bits
    index = np.zeros((n_mini, 2), "<u8")
    body = bytearray()
    by_mini: dict[int, list[int]] = {}
    for cid in sorted(chunks):
        by_mini.setdefault(int(minishard_of[cid]), []).append(cid)
    for m in sorted(by_mini):
        if not 0 <= m < n_mini:
            raise ValueError(f"minishard {m} is outside 0..{n_mini - 1}")
        ids = by_mini[m]
        starts, sizes = [], []
        for cid in ids:
            starts.append(len(body))
            sizes.append(len(chunks[cid]))
            body += chunks[cid]
        ms_index = encode_minishard_index(np.array(ids, np.uint64), starts, sizes)
        index[m] = (len(body), len(body) + len(ms_index))
        body += ms_index
    return index.tobytes() + bytes(body)


# --- chunk ids (numpy, many at once) ------------------------------------------------------------


def split_chunk_ids(
    ids: np.ndarray, preshift_bits: int, minishard_bits: int, shard_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """(shard, minishard) of chunk ids under the identity hash, as uint64 arrays."""
    ids = np.asarray(ids, np.uint64)
    h = ids >> np.uint64(preshift_bits) if preshift_bits < 64 else np.zeros_like(ids)
    minishard = h & np.uint64((1 << minishard_bits) - 1)
    if shard_bits == 0 or minishard_bits >= 64:
        return np.zeros_like(ids), minishard
    shard = (h >> np.uint64(minishard_bits)) & np.uint64((1 << shard_bits) - 1)
    return shard, minishard


def morton_decode(ids: np.ndarray, bits: tuple[int, int, int]) -> np.ndarray:
    """(n, 3) int64 chunk coordinates (x, y, z) of compressed Morton codes (inverse of
    kernels.compressed_morton_codes for codes below 2^sum(bits))."""
    ids = np.asarray(ids, np.uint64)
    out = np.zeros((len(ids), 3), np.int64)
    j = 0
    for i in range(max(bits)):
        for d in range(3):
            if i < bits[d]:
                bit = (ids >> np.uint64(j)) & np.uint64(1)
                out[:, d] |= bit.astype(np.int64) << i
                j += 1
    return out

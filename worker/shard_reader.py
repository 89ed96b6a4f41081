"""Read the structure of output shards with byte-range reads, never whole files.

For each shard: one read of the shard index (16 bytes per minishard), then one read per
non-empty minishard of its minishard index. That gives the chunk ids and the byte range of
every chunk; a chunk's bytes are read only when asked (`read_chunk`). Reads go through
TensorStore kvstores, so local paths, file:// and gs:// behave the same, and many shards are
kept in flight at once (TensorStore's own I/O threads do the waiting).

Format parsing lives in `dvid2ng.schemas.shard_format`; this module only moves bytes.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorstore as ts

from dvid2ng.kernels.morton_decode import decode_morton_codes
from dvid2ng.schemas.shard_format import (
    MinishardIndex,
    ShardFormatError,
    decode_minishard_indices,
    parse_shard_index,
    shard_index_bytes,
    split_chunk_ids,
)
from dvid2ng.schemas.sharding import shard_name
from dvid2ng.schemas.spec import Scale
from dvid2ng.worker.output import kvstore_spec

DEFAULT_WINDOW = 64  # shards whose index reads are in flight at once
_SIZE_RE = re.compile(r"for value of size (\d+)")
_HEX_RE = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Encodings:
    """How one scale's shards are encoded (neuroglancer's defaults are raw)."""

    minishard_index: str = "raw"
    data: str = "raw"

    @classmethod
    def from_info_scale(cls, scale_json: dict[str, Any]) -> Encodings:
        sh = scale_json.get("sharding") or {}
        return cls(sh.get("minishard_index_encoding", "raw"), sh.get("data_encoding", "raw"))


@dataclass
class ShardContents:
    """What the indices of one shard file say (or why they could not be read)."""

    shard: int
    name: str  # file name, e.g. "061c5.shard"
    error: str = ""  # non-empty: the shard is corrupt (unreadable, truncated, malformed)
    file_size: int = 0  # where the last minishard index ends
    chunk_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # ascending
    chunk_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    chunk_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    requests: int = 0  # reads made for this shard
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_ids)

    def chunk_range(self, chunk_id: int) -> tuple[int, int] | None:
        """(start, size) of a chunk in the file, or None when the shard does not hold it."""
        i = int(np.searchsorted(self.chunk_ids, np.uint64(chunk_id)))
        if i < len(self.chunk_ids) and int(self.chunk_ids[i]) == chunk_id:
            return int(self.chunk_starts[i]), int(self.chunk_sizes[i])
        return None


class ShardReader:
    """Shard files of one scale of a precomputed volume at `dest` (path or URL)."""

    def __init__(
        self, dest: str, scale: Scale, encodings: Encodings, context: ts.Context | None = None
    ) -> None:
        self.scale = scale
        self.encodings = encodings
        spec = kvstore_spec(dest)
        spec["path"] = spec["path"] + scale.key + "/"
        self.kv = ts.KvStore.open(spec, context=context or ts.Context()).result()
        self.index_bytes = shard_index_bytes(scale.sharding.minishard_bits)

    # --- listing --------------------------------------------------------------------------------

    def list_shards(self) -> tuple[dict[int, str], list[str]]:
        """({shard number: file name} of the shard files present, [other file names]).

        A file counts as a shard only under the exact name readers look for (lowercase hex,
        zero-padded to ceil(shard_bits / 4) digits, `.shard`); anything else is returned apart.
        """
        names = self.kv.list().result()
        shards: dict[int, str] = {}
        others: list[str] = []
        for raw in names:
            name = raw.decode("utf-8", "replace")
            stem, dot, ext = name.partition(".")
            if (
                "/" not in name
                and dot
                and ext == "shard"
                and _HEX_RE.fullmatch(stem)
                and shard_name(self.scale, int(stem, 16)) == stem
            ):
                shards[int(stem, 16)] = name
            else:
                others.append(name)
        return shards, sorted(others)

    def file_name(self, shard: int) -> str:
        return shard_name(self.scale, shard) + ".shard"

    # --- indices --------------------------------------------------------------------------------

    def read_contents(self, shard: int) -> ShardContents:
        return next(self.iter_contents([shard]))

    def iter_contents(
        self, shards: Iterable[int], window: int = DEFAULT_WINDOW
    ) -> Iterator[ShardContents]:
        """ShardContents of each shard, in the order given, with up to `window` shards being read
        at once (shard index first, then all of its minishard indices together)."""
        todo = iter(shards)
        pending: deque[_Pending] = deque()
        while True:
            while len(pending) < window:
                shard = next(todo, None)
                if shard is None:
                    break
                pending.append(self._start(shard))
            if not pending:
                return
            for p in pending:  # shards whose index has arrived start their minishard reads
                if p.minishards is None and p.index.done():
                    self._after_index(p)
            head = pending.popleft()
            if head.minishards is None:
                self._after_index(head)
            yield self._finish(head)

    def _start(self, shard: int) -> _Pending:
        name = self.file_name(shard)
        out = ShardContents(shard, name, requests=1)
        fut = self.kv.read(name.encode(), byte_range=slice(0, self.index_bytes))
        return _Pending(out, fut)

    def _after_index(self, p: _Pending) -> None:
        out = p.out
        p.minishards = []
        try:
            got = p.index.result()
        except Exception as e:
            out.error = _read_error("shard index", 0, self.index_bytes, e)
            return
        if got.state != "value":
            out.error = "shard file disappeared while verifying"
            return
        out.bytes_read += self.index_bytes
        try:
            index = parse_shard_index(bytes(got.value), self.scale.sharding.minishard_bits)
        except ShardFormatError as e:
            out.error = str(e)
            return
        p.shard_index = index
        out.file_size = index.file_size
        for m in index.nonempty:
            start, end = int(index.starts[m]), int(index.ends[m])
            fut = self.kv.read(out.name.encode(), byte_range=slice(start, end))
            p.minishards.append((int(m), start, end, fut))
            out.requests += 1

    def _finish(self, p: _Pending) -> ShardContents:
        out = p.out
        if out.error or p.shard_index is None:
            return out
        raw: list[tuple[int, int, bytes]] = []
        for m, start, end, fut in p.minishards or []:
            try:
                got = fut.result()
            except Exception as e:
                out.error = _read_error(f"minishard {m} index", start, end, e)
                return out
            out.bytes_read += end - start
            raw.append((m, start, got.value))
        sh = self.scale.sharding
        try:  # all minishard indices of the shard in a few numpy passes
            mi, minishards = decode_minishard_indices(
                raw,
                encoding=self.encodings.minishard_index,
                index_bytes=self.index_bytes,
                max_entries=1 << min(sh.preshift_bits, 40),
            )
        except ShardFormatError as e:
            out.error = str(e)
            return out
        problem = self._misplaced(mi, out.shard, minishards)
        if problem:
            out.error = problem
            return out
        order = np.argsort(mi.chunk_ids, kind="stable")
        out.chunk_ids, out.chunk_starts, out.chunk_sizes = (
            mi.chunk_ids[order],
            mi.starts[order],
            mi.sizes[order],
        )
        return out

    def _misplaced(self, mi: MinishardIndex, shard: int, minishards: np.ndarray) -> str:
        """Why chunk ids listed in this shard file cannot be there ('' if all are fine):
        another shard's or minishard's id, or one outside the chunk grid."""
        sh = self.scale.sharding
        shards, minis = split_chunk_ids(
            mi.chunk_ids, sh.preshift_bits, sh.minishard_bits, sh.shard_bits
        )
        bad = np.flatnonzero((shards != np.uint64(shard)) | (minis != minishards.astype(np.uint64)))
        if len(bad):
            i = int(bad[0])
            return (
                f"minishard {int(minishards[i])} index lists chunk id {int(mi.chunk_ids[i])}, "
                f"which belongs to shard {int(shards[i])} minishard {int(minis[i])} "
                f"({len(bad)} such ids)"
            )
        total = self.scale.total_bits
        coords = decode_morton_codes(mi.chunk_ids, self.scale.bits)
        beyond = (mi.chunk_ids >> np.uint64(total)) != 0 if total < 64 else np.zeros(len(mi), bool)
        outside = beyond | (coords >= np.asarray(self.scale.grid)).any(axis=1)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            return (
                f"minishard {int(minishards[i])} index lists chunk id {int(mi.chunk_ids[i])}, "
                f"outside the chunk grid {list(self.scale.grid)} ({int(outside.sum())} such ids)"
            )
        return ""

    # --- chunks ---------------------------------------------------------------------------------

    def read_chunk_async(self, contents: ShardContents, chunk_id: int) -> ts.Future | None:
        where = contents.chunk_range(chunk_id)
        if where is None:
            return None
        start, size = where
        contents.requests += 1
        contents.bytes_read += size
        return self.kv.read(contents.name.encode(), byte_range=slice(start, start + size))

    def decode_chunk_bytes(self, raw: bytes) -> bytes:
        """The encoded chunk (compressed_segmentation) from its stored bytes."""
        if self.encodings.data == "gzip":
            return zlib.decompress(raw, 16 + zlib.MAX_WBITS)
        return raw


@dataclass
class _Pending:
    out: ShardContents
    index: ts.Future
    shard_index: Any = None
    minishards: list[tuple[int, int, int, ts.Future]] | None = None


def _read_error(what: str, start: int, end: int, e: Exception) -> str:
    text = str(e)
    m = _SIZE_RE.search(text)
    if m and "OUT_OF_RANGE" in text:
        return (
            f"truncated: the {what} at bytes [{start}, {end}) lies past the end of the file "
            f"({m.group(1)} bytes)"
        )
    return f"cannot read the {what} at bytes [{start}, {end}): {text}"

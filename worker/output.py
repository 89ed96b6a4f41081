"""The destination volume: `info` and sharded chunk storage, all through TensorStore kvstores.

Chunks arrive fully encoded (compressed_segmentation, then gzip) and are written through the
`neuroglancer_uint64_sharded` kvstore in ONE transaction per output shard, committed once. The
kvstore is opened with `data_encoding: raw` because the bytes we hand it are already gzipped;
the `info` we publish says `gzip`, which is what they are. (Letting TensorStore gzip at commit
costs level-9 deflate on one thread and holds every raw chunk in memory until then.)
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from dvid2ng.schemas.sharding import morton_axis_tables, shard_name
from dvid2ng.schemas.spec import Scale, VolumeSpec


class OutputError(RuntimeError):
    """The destination cannot be used as asked (e.g. an existing, different `info`)."""


def kvstore_spec(dest: str) -> dict[str, Any]:
    """TensorStore kvstore spec for a destination given as a path or URL (directory semantics)."""
    if dest.startswith("gs://"):
        bucket, _, path = dest[5:].partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": _dir(path)}
    if dest.startswith("memory://"):
        return {"driver": "memory", "path": _dir(dest[len("memory://") :])}
    if dest.startswith("file://"):
        dest = dest[len("file://") :]
    if "://" in dest:
        raise OutputError(
            f"unsupported destination {dest!r}: use a local path, file://, gs:// or memory://"
        )
    return {"driver": "file", "path": _dir(str(Path(dest).resolve()))}


def _dir(path: str) -> str:
    return path if not path or path.endswith("/") else path + "/"


def is_local(dest: str) -> bool:
    return "://" not in dest or dest.startswith("file://")


def io_context(threads: int = 2) -> ts.Context:
    """A small TensorStore context: a worker process does one shard at a time."""
    return ts.Context(
        {
            "data_copy_concurrency": {"limit": threads},
            "file_io_concurrency": {"limit": threads},
            "cache_pool": {"total_bytes_limit": 0},
        }
    )


def normalized_info(info: Mapping[str, Any]) -> str:
    return json.dumps(info, sort_keys=True, separators=(",", ":"))


def write_info(dest: str, info: Mapping[str, Any], context: ts.Context | None = None) -> bool:
    """Write DEST/info unless an identical one exists. Returns True if written.

    A different existing `info` is never overwritten: the volume belongs to another spec.
    """
    kv = ts.KvStore.open(kvstore_spec(dest), context=context or io_context()).result()
    existing = kv.read(b"info").result()
    body = json.dumps(info, indent=2, sort_keys=True).encode()
    if existing.state == "value":
        try:
            old = json.loads(bytes(existing.value))
        except ValueError:
            raise OutputError(
                f"{dest}/info exists but is not JSON; refusing to overwrite it"
            ) from None
        if normalized_info(old) == normalized_info(info):
            return False
        raise OutputError(
            f"{dest}/info exists and differs from the one this spec produces; refusing to overwrite it. "
            "Use an empty destination, or the spec it was created with."
        )
    kv.write(b"info", body).result()
    return True


def read_info(dest: str, context: ts.Context | None = None) -> dict[str, Any]:
    kv = ts.KvStore.open(kvstore_spec(dest), context=context or io_context()).result()
    got = kv.read(b"info").result()
    if got.state != "value":
        raise OutputError(
            f"{dest}/info does not exist: the dispatcher writes it before publishing tasks"
        )
    return json.loads(bytes(got.value))


def chunk_key(chunk_id: int) -> bytes:
    """Keys of the neuroglancer_uint64_sharded kvstore are 8-byte big-endian chunk ids."""
    return struct.pack(">Q", chunk_id)


@dataclass
class ScaleStore:
    """Sharded chunk storage of one scale of the destination volume."""

    dest: str
    scale: Scale
    context: ts.Context

    def __post_init__(self) -> None:
        base = kvstore_spec(self.dest)
        base["path"] = base["path"] + self.scale.key + "/"
        self._base_spec = base
        sh = self.scale.sharding
        metadata = {
            "@type": "neuroglancer_uint64_sharded_v1",
            "hash": "identity",
            "preshift_bits": sh.preshift_bits,
            "minishard_bits": sh.minishard_bits,
            "shard_bits": sh.shard_bits,
            "minishard_index_encoding": "gzip",
            "data_encoding": "raw",  # chunk bytes arrive gzipped already (see module docstring)
        }
        self.base = ts.KvStore.open(base, context=self.context).result()
        self.sharded = ts.KvStore.open(
            {"driver": "neuroglancer_uint64_sharded", "base": base, "metadata": metadata},
            context=self.context,
        ).result()

    @functools.cached_property
    def morton_tables(self) -> tuple[list[int], list[int], list[int]]:
        return morton_axis_tables(self.scale)

    def shard_file(self, shard: int) -> str:
        return shard_name(self.scale, shard) + ".shard"

    @property
    def shard_index_bytes(self) -> int:
        return 16 << self.scale.sharding.minishard_bits

    def read_shard_index(self, shard: int) -> np.ndarray | None:
        """The shard index ((start, end) per minishard, relative to the index's end) read with
        one range request, or None when the file does not exist. Raises ShardFileError for a
        file too short to hold it (a truncated or foreign file)."""
        key = self.shard_file(shard).encode()
        n = self.shard_index_bytes
        try:
            got = self.base.read(key, byte_range=slice(0, n)).result()
        except ValueError as e:  # TensorStore: OUT_OF_RANGE for a file shorter than the range
            raise ShardFileError(
                self._where(shard), f"shorter than its {n}-byte index ({e})"
            ) from None
        if got.state != "value":
            return None
        raw = bytes(got.value)
        if len(raw) != n:
            raise ShardFileError(self._where(shard), f"{len(raw)} bytes, shorter than its index")
        return np.frombuffer(raw, dtype="<u8").reshape(-1, 2)

    def _where(self, shard: int) -> str:
        return f"{self.dest.rstrip('/')}/{self.scale.key}/{self.shard_file(shard)}"

    def shard_size(self, shard: int) -> int | None:
        """Size in bytes of the shard file, or None if it does not exist.

        Reads only the shard index (16 bytes per minishard): its entries are (start, end)
        offsets relative to the end of the index, so the file ends at the largest `end`.
        """
        index = self.read_shard_index(shard)
        if index is None:
            return None
        return self.shard_index_bytes + int(index[:, 1].max(initial=0))

    def shard_file_problem(self, shard: int, expected_size: int) -> str | None:
        """Why the shard file cannot be trusted as a finished shard of `expected_size` bytes
        (missing, shorter or longer, an index that does not read), or None if it can. Reads the
        index and the file's last byte: two range requests, never the whole shard."""
        where = self._where(shard)
        try:
            index = self.read_shard_index(shard)
        except ShardFileError as e:
            return str(e)
        if index is None:
            return f"{where} is missing"
        starts, ends = index[:, 0], index[:, 1]
        used = starts != ends  # empty minishards are (0, 0) or any start == end
        if np.any(ends < starts) or np.any(starts[used][1:] < ends[used][:-1]):
            return f"{where}: its shard index is not in order (not a shard file?)"
        size = self.shard_index_bytes + int(ends.max(initial=0))
        if size != expected_size:
            return f"{where}: its index says {size} bytes, the finished shard had {expected_size}"
        key = self.shard_file(shard).encode()
        try:
            tail = self.base.read(key, byte_range=slice(size - 1, size)).result()
        except ValueError:
            return f"{where} is truncated: shorter than the {size} bytes its index says"
        if tail.state != "value" or len(bytes(tail.value)) != 1:
            return f"{where} is truncated: shorter than the {size} bytes its index says"
        return None

    def write_shard(self, shard: int, chunks: Mapping[int, bytes]) -> None:
        """Write every chunk of one shard in a single transaction and commit it once."""
        writer = self.begin_shard(shard)
        for chunk_id in sorted(chunks):
            writer.write(chunk_id, chunks[chunk_id])
        writer.commit()

    def begin_shard(self, shard: int) -> ShardWriter:
        return ShardWriter(self, shard)


class ShardFileError(OSError):
    """An output shard file that cannot be what it claims to be."""

    def __init__(self, where: str, cause: str) -> None:
        super().__init__(f"{where}: {cause}")


class ShardWriter:
    """Stages the chunks of ONE output shard in a TensorStore transaction as they are produced
    (so only TensorStore holds them), then commits once: a single write of the shard file.

    The transaction first stages a delete of the shard file itself, so the commit REPLACES the
    file as a whole (whatever was there: an interrupted attempt, a foreign file, garbage)
    instead of merging into it, and a shard with no chunks left deletes it. There is no
    separate delete that could land without the new content.

    Each write's future is awaited: an unawaited write can be dropped silently (the
    predecessor lost data that way). Dropping the writer without `commit` writes nothing.
    """

    def __init__(self, store: ScaleStore, shard: int) -> None:
        self.store = store
        self.shard = shard
        self.txn = ts.Transaction()
        store.base.with_transaction(self.txn).write(store.shard_file(shard).encode(), None).result()
        self.kv = store.sharded.with_transaction(self.txn)
        self.chunks = 0

    def write(self, chunk_id: int, data: bytes) -> None:
        self.kv.write(chunk_key(chunk_id), data).result()
        self.chunks += 1

    def write_many(self, chunks: list[tuple[int, bytes]]) -> None:
        """Stage several chunks: all writes are issued, then every future is awaited (about
        half the cost per chunk of `write`, which waits for each before issuing the next)."""
        futures = [self.kv.write(chunk_key(cid), data) for cid, data in chunks]
        for f in futures:
            f.result()
        self.chunks += len(futures)

    def commit(self, fence: Callable[[], bool] | None = None) -> None:
        """Commit once. `fence` is asked first (is this worker's claim still current?); when it
        says no, nothing is written and `Fenced` is raised."""
        if fence is not None and not fence():
            self.abort()
            from dvid2ng.worker.errors import Fenced

            raise Fenced(f"claim on {self.store._where(self.shard)} lost before its commit")
        self.txn.commit_async().result()

    def abort(self) -> None:
        self.txn.abort()


def open_scale_store(
    dest: str, spec: VolumeSpec, scale_index: int, context: ts.Context | None = None
) -> ScaleStore:
    return ScaleStore(dest, spec.scales[scale_index], context or io_context())


def info_problem(info: Mapping[str, Any]) -> str | None:
    """Why TensorStore (a reader like any other) cannot open every scale of `info`, or None.

    Checked in memory before DEST is touched, so a spec that would give an unreadable volume
    is refused instead of leaving a volume nobody can open."""
    context = ts.Context()
    kv = ts.KvStore.open({"driver": "memory"}, context=context).result()
    kv.write(b"info", json.dumps(info).encode()).result()
    for i, scale in enumerate(info.get("scales", [])):
        try:
            ts.open(
                {
                    "driver": "neuroglancer_precomputed",
                    "kvstore": {"driver": "memory"},
                    "scale_index": i,
                },
                context=context,
                read=True,
            ).result()
        except ValueError as e:
            return f"TensorStore cannot open scale {i} ({scale.get('key')}) of the info: {e}"
    return None

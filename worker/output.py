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
from collections.abc import Mapping
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

    def shard_size(self, shard: int) -> int | None:
        """Size in bytes of the shard file, or None if it does not exist.

        Reads only the shard index (16 bytes per minishard): its entries are (start, end)
        offsets relative to the end of the index, so the file ends at the largest `end`.
        """
        index_len = 16 << self.scale.sharding.minishard_bits
        got = self.base.read(
            self.shard_file(shard).encode(), byte_range=slice(0, index_len)
        ).result()
        if got.state != "value":
            return None
        entries = np.frombuffer(bytes(got.value), dtype="<u8")
        return index_len + int(entries[1::2].max(initial=0))

    def delete_shard(self, shard: int) -> None:
        self.base.write(self.shard_file(shard).encode(), None).result()  # None deletes the key

    def write_shard(self, chunks: Mapping[int, bytes]) -> None:
        """Write every chunk of one shard in a single transaction and commit it once."""
        writer = self.begin_shard()
        for chunk_id in sorted(chunks):
            writer.write(chunk_id, chunks[chunk_id])
        writer.commit()

    def begin_shard(self) -> ShardWriter:
        return ShardWriter(self)


class ShardWriter:
    """Stages the chunks of ONE output shard in a TensorStore transaction as they are produced
    (so only TensorStore holds them), then commits once: a single write of the shard file.

    Each write's future is awaited: an unawaited write can be dropped silently (the
    predecessor lost data that way). Dropping the writer without `commit` writes nothing.
    """

    def __init__(self, store: ScaleStore) -> None:
        self.store = store
        self.txn = ts.Transaction()
        self.kv = store.sharded.with_transaction(self.txn)
        self.chunks = 0

    def write(self, chunk_id: int, data: bytes) -> None:
        self.kv.write(chunk_key(chunk_id), data).result()
        self.chunks += 1

    def commit(self) -> None:
        self.txn.commit_async().result()

    def abort(self) -> None:
        self.txn.abort()


def open_scale_store(
    dest: str, spec: VolumeSpec, scale_index: int, context: ts.Context | None = None
) -> ScaleStore:
    return ScaleStore(dest, spec.scales[scale_index], context or io_context())

"""Build one output shard of scale N from scale N-1 of the destination (the pyramid).

Data moves forward in small bricks, one output chunk at a time, in chunk-id order:
parent region (8 parent chunks for equal chunk sizes, 16 MiB) read back through TensorStore's
neuroglancer_precomputed driver -> 2x2x2 vote (Numba kernel) -> compressed_segmentation (our
encoder, 8^3 blocks) -> gzip -> ONE TensorStore transaction for the shard -> one commit.
Only the gzipped output chunks are held (inside the transaction) until the commit, plus one
brick being worked on and the next one being read, so memory does not grow with the parent
region (a full 32^3-chunk output shard reads 8 parent shards, 512 GiB of raw voxels).

Sparse by construction: the parent chunk ids that exist are listed first (the sharded kvstore
reads only the minishard indices), and output chunks with no parent chunk are never read.
All-zero output chunks are not stored (as TensorStore does).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import tensorstore as ts

from dvid2ng.kernels import KernelError, downsample_labels, encode_cseg
from dvid2ng.kernels.downsample import DOWNSAMPLE_METHODS
from dvid2ng.schemas.sharding import shard_bounds, shard_name, shard_of_chunk, shard_shape
from dvid2ng.schemas.spec import Scale, VolumeSpec
from dvid2ng.schemas.task import ShardTask
from dvid2ng.worker.errors import InputError, Interrupted
from dvid2ng.worker.output import ScaleStore, chunk_key, kvstore_spec, read_info
from dvid2ng.worker.transcode import DEFAULT_GZIP_LEVEL, ShardOutcome, gzip_bytes

PROGRESS_EVERY = 64  # output chunks between progress callbacks
READ_CACHE_BYTES = 64 << 20  # keeps the parent shards' minishard indices between bricks

Chunk = tuple[int, int, int]


def downres_geometry_problem(parent: Scale, child: Scale) -> str | None:
    """Why `child` cannot be made by 2x2x2 downsampling of `parent` (None if it can).

    Windows are aligned to even parent coordinates, so the child's voxel offset must be half
    the parent's, and its size half the parent's (rounded up, as TensorStore's downsample
    view does, or down)."""
    for d, axis in enumerate("xyz"):
        if parent.voxel_offset[d] != 2 * child.voxel_offset[d]:
            return (
                f"scale {child.index} ({child.key}) voxel_offset {list(child.voxel_offset)} is not "
                f"half of scale {parent.index} ({parent.key}) voxel_offset "
                f"{list(parent.voxel_offset)} on {axis}"
            )
        half = parent.size[d] / 2
        if child.size[d] not in (math.floor(half), math.ceil(half)) or child.size[d] < 1:
            return (
                f"scale {child.index} ({child.key}) size {list(child.size)} is not half of scale "
                f"{parent.index} ({parent.key}) size {list(parent.size)} on {axis} "
                f"(want {math.ceil(half)})"
            )
    return None


class ParentReader:
    """Scale N-1 of DEST, read back through TensorStore's neuroglancer_precomputed driver
    (local, file://, gs://, memory://), plus the list of its stored chunk ids."""

    def __init__(self, dest: str, scale: Scale, context: ts.Context | None = None) -> None:
        self.dest = dest
        self.scale = scale
        self.context = context or ts.Context(
            {
                "data_copy_concurrency": {"limit": 2},
                "file_io_concurrency": {"limit": 4},
                "cache_pool": {"total_bytes_limit": READ_CACHE_BYTES},
            }
        )
        self.where = f"{dest.rstrip('/')}/{scale.key}"
        try:
            self.store = ts.open(
                {
                    "driver": "neuroglancer_precomputed",
                    "kvstore": kvstore_spec(dest),
                    "scale_index": scale.index,
                    "recheck_cached_data": "open",
                },
                read=True,
                context=self.context,
            ).result()
        except ValueError as e:
            raise InputError(f"cannot open scale {scale.index} of {dest}: {e}") from None
        self.origin = tuple(int(o) for o in self.store.domain.origin[:3])
        base = kvstore_spec(dest)
        base["path"] = base["path"] + scale.key + "/"
        sh = scale.sharding
        self.sharded = ts.KvStore.open(
            {
                "driver": "neuroglancer_uint64_sharded",
                "base": base,
                "metadata": {
                    "@type": "neuroglancer_uint64_sharded_v1",
                    "hash": "identity",
                    "preshift_bits": sh.preshift_bits,
                    "minishard_bits": sh.minishard_bits,
                    "shard_bits": sh.shard_bits,
                    "minishard_index_encoding": "gzip",
                    "data_encoding": "raw",  # ids only: the values are never read here
                },
            },
            context=self.context,
        ).result()
        self._axis_bits = _code_bit_axes(scale.bits)

    def read_async(self, lo: Chunk, hi: Chunk) -> ts.Future:
        """Voxels [lo, hi) (x, y, z, relative to voxel_offset) as a future of an (X, Y, Z)
        Fortran-ordered array, whose .T is the (Z, Y, X) C-ordered volume the kernels take."""
        o = self.origin
        view = self.store[
            o[0] + lo[0] : o[0] + hi[0], o[1] + lo[1] : o[1] + hi[1], o[2] + lo[2] : o[2] + hi[2], 0
        ]
        return view.read(order="F")

    def stored_chunks(self, shard: int) -> np.ndarray:
        """(n, 3) int64 x, y, z of the chunks stored in parent shard `shard` (none if its file
        does not exist)."""
        sh = self.scale.sharding
        width = sh.preshift_bits + sh.minishard_bits
        lo, hi = shard << width, (shard + 1) << width
        keys = self.sharded.list(
            range=ts.KvStore.KeyRange(chunk_key(lo), chunk_key(hi) if hi < 1 << 64 else b"")
        ).result()
        codes = np.array([int.from_bytes(k, "big") for k in keys], dtype=np.uint64)
        return _decode_codes(codes, self._axis_bits)


def _code_bit_axes(bits: tuple[int, int, int]) -> list[tuple[int, int]]:
    """For each bit j of a compressed Morton code, the (axis, bit of that axis) it holds."""
    out = []
    for i in range(max(bits, default=0)):
        for d in range(3):
            if i < bits[d]:
                out.append((d, i))
    return out


def _decode_codes(codes: np.ndarray, axis_bits: list[tuple[int, int]]) -> np.ndarray:
    xyz = np.zeros((len(codes), 3), dtype=np.int64)
    for j, (d, i) in enumerate(axis_bits):
        xyz[:, d] |= ((codes >> np.uint64(j)) & np.uint64(1)).astype(np.int64) << i
    return xyz


def parent_shards_of(parent: Scale, child: Scale, child_shard: int) -> list[int]:
    """Parent shards whose chunks feed output shard `child_shard` (the halved region's
    parents, stepped at parent-shard granularity)."""
    lo, hi = _parent_chunk_region(parent, child, child_shard)
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return []
    step = shard_shape(parent)
    found = set()
    for z in range(lo[2] - lo[2] % step[2], hi[2], step[2]):
        for y in range(lo[1] - lo[1] % step[1], hi[1], step[1]):
            for x in range(lo[0] - lo[0] % step[0], hi[0], step[0]):
                found.add(shard_of_chunk(parent, (max(x, lo[0]), max(y, lo[1]), max(z, lo[2]))))
    return sorted(found)


def _parent_chunk_region(parent: Scale, child: Scale, child_shard: int) -> tuple[Chunk, Chunk]:
    """[lo, hi) parent chunks covering the voxels that output shard `child_shard` is made of."""
    clo, chi = shard_bounds(child, child_shard)
    if any(h <= low for low, h in zip(clo, chi, strict=True)):
        return (0, 0, 0), (0, 0, 0)  # a shard number past the grid edge holds no chunk
    lo, hi = [], []
    for d in range(3):
        vlo = 2 * clo[d] * child.chunk_size[d]
        vhi = min(2 * chi[d] * child.chunk_size[d], parent.size[d])
        lo.append(vlo // parent.chunk_size[d])
        hi.append(max(lo[-1], -(-vhi // parent.chunk_size[d])))
    return tuple(lo), tuple(hi)  # type: ignore[return-value]


def _output_chunks(store: ScaleStore, shard: int) -> list[tuple[int, Chunk]]:
    """(chunk id, chunk) of every chunk of the output shard, in chunk-id order (minishard by
    minishard, Morton order within: neighbours share parent minishards)."""
    lo, hi = shard_bounds(store.scale, shard)
    tx, ty, tz = store.morton_tables
    out = [
        (tx[x] | ty[y] | tz[z], (x, y, z))
        for z in range(lo[2], hi[2])
        for y in range(lo[1], hi[1])
        for x in range(lo[0], hi[0])
    ]
    out.sort()
    return out


@dataclass
class _Brick:
    code: int
    chunk: Chunk
    extent: Chunk  # output voxels x, y, z
    future: ts.Future | None  # None: no parent chunk, all zero


def downsample_shard(
    task: ShardTask,
    parent: ParentReader,
    store: ScaleStore,
    *,
    method: str | None = None,
    gzip_level: int = DEFAULT_GZIP_LEVEL,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ShardOutcome:
    """Build output shard `task.shard` of `store.scale` from `parent` (its scale N-1).
    Commits once if any chunk is non-zero; on any error nothing is written."""
    if task.kind != "downsample":
        raise InputError(f"task kind {task.kind!r} is not handled by downsample_shard")
    method = method or task.downsample_method or "mode"
    if method not in DOWNSAMPLE_METHODS:
        raise InputError(f"downsample method {method!r} not in {DOWNSAMPLE_METHODS}")
    child = store.scale
    if parent.scale.index != child.index - 1:
        raise InputError(
            f"scale {child.index} is made from scale {child.index - 1}, got scale {parent.scale.index}"
        )
    problem = downres_geometry_problem(parent.scale, child)
    if problem:
        raise InputError(problem, file=f"{task.dest.rstrip('/')}/info")
    started = time.monotonic()
    writer = store.begin_shard()
    try:
        out = _build(task, parent, store, writer, method, gzip_level, on_progress, should_stop)
        if should_stop is not None and should_stop():
            raise Interrupted()
        # A file already here is left over from an interrupted or foreign run, or is the stale
        # shard being rebuilt: the sharded kvstore would merge into it, so start from nothing.
        if store.shard_size(task.shard) is not None:
            store.delete_shard(task.shard)
        if out.chunks_written:
            writer.commit()
            out.status = "done"
            out.bytes_written = store.shard_size(task.shard) or 0
    except BaseException:
        writer.abort()
        raise
    if on_progress is not None:
        on_progress(out.chunks_read)
    out.seconds = time.monotonic() - started
    return out


def _build(task, parent, store, writer, method, gzip_level, on_progress, should_stop):
    child = store.scale
    out = ShardOutcome(status="empty")
    fed = _chunks_with_parents(parent, child, task.shard)
    name = shard_name(child, task.shard)
    for brick in _bricks(parent, store, task.shard, fed):
        if should_stop is not None and should_stop():
            raise Interrupted()
        out.chunks_read += 1
        if brick.future is not None:
            data = _encode_brick(parent, brick, method, gzip_level, name)
            if data is None:
                out.chunks_zero += 1
            else:
                writer.write(brick.code, data)
                out.chunks_written += 1
                out.encoded_bytes += len(data)
        else:
            out.chunks_zero += 1
        if on_progress is not None and out.chunks_read % PROGRESS_EVERY == 0:
            on_progress(out.chunks_read)
    return out


def _chunks_with_parents(parent: ParentReader, child: Scale, child_shard: int) -> set[Chunk]:
    """Output chunks of the shard that at least one stored parent chunk feeds."""
    fed: set[Chunk] = set()
    lo, hi = _parent_chunk_region(parent.scale, child, child_shard)
    for ps in parent_shards_of(parent.scale, child, child_shard):
        try:
            xyz = parent.stored_chunks(ps)
        except ValueError as e:
            raise _read_error(e, parent, shard_name(parent.scale, ps) + ".shard", None) from None
        xyz = xyz[np.all((xyz >= lo) & (xyz < hi), axis=1)]
        # voxels of each parent chunk, halved, then to output chunk indices [first, last]
        pcs, ccs = np.array(parent.scale.chunk_size), 2 * np.array(child.chunk_size)
        first = (xyz * pcs) // ccs
        last = (np.minimum((xyz + 1) * pcs, np.array(parent.scale.size)) - 1) // ccs
        if np.array_equal(first, last):  # the usual case: one output chunk per parent chunk
            fed.update(map(tuple, np.unique(first, axis=0).tolist()))
            continue
        for f, la in zip(first.tolist(), last.tolist(), strict=True):
            for z in range(f[2], la[2] + 1):
                for y in range(f[1], la[1] + 1):
                    for x in range(f[0], la[0] + 1):
                        fed.add((x, y, z))
    return fed


def _bricks(
    parent: ParentReader, store: ScaleStore, shard: int, fed: set[Chunk]
) -> Iterator[_Brick]:
    """Output chunks in chunk-id order with the read of their parent region already issued;
    the next brick's read is issued before the current one is handed out (overlaps I/O)."""
    child = store.scale
    pending: _Brick | None = None
    for code, chunk in _output_chunks(store, shard):
        extent = child.chunk_extent(chunk)
        future = None
        if chunk in fed:
            vlo = tuple(2 * chunk[d] * child.chunk_size[d] for d in range(3))
            vhi = tuple(min(vlo[d] + 2 * extent[d], parent.scale.size[d]) for d in range(3))
            future = parent.read_async(vlo, vhi)
        brick = _Brick(code, chunk, extent, future)
        if pending is not None:
            yield pending
        pending = brick
    if pending is not None:
        yield pending


def _encode_brick(
    parent: ParentReader, brick: _Brick, method: str, level: int, name: str
) -> bytes | None:
    try:
        region = brick.future.result().T  # (Z, Y, X), C-contiguous
    except ValueError as e:
        raise _read_error(
            e, parent, f"parent region of output chunk {brick.chunk}", brick.chunk
        ) from None
    ex, ey, ez = brick.extent
    try:
        down = downsample_labels(region, method)
        if down.shape != (ez, ey, ex):  # child size rounded down: drop the last half window
            down = np.ascontiguousarray(down[:ez, :ey, :ex])
        if not down.any():
            return None
        return gzip_bytes(encode_cseg(down), level)
    except KernelError as e:  # a bug or a geometry we did not validate: name the chunk
        raise InputError(f"output shard {name}: {e}", chunk=brick.chunk) from None


_PERMANENT = re.compile(r"decod|corrupt|invalid|truncat|checksum|out of range|expected", re.I)


def _read_error(e: ValueError, parent: ParentReader, what: str, chunk: Chunk | None) -> Exception:
    """Corrupt parent data is permanent (InputError, names the parent scale and chunk);
    anything else (storage unavailable, ...) is left transient for the queue to retry."""
    msg = str(e)
    if _PERMANENT.search(msg):
        return InputError(
            f"cannot read {what} of scale {parent.scale.index}: {msg}",
            file=parent.where,
            chunk=chunk,
        )
    return RuntimeError(f"reading {parent.where} ({what}): {msg}")


def downsample_task(
    task: ShardTask,
    store: ScaleStore,
    *,
    gzip_level: int = DEFAULT_GZIP_LEVEL,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ShardOutcome:
    """`downsample_shard` with the parent opened from DEST for this task (the worker loop's
    entry point; same signature as `transcode_shard`). A fresh reader per task: its cache
    never serves a parent shard that was rebuilt since."""
    if task.scale < 1:
        raise InputError(f"scale {task.scale} cannot be downsampled (it has no scale above)")
    spec = VolumeSpec.from_json(read_info(task.dest), source=f"{task.dest}/info")
    parent = ParentReader(task.dest, spec.scales[task.scale - 1])
    return downsample_shard(
        task,
        parent,
        store,
        gzip_level=gzip_level,
        on_progress=on_progress,
        should_stop=should_stop,
    )

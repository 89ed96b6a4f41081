"""Build one output shard of scale N from scale N-1 of the destination (the pyramid).

Data moves forward in small bricks, one output chunk at a time, in chunk-id order: the parent
chunks under it (8 for equal chunk sizes) read as stored bytes, by byte range, through a
TensorStore kvstore (local, file://, gs://, memory://) -> gunzip (libdeflate) -> 2x2x2 vote
straight from the compressed_segmentation bytes (Numba, block by block: the decoded 2 MiB
chunk is never built) into the output brick -> compressed_segmentation encode (our kernel,
8^3 blocks) -> gzip -> ONE TensorStore transaction for the shard -> one commit. Only the
gzipped output chunks are held (inside the transaction) until the commit, plus one output
brick and the next brick's reads, so memory does not grow with the parent region (a full
32^3-chunk output shard reads 8 parent shards, 512 GiB of raw voxels).

`decoder="tensorstore"` reads each brick through TensorStore's neuroglancer_precomputed driver
instead (its gunzip and decoder): same result, about 3x slower (bench/bench_pyramid.py).

Sparse by construction: the shard and minishard indices of the parent shards are read first
(formats.md §7.4), and output chunks with no stored parent chunk are never read.
All-zero output chunks are not stored (as TensorStore does).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import deflate
import numpy as np
import tensorstore as ts

from dvid2ng.kernels import KernelError, decode_cseg, downsample_labels, encode_cseg
from dvid2ng.kernels.downsample import DOWNSAMPLE_METHODS, downsample_cseg_chunk, downsampled_shape
from dvid2ng.schemas.sharding import (
    morton_axis_tables,
    shard_bounds,
    shard_name,
    shard_of_chunk,
    shard_shape,
)
from dvid2ng.schemas.spec import Scale, VolumeSpec
from dvid2ng.schemas.task import ShardTask
from dvid2ng.worker.errors import InputError, Interrupted
from dvid2ng.worker.output import ScaleStore, kvstore_spec, read_info
from dvid2ng.worker.transcode import DEFAULT_GZIP_LEVEL, ShardOutcome, gzip_bytes

PROGRESS_EVERY = 64  # output chunks between progress callbacks
DECODERS = ("dvid2ng", "tensorstore")
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


@dataclass
class ParentIndex:
    """Where every stored chunk of some parent shards is: sorted chunk ids, the shard file
    holding each, and its byte range there (from the shard and minishard indices)."""

    ids: np.ndarray  # uint64, ascending
    shard: np.ndarray  # int64 shard number per id
    start: np.ndarray  # int64 absolute byte offset in the shard file
    size: np.ndarray  # int64 bytes

    def find(self, chunk_id: int) -> int:
        """Position of chunk_id in the index, -1 if it is not stored."""
        i = int(np.searchsorted(self.ids, np.uint64(chunk_id)))
        return i if i < len(self.ids) and int(self.ids[i]) == chunk_id else -1


class ParentReader:
    """Scale N-1 of DEST: its shard and minishard indices and the stored (gzipped) chunk bytes,
    read through TensorStore's kvstore (local, file://, gs://, memory://) by byte range; with
    decoder "tensorstore", regions decoded by TensorStore's neuroglancer_precomputed driver.

    The indices are read here (formats.md §7.4) rather than through TensorStore's sharded
    kvstore: listing a full shard through it took seconds, and every chunk read there looks the
    indices up again."""

    def __init__(
        self,
        dest: str,
        scale: Scale,
        context: ts.Context | None = None,
        *,
        decoder: str = "dvid2ng",
    ) -> None:
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.dest = dest
        self.scale = scale
        self.decoder = decoder
        self.context = context or ts.Context(
            {
                "data_copy_concurrency": {"limit": 2},
                "file_io_concurrency": {"limit": 8},
                "cache_pool": {"total_bytes_limit": 0},
            }
        )
        self.where = f"{dest.rstrip('/')}/{scale.key}"
        base = kvstore_spec(dest)
        base["path"] = base["path"] + scale.key + "/"
        try:
            self.base = ts.KvStore.open(base, context=self.context).result()
            self.store = None
            if decoder == "tensorstore":
                self.store = ts.open(
                    {
                        "driver": "neuroglancer_precomputed",
                        "kvstore": kvstore_spec(dest),
                        "scale_index": scale.index,
                        "recheck_cached_data": "open",
                    },
                    read=True,
                    context=ts.Context(
                        {
                            "data_copy_concurrency": {"limit": 2},
                            "cache_pool": {"total_bytes_limit": READ_CACHE_BYTES},
                        }
                    ),
                ).result()
        except ValueError as e:
            raise InputError(f"cannot open scale {scale.index} of {dest}: {e}") from None
        self._codes = morton_axis_tables(scale)
        self.index_len = 16 << scale.sharding.minishard_bits

    def shard_file(self, shard: int) -> str:
        return shard_name(self.scale, shard) + ".shard"

    def chunk_id(self, chunk: Chunk) -> int:
        tx, ty, tz = self._codes
        return tx[chunk[0]] | ty[chunk[1]] | tz[chunk[2]]

    def index(self, shards: list[int]) -> ParentIndex:
        """Read the shard indices of `shards` (absent files hold nothing), then every non-empty
        minishard index, all requests in flight at once."""
        heads = {
            s: self.base.read(self.shard_file(s).encode(), byte_range=slice(0, self.index_len))
            for s in shards
        }
        pending = []
        for s, fut in heads.items():
            got = self._result(fut, self.shard_file(s))
            if got.state != "value":
                continue
            raw = bytes(got.value)
            if len(raw) != self.index_len:
                raise InputError(
                    f"shard index truncated: {len(raw)} of {self.index_len} bytes",
                    file=self._file(s),
                )
            entries = np.frombuffer(raw, dtype="<u8").reshape(-1, 2).astype(np.int64)
            for ms, (a, b) in enumerate(entries.tolist()):
                if b > a:
                    lo, hi = self.index_len + a, self.index_len + b
                    pending.append(
                        (
                            s,
                            ms,
                            self.base.read(self.shard_file(s).encode(), byte_range=slice(lo, hi)),
                        )
                    )
                elif b < a:
                    raise InputError(
                        f"shard index entry {ms} has end {b} < start {a}", file=self._file(s)
                    )
        parts = []
        for s, ms, fut in pending:
            got = self._result(fut, self.shard_file(s))
            parts.append(self._minishard(s, ms, bytes(got.value) if got.state == "value" else b""))
        if not parts:
            empty = np.zeros(0, np.int64)
            return ParentIndex(np.zeros(0, np.uint64), empty, empty, empty)
        ids = np.concatenate([p[0] for p in parts])
        order = np.argsort(ids, kind="stable")
        return ParentIndex(*(np.concatenate([p[k] for p in parts])[order] for k in range(4)))

    def _minishard(self, shard: int, ms: int, raw: bytes):
        try:
            data = deflate.gzip_decompress(raw)
        except (ValueError, deflate.DeflateError) as e:
            raise InputError(
                f"scale {self.scale.index} minishard index {ms} is not valid gzip: {e}",
                file=self._file(shard),
            ) from None
        if len(data) % 24:
            raise InputError(
                f"scale {self.scale.index} minishard index {ms} is {len(data)} bytes, not 3 x n uint64",
                file=self._file(shard),
            )
        rows = np.frombuffer(data, dtype="<u8").reshape(3, -1)
        ids = np.cumsum(rows[0], dtype=np.uint64)
        sizes = rows[2].astype(np.int64)
        # row 1: start of each chunk relative to the end of the previous one (the first: to the
        # end of the shard index)
        starts = (
            self.index_len
            + np.cumsum(rows[1].astype(np.int64))
            + np.concatenate([[0], np.cumsum(sizes[:-1])])
        )
        if len(sizes) and (sizes.min() < 0 or starts.min() < self.index_len):
            raise InputError(
                f"scale {self.scale.index} minishard index {ms} has negative offsets or sizes",
                file=self._file(shard),
            )
        return ids, np.full(len(ids), shard, np.int64), starts.astype(np.int64), sizes

    def read_stored_async(
        self, index: ParentIndex, entries: list[int]
    ) -> list[tuple[ts.Future, int, int]]:
        """The stored bytes (gzip) of index entries, as (future of a kvstore ReadResult, start,
        end within its value) each. Entries that sit back to back in one shard file (the 8
        parent chunks of an output chunk usually do: consecutive chunk ids) share one read."""
        out: list[tuple[ts.Future, int, int]] = []
        run: list[int] = []

        def flush() -> None:
            if not run:
                return
            lo = int(index.start[run[0]])
            hi = int(index.start[run[-1]] + index.size[run[-1]])
            key = self.shard_file(int(index.shard[run[0]])).encode()
            fut = self.base.read(key, byte_range=slice(lo, hi))
            for i in run:
                a = int(index.start[i]) - lo
                out.append((fut, a, a + int(index.size[i])))
            run.clear()

        for i in entries:
            if run and not (
                index.shard[i] == index.shard[run[-1]]
                and index.start[i] == index.start[run[-1]] + index.size[run[-1]]
            ):
                flush()
            run.append(i)
        flush()
        return out

    def read_region_async(self, lo: Chunk, hi: Chunk) -> ts.Future:
        """Voxels [lo, hi) (x, y, z, from the volume origin) decoded by TensorStore, as a future
        of an (X, Y, Z) Fortran-ordered array whose .T is the (Z, Y, X) C-ordered volume."""
        o = tuple(int(v) for v in self.store.domain.origin[:3])
        view = self.store[
            o[0] + lo[0] : o[0] + hi[0], o[1] + lo[1] : o[1] + hi[1], o[2] + lo[2] : o[2] + hi[2], 0
        ]
        return view.read(order="F")

    def _file(self, shard: int) -> str:
        return f"{self.where}/{self.shard_file(shard)}"

    def _result(self, fut: ts.Future, name: str):
        try:
            return fut.result()
        except ValueError as e:
            raise RuntimeError(f"reading {self.where}/{name}: {e}") from None  # transient


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
    """One output chunk and the pending reads of the parent voxels it is voted from."""

    code: int
    chunk: Chunk
    extent: Chunk  # output voxels x, y, z
    vlo: Chunk  # parent voxel box [vlo, vhi), x y z
    vhi: Chunk
    parts: list[tuple[Chunk, ts.Future, int, int]]  # stored parent chunks: read, byte range
    complete: bool  # the box is covered by stored parent chunks (no zero fill needed)
    region: ts.Future | None = None  # decoder "tensorstore": the decoded box


def downsample_shard(
    task: ShardTask,
    parent: ParentReader,
    store: ScaleStore,
    *,
    method: str | None = None,
    gzip_level: int = DEFAULT_GZIP_LEVEL,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    fence: Callable[[], bool] | None = None,
) -> ShardOutcome:
    """Build output shard `task.shard` of `store.scale` from `parent` (its scale N-1).
    The one commit replaces whatever file was there (see ShardWriter; an all-zero shard
    removes it); `fence` is asked right before it. On any error nothing is written."""
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
    writer = store.begin_shard(task.shard)
    try:
        out = _build(task, parent, store, writer, method, gzip_level, on_progress, should_stop)
        if should_stop is not None and should_stop():
            raise Interrupted()
        writer.commit(fence)
        if out.chunks_written:
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
    out = ShardOutcome(status="empty")
    stored = _parent_index(parent, store.scale, task.shard)
    name = shard_name(store.scale, task.shard)
    buffers: dict[tuple[int, int, int], np.ndarray] = {}
    for brick in _bricks(parent, store, task.shard, stored):
        if should_stop is not None and should_stop():
            raise Interrupted()
        out.chunks_read += 1
        data = (
            _encode_brick(parent, brick, method, gzip_level, name, buffers) if brick.parts else None
        )
        if data is None:
            out.chunks_zero += 1
        else:
            writer.write(brick.code, data)
            out.chunks_written += 1
            out.encoded_bytes += len(data)
        if on_progress is not None and out.chunks_read % PROGRESS_EVERY == 0:
            on_progress(out.chunks_read)
    return out


def _parent_index(parent: ParentReader, child: Scale, child_shard: int) -> ParentIndex:
    """Where the stored parent chunks feeding the output shard are."""
    return parent.index(parent_shards_of(parent.scale, child, child_shard))


def _bricks(
    parent: ParentReader, store: ScaleStore, shard: int, stored: ParentIndex
) -> Iterator[_Brick]:
    """Output chunks in chunk-id order with the reads of their parent chunks already issued;
    the next brick's reads are issued before the current one is handed out (overlaps I/O)."""
    child, pscale = store.scale, parent.scale
    pending: _Brick | None = None
    for code, chunk in _output_chunks(store, shard):
        extent = child.chunk_extent(chunk)
        vlo = tuple(2 * chunk[d] * child.chunk_size[d] for d in range(3))
        vhi = tuple(min(vlo[d] + 2 * extent[d], pscale.size[d]) for d in range(3))
        ranges = [
            range(vlo[d] // pscale.chunk_size[d], -(-vhi[d] // pscale.chunk_size[d]))
            for d in range(3)
        ]
        inside = [(x, y, z) for z in ranges[2] for y in ranges[1] for x in ranges[0]]
        found = [(c, stored.find(parent.chunk_id(c))) for c in inside]
        present = [(c, i) for c, i in found if i >= 0]
        brick = _Brick(code, chunk, extent, vlo, vhi, [], len(present) == len(inside))  # type: ignore[arg-type]
        if present:
            if parent.decoder == "tensorstore":
                brick.region = parent.read_region_async(vlo, vhi)  # type: ignore[arg-type]
                brick.parts = [(c, brick.region, 0, 0) for c, _ in present]
            else:
                present.sort(key=lambda ci: ci[1])  # index order = file order within a shard
                reads = parent.read_stored_async(stored, [i for _, i in present])
                brick.parts = [(c, *r) for (c, _), r in zip(present, reads, strict=True)]
        if pending is not None:
            yield pending
        pending = brick
    if pending is not None:
        yield pending


def _stored_bytes(parent: ParentReader, pchunk: Chunk, future: ts.Future, a: int, b: int) -> bytes:
    """The gunzipped cseg bytes of one stored parent chunk."""
    try:
        got = future.result()
    except ValueError as e:
        raise _read_error(e, parent, f"chunk {pchunk}", pchunk) from None
    if got.state != "value":  # gone since it was indexed: a concurrent rewrite
        raise RuntimeError(
            f"{parent.where}: the shard holding chunk {pchunk} vanished while reading "
            f"(scale {parent.scale.index} rewritten during the downsample?)"
        )
    try:
        return deflate.gzip_decompress(memoryview(got.value)[a:b])
    except (ValueError, deflate.DeflateError) as e:
        raise InputError(
            f"stored chunk of scale {parent.scale.index} is not valid gzip: {e}",
            file=parent.where,
            chunk=pchunk,
        ) from None


def _vote_parts(parent: ParentReader, brick: _Brick, method: str, buffers: dict) -> np.ndarray:
    """The vote over the brick's parent box, (Z, Y, X) of ceil(box / 2): each stored parent
    chunk is voted straight from its cseg bytes (downsample_cseg_chunk, no decoded chunk);
    the rest stays zero."""
    pscale = parent.scale
    box = tuple(brick.vhi[d] - brick.vlo[d] for d in (2, 1, 0))
    shape = downsampled_shape(box)
    out = buffers.get(shape)
    if out is None:
        if len(buffers) >= 4:  # edge bricks have their own shapes; keep a few
            buffers.clear()
        out = buffers[shape] = np.empty(shape, np.uint64)
    if not brick.complete:
        out.fill(0)
    for pchunk, future, a_byte, b_byte in brick.parts:
        data = _stored_bytes(parent, pchunk, future, a_byte, b_byte)
        ext = pscale.chunk_extent(pchunk)
        p0 = tuple(pchunk[d] * pscale.chunk_size[d] for d in range(3))
        a = tuple(max(p0[d], brick.vlo[d]) for d in range(3))
        b = tuple(min(p0[d] + ext[d], brick.vhi[d]) for d in range(3))
        at = tuple((a[d] - brick.vlo[d]) // 2 for d in (2, 1, 0))  # even: chunk origins are
        try:
            if a == p0 and all(b[d] == p0[d] + ext[d] for d in range(3)):
                downsample_cseg_chunk(data, (ext[2], ext[1], ext[0]), out, at, method)
            else:  # a parent chunk larger than the brick: decode it whole, vote the overlap
                full = decode_cseg(data, (ext[2], ext[1], ext[0]))
                part = full[
                    a[2] - p0[2] : b[2] - p0[2],
                    a[1] - p0[1] : b[1] - p0[1],
                    a[0] - p0[0] : b[0] - p0[0],
                ]
                down = downsample_labels(part, method)
                out[
                    at[0] : at[0] + down.shape[0],
                    at[1] : at[1] + down.shape[1],
                    at[2] : at[2] + down.shape[2],
                ] = down
        except KernelError as e:
            raise InputError(
                f"corrupt stored chunk of scale {pscale.index}: {e}",
                file=parent.where,
                chunk=pchunk,
            ) from None
    return out


def _encode_brick(
    parent: ParentReader, brick: _Brick, method: str, level: int, name: str, buffers: dict
) -> bytes | None:
    ex, ey, ez = brick.extent
    try:
        if brick.region is not None:
            try:
                region = brick.region.result().T  # (Z, Y, X), C-contiguous
            except ValueError as e:
                raise _read_error(
                    e, parent, f"parent region of output chunk {brick.chunk}", brick.chunk
                ) from None
            down = downsample_labels(region, method)
        else:
            down = _vote_parts(parent, brick, method, buffers)
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
    fence: Callable[[], bool] | None = None,
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
        fence=fence,
    )

"""Convert one output shard from its DVID export file (the s0 path; any directly exported scale).

Data moves forward only: Arrow records (streamed) -> zstd -> DVID block -> compressed_segmentation
(direct transcode, label table remapped) -> gzip -> one TensorStore transaction -> one commit.
Nothing is written unless every record of the file converted: a corrupt block fails the shard.

One shard uses every CPU of the worker: the reader (this thread) hands records in small groups
to a pool of `threads - 1` converter threads and converts groups itself while it waits; each
group is decompressed, transcoded and gzipped (zstd, the Numba kernels and libdeflate all
release the GIL), and this thread writes the results into the shard's one transaction **in
file order**, with a bounded number of groups in flight, so memory stays bounded and errors
are reported for the first bad record in the file.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import deflate
import numpy as np

from dvid2ng.dvidexport.reader import ChunkRecord, ExportFileReader, decompress_block
from dvid2ng.dvidexport.storage import source_file
from dvid2ng.kernels import KernelError, dvid_block_to_cseg
from dvid2ng.kernels.zstride import dvid_block_to_cseg_zstride
from dvid2ng.schemas.dvid import ExportFormatError
from dvid2ng.schemas.sharding import (
    dvid_shard_dim_voxels,
    parse_dvid_file_stem,
    shard_bounds,
    shard_of_code,
)
from dvid2ng.schemas.spec import DVID_BLOCK, Scale, expected_chunk_size
from dvid2ng.schemas.task import ShardTask
from dvid2ng.worker.errors import InputError, Interrupted
from dvid2ng.worker.outcome import DEFAULT_GZIP_LEVEL, ShardOutcome
from dvid2ng.worker.output import ScaleStore, ShardWriter
from dvid2ng.worker.sources import check_source_unchanged

PROGRESS_EVERY = 256  # records between progress callbacks
GROUP_RECORDS = 16  # records per pool task: amortises the executor's per-task cost (~10 us)
GROUPS_PER_THREAD = 4  # groups in flight per converter thread (the memory bound)

# A transcoder turns one DVID block (uint8 array) into chunk bytes: (block, label table or None
# for supervoxels, extent (x, y, z) or None for the whole block) -> (cseg bytes, any voxel
# non-zero). The z-compress variant plugs in here.
Encoder = Callable[[np.ndarray, np.ndarray | None, tuple[int, int, int] | None], tuple]


def gzip_bytes(data: np.ndarray | bytes, level: int) -> bytes:
    """A gzip member, as `data_encoding: gzip` asks. libdeflate (the `deflate` binding, which
    releases the GIL from 0.9 on): see docs/performance.md for levels and libraries."""
    return bytes(deflate.gzip_compress(data, level))


@dataclass(frozen=True)
class ShardContext:
    """What converting a record of one shard needs, fixed for the whole shard."""

    scale: Scale
    shard: int
    shard_name: str
    file: str  # the source file, as errors name it
    lo: tuple[int, int, int]  # the shard's chunk bounds [lo, hi)
    hi: tuple[int, int, int]
    dvid_lo: tuple[int, ...]  # the chunk region DVID may put into this file
    dvid_hi: tuple[int, ...]
    morton: tuple[list[int], list[int], list[int]]
    supervoxels: bool
    gzip_level: int
    interior: bool  # every chunk of the shard is whole (none clipped by the volume edge)
    encode: Encoder = dvid_block_to_cseg

    @classmethod
    def for_task(
        cls, task: ShardTask, store: ScaleStore, gzip_level: int, encode: Encoder | None = None
    ) -> ShardContext:
        scale = store.scale
        lo, hi = shard_bounds(scale, task.shard)
        dvid_lo, dvid_hi = _dvid_file_region(scale, task.sources[0].arrow)
        interior = all(h * c <= s for h, c, s in zip(hi, scale.chunk_size, scale.size, strict=True))
        return cls(
            scale=scale,
            shard=task.shard,
            shard_name=task.shard_name,
            file=task.sources[0].arrow,
            lo=lo,
            hi=hi,
            dvid_lo=dvid_lo,
            dvid_hi=dvid_hi,
            morton=store.morton_tables,
            supervoxels=task.label_mode == "supervoxels",
            gzip_level=gzip_level,
            interior=interior,
            encode=encode or dvid_block_to_cseg,
        )


def convert_record(rec: ChunkRecord, ctx: ShardContext) -> tuple[int | None, bytes | None]:
    """(chunk id, gzipped chunk) of one record: chunk id None for a block DVID exported past the
    volume edge (clipped away entirely), bytes None for an all-background chunk (not stored).
    Raises InputError (or ExportFormatError) naming the file and chunk for bad input.

    Runs on the converter threads: zstd, the kernel and gzip release the GIL."""
    x, y, z = rec.x, rec.y, rec.z
    lo, hi = ctx.lo, ctx.hi
    inside = lo[0] <= x < hi[0] and lo[1] <= y < hi[1] and lo[2] <= z < hi[2]
    extent = None if ctx.interior and inside else ctx.scale.chunk_extent((x, y, z))
    if not inside:
        dlo, dhi = ctx.dvid_lo, ctx.dvid_hi
        if 0 in extent and all(dlo[d] <= c < dhi[d] for d, c in enumerate((x, y, z))):
            return None, None  # DVID exports blocks past the volume edge; clip them
        raise InputError(
            f"record belongs outside output shard {ctx.shard_name} "
            f"(chunks {list(lo)}..{list(hi)} exclusive) that this file stands for",
            file=ctx.file,
            chunk=(x, y, z),
        )
    tx, ty, tz = ctx.morton
    code = tx[x] | ty[y] | tz[z]
    if shard_of_code(ctx.scale, code) != ctx.shard:  # bbox and code agree unless geometry is wrong
        raise InputError(
            f"chunk id {code} is not in shard {ctx.shard_name}", file=ctx.file, chunk=(x, y, z)
        )
    block = decompress_block(rec, ctx.file)
    try:
        cseg, nonzero = ctx.encode(block, None if ctx.supervoxels else rec.labels, extent)
    except KernelError as e:
        raise InputError(f"corrupt DVID block: {e}", file=ctx.file, chunk=(x, y, z)) from None
    if not nonzero:
        return code, None
    return code, gzip_bytes(cseg, ctx.gzip_level)


def _convert_group(recs: list[ChunkRecord], ctx: ShardContext) -> list:
    return [convert_record(r, ctx) for r in recs]


def transcode_shard(
    task: ShardTask,
    store: ScaleStore,
    *,
    gzip_level: int = DEFAULT_GZIP_LEVEL,
    threads: int = 1,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    fence: Callable[[], bool] | None = None,
    encode: Encoder | None = None,
) -> ShardOutcome:
    """Convert the shard on `threads` threads; commit only if every record converted (else
    nothing is written).

    The one commit replaces whatever file was there (see ShardWriter); `fence` is asked right
    before it, so a worker whose claim was taken over never writes."""
    if task.kind != "transcode":
        raise InputError(f"task kind {task.kind!r} is not handled by transcode_shard")
    stride = z_stride(task, store.scale)  # fail before reading anything if the geometry is wrong
    if encode is None and stride > 1:  # keep every stride-th Z slice: one block is one chunk
        encode = functools.partial(_encode_zstride, stride=stride)
    started = time.monotonic()
    check_source_unchanged(task.sources[0])
    ctx = ShardContext.for_task(task, store, gzip_level, encode)
    writer = store.begin_shard(task.shard)
    try:
        out = _convert_records(task, ctx, writer, max(1, threads), on_progress, should_stop)
        if should_stop is not None and should_stop():
            raise Interrupted()
        writer.commit(fence)  # with no chunks this removes a stale file, if any
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


def _convert_records(
    task: ShardTask,
    ctx: ShardContext,
    writer: ShardWriter,
    threads: int,
    on_progress: Callable[[int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> ShardOutcome:
    src = task.sources[0]
    out = ShardOutcome(status="empty", threads=threads)
    next_progress = 1  # the first group is reported at once: its arrival shows the start-up
    try:
        arrow = source_file(src.arrow, src.generation, src.size)  # gs://: pinned generation
        csv = source_file(src.csv) if src.csv else None
        with ExportFileReader(arrow, csv, name=src.arrow) as reader:
            for results in _converted_groups(reader, ctx, threads, should_stop):
                stored = [(code, data) for code, data in results if data is not None]
                writer.write_many(stored)
                out.chunks_read += len(results)
                out.chunks_written += len(stored)
                out.encoded_bytes += sum(len(data) for _, data in stored)
                outside = sum(code is None for code, _ in results)
                out.chunks_outside += outside
                out.chunks_zero += len(results) - len(stored) - outside
                if on_progress is not None and out.chunks_read >= next_progress:
                    on_progress(out.chunks_read)
                    next_progress = out.chunks_read + PROGRESS_EVERY
    except ExportFormatError as e:
        raise InputError(e.cause, file=e.file or src.arrow, chunk=e.chunk) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise InputError(f"cannot read source: {e}", file=src.arrow) from None
    return out


def z_stride(task: ShardTask, scale: Scale) -> int:
    """Z stride of the task (z_compress + 1), checked against the destination geometry."""
    if not task.z_compress:
        return 1
    if task.scale != 0:
        raise InputError(
            f"z_compress {task.z_compress} given for scale {task.scale}: only scale 0 is "
            "Z-compressed (DVID's lower scales are already native Z)"
        )
    want = expected_chunk_size(0, task.z_compress)
    if scale.chunk_size != want:
        raise InputError(
            f"z_compress {task.z_compress} needs destination scale 0 chunks of {list(want)}, "
            f"the destination info says {list(scale.chunk_size)}"
        )
    return task.z_compress + 1


def _encode_zstride(
    block: np.ndarray,
    table: np.ndarray | None,
    extent: tuple[int, int, int] | None,
    *,
    stride: int,
) -> tuple[np.ndarray, bool]:
    """The Encoder of a Z-compressed task (its kernel is nogil too, so threads still help)."""
    return dvid_block_to_cseg_zstride(block, table, stride, extent)


class _ReaderFailed(Exception):
    """The reader raised after handing out the records before the bad one."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _groups(records: Iterable[ChunkRecord], size: int) -> Iterator[list[ChunkRecord]]:
    """Records in groups of `size`. When the reader fails, the records read before the failure
    come first (as a last, short group), then _ReaderFailed: a bad record earlier in the file
    must be reported before a problem the reader finds later."""
    group: list[ChunkRecord] = []
    try:
        for rec in records:
            group.append(rec)
            if len(group) == size:
                yield group
                group = []
    except Exception as e:
        if group:
            yield group
        raise _ReaderFailed(e) from e
    if group:
        yield group


def _converted_groups(
    records: Iterable[ChunkRecord],
    ctx: ShardContext,
    threads: int,
    should_stop: Callable[[], bool] | None,
) -> Iterator[list[tuple[int | None, bytes | None]]]:
    """The converted records in file order, group by group. With one thread everything runs
    here; with more, at most threads x GROUPS_PER_THREAD groups are queued or converting, on
    threads - 1 pool threads and on this thread, which converts while it waits (see
    `_Window.oldest`). The first failure in file order is raised, after the pool has stopped."""
    if threads <= 1:
        try:
            for group in _groups(records, GROUP_RECORDS):
                if should_stop is not None and should_stop():
                    raise Interrupted()
                yield _convert_group(group, ctx)
        except _ReaderFailed as e:
            raise e.error from None
        return
    pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="convert")
    window = _Window(pool, ctx)
    try:
        try:
            for group in _groups(records, GROUP_RECORDS):
                if should_stop is not None and should_stop():
                    raise Interrupted()
                window.submit(group)
                if len(window) >= threads * GROUPS_PER_THREAD:
                    yield window.oldest()
        except _ReaderFailed as e:
            while window:  # an error in an earlier record wins
                window.oldest()
            raise e.error from None
        while window:
            yield window.oldest()
    finally:
        window.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class _Window:
    """The groups in flight, oldest first, each with the future of its conversion.

    The reading thread is a converter too. With a pool of `threads` beside it, it mostly
    waited, and a py-spy --gil profile showed it waiting for the GIL behind the converters
    (3.8 s on 2 threads against 1.0 s on 1, 32K chunks). A pool of threads - 1 with this
    thread converting while it waits was 2-7 % faster (mean 5 %) in each of 4 rounds
    alternating with a pool of 2 (docs/performance.md, "the reading thread converts too")."""

    def __init__(self, pool: ThreadPoolExecutor, ctx: ShardContext) -> None:
        self.pool = pool
        self.ctx = ctx
        self.items: deque[tuple[Future, list[ChunkRecord]]] = deque()

    def __len__(self) -> int:
        return len(self.items)

    def submit(self, group: list[ChunkRecord]) -> None:
        self.items.append((self.pool.submit(_convert_group, group, self.ctx), group))

    def oldest(self) -> list:
        """The oldest group's results (its error, if it failed). Until it is done, this thread
        converts the newest group no pool thread has started, the oldest one included: it
        never waits for a pool whose threads are all busy elsewhere (or not yet running)."""
        while not self.items[0][0].done() and self._convert_one_here():
            pass  # the oldest may itself be the group converted here: items[0] is read anew
        return self.items.popleft()[0].result()

    def _convert_one_here(self) -> bool:
        for i in range(len(self.items) - 1, -1, -1):  # newest first: the pool takes the oldest
            queued, group = self.items[i]
            if queued.cancel():  # False once a pool thread has started it (or it is done)
                here: Future = Future()
                try:
                    here.set_result(_convert_group(group, self.ctx))
                except Exception as e:  # reported in file order, by `oldest`
                    here.set_exception(e)
                self.items[i] = (here, group)
                return True
        return False

    def cancel(self) -> None:
        for future, _ in self.items:
            future.cancel()


def _dvid_file_region(scale: Scale, arrow_path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunk region DVID may put into the file `X_Y_Z.arrow` (its cubic shard of side D)."""
    try:
        origin = parse_dvid_file_stem(Path(arrow_path).stem)
    except ValueError:
        return (0, 0, 0), (0, 0, 0)
    side = dvid_shard_dim_voxels(scale) // DVID_BLOCK
    lo = tuple(o // DVID_BLOCK for o in origin)
    return lo, tuple(lo_d + side for lo_d in lo)

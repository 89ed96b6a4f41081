"""Convert one output shard from its DVID export file (the s0 path; any directly exported scale).

Data moves forward only: Arrow records (streamed) -> zstd -> DVID block -> compressed_segmentation
(direct transcode, label table remapped) -> gzip -> one TensorStore transaction -> one commit.
Nothing is written unless every record of the file converted: a corrupt block fails the shard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import deflate
import numpy as np

from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
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
from dvid2ng.worker.output import ScaleStore, ShardWriter
from dvid2ng.worker.sources import check_source_unchanged

DEFAULT_GZIP_LEVEL = 6
PROGRESS_EVERY = 256  # records between progress callbacks


@dataclass
class ShardOutcome:
    status: str  # "done" or "empty"
    chunks_read: int = 0  # records in the source file(s)
    chunks_written: int = 0  # non-empty chunks stored
    chunks_zero: int = 0  # all-background chunks (not stored)
    chunks_outside: int = 0  # exported blocks beyond the volume edge (clipped away entirely)
    bytes_written: int = 0  # shard file size
    encoded_bytes: int = 0  # sum of gzipped chunk sizes
    seconds: float = 0.0


def gzip_bytes(data: np.ndarray | bytes, level: int) -> bytes:
    """A gzip member, as `data_encoding: gzip` asks. libdeflate: at level 6 about 2.5x faster
    than zlib's level 6 with a slightly better ratio on cseg chunks (bench/bench_gzip.py)."""
    return bytes(deflate.gzip_compress(data, level))


def transcode_shard(
    task: ShardTask,
    store: ScaleStore,
    *,
    gzip_level: int = DEFAULT_GZIP_LEVEL,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    fence: Callable[[], bool] | None = None,
) -> ShardOutcome:
    """Convert the shard; commit only if every record converted (else nothing is written).

    The one commit replaces whatever file was there (see ShardWriter); `fence` is asked right
    before it, so a worker whose claim was taken over never writes."""
    if task.kind != "transcode":
        raise InputError(f"task kind {task.kind!r} is not handled by transcode_shard")
    z_stride(task, store.scale)  # fail before reading anything if the geometry is wrong
    started = time.monotonic()
    check_source_unchanged(task.sources[0])
    writer = store.begin_shard(task.shard)
    try:
        out = _convert_records(task, store, writer, gzip_level, on_progress, should_stop)
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
    store: ScaleStore,
    writer: ShardWriter,
    gzip_level: int,
    on_progress: Callable[[int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> ShardOutcome:
    scale = store.scale
    src = task.sources[0]
    lo, hi = shard_bounds(scale, task.shard)
    dvid_lo, dvid_hi = _dvid_file_region(scale, src.arrow)
    tx, ty, tz = store.morton_tables
    supervoxels = task.label_mode == "supervoxels"
    stride = z_stride(task, scale)
    out = ShardOutcome(status="empty")
    try:
        arrow = source_file(src.arrow, src.generation, src.size)  # gs://: pinned generation
        csv = source_file(src.csv) if src.csv else None
        with ExportFileReader(arrow, csv, name=src.arrow) as reader:
            for rec in reader:
                if should_stop is not None and should_stop():
                    raise Interrupted()
                out.chunks_read += 1
                chunk = (rec.x, rec.y, rec.z)
                extent = scale.chunk_extent(chunk)
                if not all(lo[d] <= chunk[d] < hi[d] for d in range(3)):
                    if 0 in extent and all(dvid_lo[d] <= chunk[d] < dvid_hi[d] for d in range(3)):
                        out.chunks_outside += 1  # DVID exports blocks past the volume edge; clip
                        continue
                    raise InputError(
                        f"record belongs outside output shard {task.shard_name} "
                        f"(chunks {list(lo)}..{list(hi)} exclusive) that this file stands for",
                        file=src.arrow,
                        chunk=chunk,
                    )
                code = tx[rec.x] | ty[rec.y] | tz[rec.z]
                if (
                    shard_of_code(scale, code) != task.shard
                ):  # bbox and code agree unless the geometry code is wrong
                    raise InputError(
                        f"chunk id {code} is not in shard {task.shard_name}",
                        file=src.arrow,
                        chunk=chunk,
                    )
                block = decompress_block(rec, src.arrow)
                table = None if supervoxels else rec.labels
                try:
                    if stride == 1:
                        cseg, nonzero = dvid_block_to_cseg(block, table, extent)
                    else:  # keep every stride-th Z slice: one block is one output chunk
                        cseg, nonzero = dvid_block_to_cseg_zstride(block, table, stride, extent)
                except KernelError as e:
                    raise InputError(
                        f"corrupt DVID block: {e}", file=src.arrow, chunk=chunk
                    ) from None
                if nonzero:
                    data = gzip_bytes(cseg, gzip_level)
                    writer.write(code, data)
                    out.chunks_written += 1
                    out.encoded_bytes += len(data)
                else:
                    out.chunks_zero += 1
                if on_progress is not None and out.chunks_read % PROGRESS_EVERY == 0:
                    on_progress(out.chunks_read)
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


def _dvid_file_region(scale: Scale, arrow_path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunk region DVID may put into the file `X_Y_Z.arrow` (its cubic shard of side D)."""
    try:
        origin = parse_dvid_file_stem(Path(arrow_path).stem)
    except ValueError:
        return (0, 0, 0), (0, 0, 0)
    side = dvid_shard_dim_voxels(scale) // DVID_BLOCK
    lo = tuple(o // DVID_BLOCK for o in origin)
    return lo, tuple(lo_d + side for lo_d in lo)

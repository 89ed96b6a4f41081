"""Our emulation of DVID `export-shards` (for the demo, tests and benchmarks).

`write_export_file` writes one `X_Y_Z.arrow` (+ CSV index) with DVID's exact schema;
`write_export` builds a whole export folder from per-scale supervoxel volumes the way DVID
does (formats reference section 2): 64^3 blocks, DVID block encoding with a shuffled label
table, all-background blocks skipped, blocks grouped by neuroglancer shard into files named by
the shard's voxel origin, records in ascending z then y with x shuffled within a row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zstandard

from dvid2ng.dvidexport.reader import ChunkRecord
from dvid2ng.kernels.dvid_encode import encode_dvid_block
from dvid2ng.schemas.dvid import (
    DVID_ARROW_SCHEMA,
    LAYOUT_COLUMNS,
    ChunkIndex,
    format_chunk_index,
)
from dvid2ng.schemas.sharding import dvid_file_stem, shard_of_chunk
from dvid2ng.schemas.spec import DVID_BLOCK, VolumeSpec

Chunk = tuple[int, int, int]
# (x, y, z, labels, supervoxels, raw DVID block bytes)
RawRecord = tuple[int, int, int, Any, Any, bytes]

EOS_MARKER = b"\xff\xff\xff\xff\x00\x00\x00\x00"


@dataclass
class WriteStats:
    records: int
    batches: int
    bytes: int  # size of the .arrow file
    csv_bytes: int
    schema_size: int  # true end of the schema message (= first record batch offset)
    chunks: list[Chunk] = field(default_factory=list)  # in file order


def _schema_message() -> bytes:
    return DVID_ARROW_SCHEMA.serialize().to_pybytes()


class _BatchBuilder:
    def __init__(self, zstd_level: int) -> None:
        self.cctx = zstandard.ZstdCompressor(
            level=zstd_level, write_content_size=True, write_checksum=True
        )
        self.reset()

    def reset(self) -> None:
        self.xyz: list[tuple[int, int, int]] = []
        self.labels: list[np.ndarray] = []
        self.supervoxels: list[np.ndarray] = []
        self.blocks: list[bytes] = []
        self.sizes: list[int] = []

    def __len__(self) -> int:
        return len(self.xyz)

    def add(self, rec: RawRecord | ChunkRecord) -> Chunk:
        if isinstance(rec, ChunkRecord):
            chunk = rec.chunk
            labels, supervoxels = rec.labels, rec.supervoxels
            frame, size = bytes(rec.block_zstd), int(rec.uncompressed_size)
        else:
            x, y, z, labels, supervoxels, block = rec
            chunk = (int(x), int(y), int(z))
            block = bytes(block)
            frame, size = self.cctx.compress(block), len(block)
        self.xyz.append(chunk)
        self.labels.append(np.asarray(labels, dtype=np.uint64).reshape(-1))
        self.supervoxels.append(np.asarray(supervoxels, dtype=np.uint64).reshape(-1))
        self.blocks.append(frame)
        self.sizes.append(size)
        return chunk

    @staticmethod
    def _list_array(parts: list[np.ndarray]) -> pa.Array:
        lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        offsets = np.zeros(len(parts) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        return pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), pa.array(values, pa.uint64())
        )

    def build(self) -> pa.RecordBatch:
        xyz = np.asarray(self.xyz, dtype=np.int32).reshape(-1, 3)
        arrays = [
            pa.array(xyz[:, 0], pa.int32()),
            pa.array(xyz[:, 1], pa.int32()),
            pa.array(xyz[:, 2], pa.int32()),
            self._list_array(self.labels),
            self._list_array(self.supervoxels),
            pa.array(self.blocks, pa.binary()),
            pa.array(self.sizes, pa.uint32()),
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=DVID_ARROW_SCHEMA)


def write_export_file(
    arrow_path: str | Path,
    csv_path: str | Path | None,
    records: Iterable[RawRecord | ChunkRecord],
    *,
    batch_size: int = 1,
    csv_layout: str = "batch",
    dvid_schema_size_quirk: bool = True,
    ipc_format: str = "stream",
    zstd_level: int = 3,
    schema_message: bytes | None = None,
) -> WriteStats:
    """Write one DVID export file (and its CSV index unless `csv_path` is None).

    `records` yields `(x, y, z, labels, supervoxels, dvid_block)` with the raw DVID block (it is
    zstd-compressed here, one frame per block with content size and checksum), or ChunkRecords
    from a reader (their zstd frames are copied as they are). `batch_size` records go in each
    record batch. With `dvid_schema_size_quirk` the CSV says `# schema_size=0` and the first
    batch's row gets offset 0 and a size that includes the schema message, as real DVID writes
    (formats ref. 2.7.1); otherwise the header has the true schema size and every row the exact
    offset/size of its record batch message. `schema_message` replaces pyarrow's serialisation
    of the schema (e.g. the 688 bytes Go Arrow writes; stream format only).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if csv_layout not in LAYOUT_COLUMNS:
        raise ValueError(f"csv_layout must be one of {sorted(LAYOUT_COLUMNS)}, got {csv_layout!r}")
    if ipc_format not in ("stream", "file"):
        raise ValueError(f"ipc_format must be 'stream' or 'file', got {ipc_format!r}")
    if schema_message is not None and ipc_format != "stream":
        raise ValueError("schema_message is only supported with ipc_format='stream'")
    arrow_path = Path(arrow_path)
    builder = _BatchBuilder(zstd_level)
    chunks: list[Chunk] = []
    rows: list[tuple[int, int, int, int]] = []  # batch number, row in batch, offset, size
    nbatches = 0

    if ipc_format == "stream":
        schema_bytes = schema_message if schema_message is not None else _schema_message()
        with open(arrow_path, "wb") as f:
            f.write(schema_bytes)
            pos = len(schema_bytes)
            schema_end = pos

            def flush() -> None:
                nonlocal pos, nbatches
                msg = builder.build().serialize()
                for i in range(len(builder)):
                    rows.append((nbatches, i, pos, msg.size))
                f.write(msg)
                pos += msg.size
                nbatches += 1
                builder.reset()

            for rec in records:
                chunks.append(builder.add(rec))
                if len(builder) == batch_size:
                    flush()
            if len(builder):
                flush()
            f.write(EOS_MARKER)
    else:
        sink = pa.OSFile(str(arrow_path), "wb")
        try:
            writer = pa.ipc.new_file(sink, DVID_ARROW_SCHEMA)
            schema_end = 8 + len(_schema_message())  # magic + schema (if no batch is written)

            def flush() -> None:
                nonlocal nbatches, schema_end
                batch = builder.build()
                size = batch.serialize().size
                writer.write_batch(batch)
                offset = sink.tell() - size
                if nbatches == 0:
                    schema_end = offset
                for i in range(len(builder)):
                    rows.append((nbatches, i, offset, size))
                nbatches += 1
                builder.reset()

            for rec in records:
                chunks.append(builder.add(rec))
                if len(builder) == batch_size:
                    flush()
            if len(builder):
                flush()
            writer.close()
        finally:
            sink.close()

    csv_bytes = 0
    if csv_path is not None:
        n = len(chunks)
        xyz = np.asarray(chunks, dtype=np.int64).reshape(n, 3)
        arr = np.asarray(rows, dtype=np.int64).reshape(n, 4)
        batch_no, in_batch, offset, size = (arr[:, i].copy() for i in range(4))
        schema_size: int | None = schema_end
        if dvid_schema_size_quirk and csv_layout != "legacy":
            schema_size = 0
            first = batch_no == 0
            size[first] = offset[first] + size[first]
            offset[first] = 0
        if csv_layout == "legacy":
            schema_size = None
        index = ChunkIndex(
            layout=csv_layout,
            schema_size=schema_size,
            x=xyz[:, 0],
            y=xyz[:, 1],
            z=xyz[:, 2],
            rec=batch_no if csv_layout != "batch" else None,
            offset=offset if csv_layout != "legacy" else None,
            size=size if csv_layout != "legacy" else None,
            batch_idx=in_batch if csv_layout == "batch" else None,
        )
        text = format_chunk_index(index)
        Path(csv_path).write_text(text)
        csv_bytes = len(text)
    return WriteStats(
        records=len(chunks),
        batches=nbatches,
        bytes=arrow_path.stat().st_size,
        csv_bytes=csv_bytes,
        schema_size=schema_end,
        chunks=chunks,
    )


# --- whole export folder -----------------------------------------------------------------------


@dataclass
class ExportedFile:
    scale: int
    stem: str
    arrow: Path
    csv: Path | None
    shards: tuple[int, ...]  # neuroglancer shard(s) of its chunks (one unless names collide)
    chunks: list[Chunk]  # in file order
    bytes: int

    @property
    def records(self) -> int:
        return len(self.chunks)


@dataclass
class ExportSummary:
    dest: Path
    files: dict[int, list[ExportedFile]]  # by scale
    skipped_zero_blocks: dict[int, int]  # blocks left out because every label was 0

    def chunks_per_file(self, scale: int) -> dict[str, int]:
        return {f.stem: f.records for f in self.files.get(scale, [])}

    def expected_shards(self, scale: int) -> set[int]:
        return {s for f in self.files.get(scale, []) for s in f.shards}

    @property
    def total_records(self) -> int:
        return sum(f.records for files in self.files.values() for f in files)


def _identity(supervoxels: np.ndarray) -> np.ndarray:
    return supervoxels


def write_export(
    dest: str | Path,
    spec: VolumeSpec,
    volumes: Mapping[int, np.ndarray],
    *,
    labels_of: Callable[[np.ndarray], np.ndarray] | None = None,
    scales: Iterable[int] | None = None,
    batch_size: int = 1,
    csv_layout: str | None = "batch",
    dvid_schema_size_quirk: bool = True,
    seed: int = 0,
    ipc_format: str = "stream",
    zstd_level: int = 3,
) -> ExportSummary:
    """Build a DVID-like export folder `dest/s<N>/<X>_<Y>_<Z>.arrow|csv` + `export.log`.

    `volumes[s]` is the supervoxel volume of scale s (uint64, z y x, shape = size reversed).
    Each 64^3 block (edge blocks padded with 0) becomes one record: supervoxels = the block's
    label table (shuffled with `seed`, like Go map order), labels = `labels_of(supervoxels)`
    (identity when None). Blocks whose labels are all 0 are skipped (DVID since 2026-03-27).
    """
    dest = Path(dest)
    labels_of = labels_of or _identity
    scale_ids = sorted(volumes) if scales is None else list(scales)
    for s in scale_ids:
        if s not in volumes:
            raise ValueError(f"no volume given for scale {s}")
        if not 0 <= s < len(spec.scales):
            raise ValueError(f"scale {s} is not in the spec ({len(spec.scales)} scales)")
        sc = spec.scales[s]
        if sc.chunk_size != (DVID_BLOCK,) * 3:
            raise ValueError(
                f"scale {s}: DVID exports only 64^3 chunks, "
                f"spec chunk size is {list(sc.chunk_size)}"
            )
        want = tuple(reversed(sc.size))
        if tuple(volumes[s].shape) != want:
            raise ValueError(f"scale {s}: volume shape {volumes[s].shape} != size z,y,x {want}")

    dest.mkdir(parents=True, exist_ok=True)
    files: dict[int, list[ExportedFile]] = {}
    skipped: dict[int, int] = {}
    zero_is_background = not np.any(labels_of(np.zeros(1, dtype=np.uint64)))
    for s in scale_ids:
        sc = spec.scales[s]
        vol = volumes[s]
        if vol.dtype != np.uint64:
            vol = vol.astype(np.uint64)
        rng = np.random.default_rng([seed, s])
        gx, gy, gz = sc.grid
        # DVID order: ascending z, then y; x in racing-handler order (shuffled per row)
        order: list[Chunk] = []
        for cz in range(gz):
            for cy in range(gy):
                for cx in rng.permutation(gx).tolist():
                    order.append((cx, cy, cz))
        by_stem: dict[str, list[Chunk]] = {}
        shards: dict[str, set[int]] = {}
        for chunk in order:
            stem = dvid_file_stem(sc, chunk)
            by_stem.setdefault(stem, []).append(chunk)
            shards.setdefault(stem, set()).add(shard_of_chunk(sc, chunk))
        scale_dir = dest / f"s{s}"
        scale_dir.mkdir(exist_ok=True)
        skipped[s] = 0
        out: list[ExportedFile] = []

        def records(chunks: list[Chunk], sc=sc, vol=vol, rng=rng, s=s) -> Iterator[RawRecord]:
            for cx, cy, cz in chunks:
                z0, y0, x0 = cz * DVID_BLOCK, cy * DVID_BLOCK, cx * DVID_BLOCK
                part = vol[z0 : z0 + DVID_BLOCK, y0 : y0 + DVID_BLOCK, x0 : x0 + DVID_BLOCK]
                if zero_is_background and not part.any():
                    skipped[s] += 1
                    continue
                block = np.zeros((DVID_BLOCK,) * 3, dtype=np.uint64)
                block[: part.shape[0], : part.shape[1], : part.shape[2]] = part
                data = encode_dvid_block(block, rng=rng)
                n = int(np.frombuffer(data, "<u4", 1, 12)[0])
                supervoxels = np.frombuffer(data, "<u8", n, 16).copy()
                labels = np.asarray(labels_of(supervoxels), dtype=np.uint64)
                if not labels.any():
                    skipped[s] += 1
                    continue
                yield (cx, cy, cz, labels, supervoxels, data)

        for stem, chunks in by_stem.items():
            arrow = scale_dir / f"{stem}.arrow"
            csv = scale_dir / f"{stem}.csv" if csv_layout else None
            stats = write_export_file(
                arrow,
                csv,
                records(chunks),
                batch_size=batch_size,
                csv_layout=csv_layout or "batch",
                dvid_schema_size_quirk=dvid_schema_size_quirk,
                ipc_format=ipc_format,
                zstd_level=zstd_level,
            )
            if stats.records == 0:  # DVID creates a shard's writer on its first block only
                arrow.unlink()
                if csv is not None:
                    csv.unlink()
                continue
            out.append(
                ExportedFile(
                    s,
                    stem,
                    arrow,
                    csv,
                    tuple(sorted(shards[stem])),
                    stats.chunks,
                    stats.bytes,
                )
            )
        files[s] = out
    summary = ExportSummary(dest, files, skipped)
    _write_log(dest / "export.log", summary)
    return summary


def _write_log(path: Path, summary: ExportSummary) -> None:
    lines = ["dvid2ng synthetic export (emulating DVID export-shards)"]
    for s, fl in summary.files.items():
        lines.append(
            f"scale {s}: {len(fl)} files, {sum(f.records for f in fl)} blocks, "
            f"{summary.skipped_zero_blocks[s]} all-zero blocks skipped"
        )
    tmp = path.with_suffix(".log.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)

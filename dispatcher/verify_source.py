"""The source side of `dvid2ng verify`: what one DVID export file says its output shard must hold.

Cost model (what is read, and when):
* always: the CSV chunk index (fast C++ CSV parse), or without a CSV a scan of the Arrow
  coordinate columns only. That gives every chunk the file holds, hence the chunk ids the output
  shard may hold (chunks past the volume edge are clipped away, as the worker does).
* only for chunks the output shard lacks: their records, to tell all-background chunks
  (which the writer leaves out, as TensorStore does) from lost ones. A record whose label list
  is all 0 is background and one with no 0 in it has data, both without decoding; only a
  record with both is zstd-decompressed and decoded (within the chunk's extent). With CSV
  offsets these records are read by byte range; otherwise, or when many are needed, one
  streaming pass reads them. A missing output shard stops at its first chunk with data.
* with --values N: N records per shard, decoded in full, compared voxel by voxel.
A healthy conversion of a current DVID export therefore costs one CSV parse and the shard's
index reads per shard; nothing else is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from dvid2ng.dvidexport.fast_index import read_chunk_index
from dvid2ng.dvidexport.reader import ChunkRecord, ExportFile, ExportFileReader, decompress_block
from dvid2ng.dvidexport.storage import source_file
from dvid2ng.kernels import (
    KernelError,
    compressed_morton_codes,
    decode_dvid_block,
    dvid_block_to_cseg,
)
from dvid2ng.kernels.zstride import decode_dvid_block_zstride, dvid_block_to_cseg_zstride
from dvid2ng.schemas.dvid import ChunkIndex, ExportFormatError
from dvid2ng.schemas.placement import FilePlacement
from dvid2ng.schemas.spec import Scale

Chunk = tuple[int, int, int]
RANDOM_ACCESS_FRACTION = 0.25  # above this share of records, one streaming pass is cheaper


class SourceError(Exception):
    """The source file cannot be read as needed; the message names file, chunk and cause."""


def arrow_source(f: ExportFile):
    """The .arrow file to read: local, or on GCS pinned to the generation that was listed (a
    file re-exported while verifying is an error, not a mix of two exports)."""
    return source_file(f.arrow, f.gcs_generation, f.size)


@dataclass
class SourceChunks:
    """The chunks of one export file, classified against the output shard its name stands for."""

    file: ExportFile
    name: str  # display name s<N>/<stem>.arrow
    placement: FilePlacement
    stride: int  # Z stride (z_compress + 1) of this scale
    supervoxels: bool  # label mode of the conversion
    records: int = 0
    inside: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    inside_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # sorted
    outside: int = 0  # past the volume edge (clipped away)
    misplaced: int = 0  # chunks of other shards (DVID name collision or wrong spec)
    first_misplaced: Chunk | None = None
    index: ChunkIndex | None = None
    _ids_order: np.ndarray | None = None  # inside_ids = morton(inside)[_ids_order]

    @property
    def scale(self) -> Scale:
        return self.placement.scale

    # --- loading ----------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, f: ExportFile, name: str, placement: FilePlacement, stride: int, supervoxels: bool
    ) -> SourceChunks:
        src = cls(f, name, placement, stride, supervoxels)
        try:
            if f.csv is not None:
                src.index = read_chunk_index(f.csv, name.removesuffix(".arrow") + ".csv")
                coords = src.index.coords()
            else:
                with ExportFileReader(arrow_source(f), name=name) as reader:
                    coords = reader.coordinates()
        except ExportFormatError as e:
            raise SourceError(str(e)) from None
        except OSError as e:
            raise SourceError(f"{name}: cannot read: {e}") from None
        src._classify(coords)
        return src

    def _classify(self, coords: np.ndarray) -> None:
        p = self.placement
        scale = self.scale
        self.records = len(coords)
        lo, hi = np.asarray(p.lo), np.asarray(p.hi)
        inside = ((coords >= lo) & (coords < hi)).all(axis=1)
        size = np.asarray(scale.size)
        csize = np.asarray(scale.chunk_size)
        past_edge = (coords * csize >= size).any(axis=1)
        in_file = ((coords >= np.asarray(p.dvid_lo)) & (coords < np.asarray(p.dvid_hi))).all(axis=1)
        outside = ~inside & past_edge & in_file
        misplaced = ~inside & ~outside
        self.outside = int(outside.sum())
        self.misplaced = int(misplaced.sum())
        if self.misplaced:
            self.first_misplaced = tuple(int(v) for v in coords[np.flatnonzero(misplaced)[0]])
        self.inside = coords[inside]
        ids = compressed_morton_codes(self.inside, scale.bits)
        self._ids_order = np.argsort(ids, kind="stable")
        self.inside_ids = ids[self._ids_order]

    def coords_of_ids(self, ids: np.ndarray) -> list[Chunk]:
        pos = np.searchsorted(self.inside_ids, ids)
        rows = self._ids_order[pos]
        return [tuple(int(v) for v in self.inside[r]) for r in rows]

    # --- reading records --------------------------------------------------------------------------

    def iter_records(self, chunks: Iterable[Chunk]) -> Iterator[ChunkRecord]:
        """The records of `chunks` (each must be in the file), by byte range when the CSV has
        offsets and few are wanted, else in one streaming pass; in no particular order."""
        want = set(chunks)
        if not want:
            return
        try:
            index = self.index
            with ExportFileReader(arrow_source(self.file), name=self.name) as reader:
                if (
                    index is not None
                    and index.has_offsets
                    and (len(want) <= RANDOM_ACCESS_FRACTION * max(1, self.records))
                ):
                    yield from self._by_range(reader, index, want)
                else:
                    for rec in reader:
                        if rec.chunk in want:
                            want.discard(rec.chunk)
                            yield rec
                            if not want:
                                return
        except ExportFormatError as e:
            raise SourceError(str(e)) from None
        except OSError as e:
            raise SourceError(f"{self.name}: cannot read: {e}") from None
        if want:
            raise SourceError(
                f"{self.name}: chunk {min(want)} is in the CSV index but not in the Arrow file "
                f"({len(want)} such chunks)"
            )

    def _by_range(self, reader, index: ChunkIndex, want: set[Chunk]) -> Iterator[ChunkRecord]:
        coords = index.coords()
        rows = [
            i for i, c in enumerate(map(tuple, coords.tolist())) if c in want
        ]  # tuples of python ints
        batches: dict[tuple[int, int], int] = {}
        for r in rows:
            batches.setdefault((int(index.offset[r]), int(index.size[r])), r)
        for offset, size in sorted(batches):
            batch = reader.read_batch_at(offset, size)
            for rec in reader.records_in_batch(batch):
                if rec.chunk in want:
                    want.discard(rec.chunk)
                    yield rec

    # --- per-chunk decisions ----------------------------------------------------------------------

    def extent(self, chunk: Chunk) -> tuple[int, int, int]:
        return self.scale.chunk_extent(chunk)

    def has_data(self, rec: ChunkRecord) -> bool:
        """Whether the output chunk of `rec` holds any non-zero voxel (what decides whether the
        writer stores it). Decodes only when the label list mixes 0 and non-zero entries."""
        table = rec.supervoxels if self.supervoxels else rec.labels
        if not table.any():
            return False
        if table.all():
            return True  # every voxel maps to a table entry, none of them 0
        block = self._block(rec)
        mapping = None if self.supervoxels else rec.labels
        try:
            if self.stride == 1:
                _, nonzero = dvid_block_to_cseg(block, mapping, self.extent(rec.chunk))
            else:
                _, nonzero = dvid_block_to_cseg_zstride(
                    block, mapping, self.stride, self.extent(rec.chunk)
                )
        except KernelError as e:
            raise SourceError(f"{self.name}: chunk {rec.chunk}: corrupt DVID block: {e}") from None
        return nonzero

    def volume(self, rec: ChunkRecord) -> np.ndarray:
        """The output chunk's expected voxels (ZYX, clipped to the volume)."""
        block = self._block(rec)
        mapping = None if self.supervoxels else rec.labels
        try:
            if self.stride == 1:
                vol = decode_dvid_block(block, mapping)
            else:
                vol = decode_dvid_block_zstride(block, mapping, self.stride)
        except KernelError as e:
            raise SourceError(f"{self.name}: chunk {rec.chunk}: corrupt DVID block: {e}") from None
        nx, ny, nz = self.extent(rec.chunk)
        return vol[:nz, :ny, :nx]

    def _block(self, rec: ChunkRecord) -> np.ndarray:
        try:
            return decompress_block(rec, self.name)
        except ExportFormatError as e:
            raise SourceError(str(e)) from None


@dataclass
class ZeroCheck:
    zero: int = 0  # all-background chunks (correctly absent from the output)
    with_data: int = 0  # chunks with data (absent from the output: lost)
    first_with_data: Chunk | None = None


def check_absent(src: SourceChunks, chunks: list[Chunk], stop_at_first: bool) -> ZeroCheck:
    """Classify source chunks missing from the output as background or lost data."""
    out = ZeroCheck()
    for rec in src.iter_records(chunks):
        if src.has_data(rec):
            out.with_data += 1
            if out.first_with_data is None or rec.chunk < out.first_with_data:
                out.first_with_data = rec.chunk
            if stop_at_first:
                break
        else:
            out.zero += 1
    return out

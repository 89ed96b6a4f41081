"""Streaming reader of DVID `export-shards` files (`X_Y_Z.arrow` + optional `X_Y_Z.csv`).

The Arrow file is read through a buffered file handle one IPC message at a time (never memory
mapped, never read whole: real files reach 6 GB), so memory is bounded by the largest record
batch. Arrow IPC stream format (what DVID writes) and IPC file format (`ARROW1` magic) are both
accepted. Fields are looked up by name; records may come in any order and any batch size.

Everything wrong with the input raises `ExportFormatError` naming the file and, where known, the
chunk: truncation, a missing end-of-stream marker, bytes after it (a second stream appended by a
DVID re-export into a non-empty directory), missing/mistyped fields, nulls, label lists of
different lengths, duplicate chunks, and an Arrow file that disagrees with its CSV index
(chunks missing from either side, offsets that do not point at the record's batch).
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import zstandard

from dvid2ng.dvidexport import ipc
from dvid2ng.dvidexport.storage import (
    SourceFile,
    is_gcs,
    source_file,
    split_gs_url,
    storage_client,
)
from dvid2ng.schemas.dvid import (
    COORD_FIELDS,
    MAX_UNCOMPRESSED_BLOCK,
    REQUIRED_FIELDS,
    ChunkIndex,
    ExportFormatError,
    field_type_problem,
    parse_chunk_index,
)

Chunk = tuple[int, int, int]

SCAN_BLOCK = 512 << 10  # bytes of the file the bulk scan reads at a time (at least one message)
SCAN_ROWS = 1024  # records per bulk scan call at most
_SCAN_COLUMNS = 13  # kernels.ipc_scan.OUT_COLUMNS (not imported here: it brings numba)
_KEY_BITS = 21  # chunk keys pack x, y, z into one int when each is below 2**21

_SCALE_DIR_RE = re.compile(r"s(\d+)")
_STEM_RE = re.compile(r"(\d+)_(\d+)_(\d+)")


@dataclass(slots=True)
class ChunkRecord:
    """One exported DVID block. Arrays are read-only views into the record batch (or into the
    block of the file the bulk scan read)."""

    x: int
    y: int
    z: int
    labels: np.ndarray  # uint64, agglomerated body of each supervoxels[i]
    supervoxels: np.ndarray  # uint64, the block's label table in table order
    block_zstd: memoryview  # one zstd frame holding the DVID compressed label block
    uncompressed_size: int
    record: int  # 0-based row number in the file (over all record batches)

    @property
    def chunk(self) -> Chunk:
        return (self.x, self.y, self.z)


@dataclass(frozen=True)
class ExportFile:
    """One `s<scale>/<stem>.arrow` of an export folder (and its CSV index if present): a local
    Path, or a gs:// URL string."""

    scale: int
    stem: str  # "X_Y_Z" voxel origin of the shard at that scale
    arrow: Path | str
    csv: Path | str | None
    size: int  # bytes of the .arrow file
    mtime_ns: int = 0  # local files
    gcs_generation: str = ""  # GCS objects

    @property
    def generation(self) -> str:
        """What changes when the file is rewritten: the GCS generation, or the mtime."""
        return self.gcs_generation or str(self.mtime_ns)

    @property
    def url(self) -> str:
        return self.arrow if isinstance(self.arrow, str) else str(self.arrow.absolute())

    @property
    def csv_url(self) -> str:
        if self.csv is None:
            return ""
        return self.csv if isinstance(self.csv, str) else str(self.csv.absolute())

    @property
    def origin(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.stem.split("_"))  # type: ignore[return-value]


def display_name(path: str | Path) -> str:
    """How errors name a file: `s<N>/<file>` inside a scale folder, else the path as given."""
    p = Path(path)
    if _SCALE_DIR_RE.fullmatch(p.parent.name):
        return f"{p.parent.name}/{p.name}"
    return str(path)


def _buffer_counts(typ: pa.DataType) -> tuple[int, int] | None:
    """(IPC field nodes, IPC buffers) used by a field of type `typ`; None if not known here."""
    t = pa.types
    if t.is_binary(typ) or t.is_string(typ) or t.is_large_binary(typ) or t.is_large_string(typ):
        return 1, 3
    if t.is_list(typ) or t.is_large_list(typ) or t.is_map(typ):
        child = _buffer_counts(typ.value_type if not t.is_map(typ) else typ.key_type)
        if child is None or t.is_map(typ):
            return None
        return 1 + child[0], 2 + child[1]
    if t.is_fixed_size_list(typ):
        child = _buffer_counts(typ.value_type)
        return None if child is None else (1 + child[0], 1 + child[1])
    if t.is_struct(typ):
        nodes, bufs = 1, 1
        for i in range(typ.num_fields):
            child = _buffer_counts(typ.field(i).type)
            if child is None:
                return None
            nodes, bufs = nodes + child[0], bufs + child[1]
        return nodes, bufs
    if (
        t.is_integer(typ)
        or t.is_floating(typ)
        or t.is_boolean(typ)
        or t.is_temporal(typ)
        or t.is_decimal(typ)
        or t.is_fixed_size_binary(typ)
    ):
        return 1, 2
    return None


class ExportFileReader:
    """Reader of one DVID export Arrow file and (optionally) its CSV chunk index.

    Usage::

        with ExportFileReader("s0/0_0_0.arrow", "s0/0_0_0.csv") as r:
            for rec in r:
                block = decompress_block(rec, r.name)

    Iterating twice reads the file twice. Iteration ends with the consistency checks against the
    CSV, so a consumer must exhaust the iterator to know that the file was complete.
    """

    def __init__(
        self,
        arrow: str | Path | SourceFile,
        csv: str | Path | SourceFile | None = None,
        *,
        name: str | None = None,
    ):
        """`arrow` / `csv`: local paths, gs:// URLs or SourceFiles (dvidexport.storage)."""
        self.arrow_source = source_file(arrow)
        self.csv_source = None if csv is None else source_file(csv)
        self.name = name or display_name(self.arrow_source.url)
        self.csv_name = None if csv is None else display_name(self.csv_source.url)
        # Unbuffered handle for the schema and for read_batch_at (random ranges: a read-ahead
        # buffer would fetch a whole buffer per small batch); iteration opens its own
        # sequential handle.
        self._f = self.arrow_source.open(sequential=False)
        self._lock = threading.Lock()  # read_batch_at shares self._f between threads
        self._closed = False
        try:
            self._open_arrow()
            self._index = self._load_index() if self.csv_source is not None else None
        except BaseException:
            self._f.close()
            raise

    # --- setup ---------------------------------------------------------------------------------

    def _err(self, cause: str, chunk: Chunk | None = None) -> ExportFormatError:
        return ExportFormatError(self.name, cause, chunk)

    def _open_arrow(self) -> None:
        f = self._f
        self.file_size = self.arrow_source.size()
        if self.file_size == 0:
            raise self._err("empty file")
        head = f.read(ipc.FILE_HEADER_LEN)
        if head.startswith(ipc.FILE_MAGIC):
            self.ipc_format = "file"
            if self.file_size < ipc.FILE_HEADER_LEN + ipc.FILE_TRAILER_LEN:
                raise self._err("Arrow IPC file format too short to hold its footer (truncated?)")
            f.seek(self.file_size - ipc.FILE_TRAILER_LEN)
            trailer = f.read(ipc.FILE_TRAILER_LEN)
            (footer_len,) = struct.unpack_from("<i", trailer, 0)
            footer_start = self.file_size - ipc.FILE_TRAILER_LEN - footer_len
            if trailer[4:] != ipc.FILE_MAGIC or footer_start < ipc.FILE_HEADER_LEN:
                raise self._err(
                    "Arrow IPC file format (ARROW1 magic) without a valid footer (truncated?)"
                )
            self._stream_start, self._stream_end = ipc.FILE_HEADER_LEN, footer_start
        else:
            self.ipc_format = "stream"
            self._stream_start, self._stream_end = 0, self.file_size
        ms = self._messages(f, self._stream_start)
        try:
            hdr = ms.next_header()
            if hdr is None:
                raise self._err("no schema message (file holds only an end-of-stream marker)")
            info, _ = hdr
            if info.header_type != ipc.SCHEMA:
                raise self._err(f"first message is a {info.type_name} message, expected Schema")
            buf = ms.read_message()
        except ipc.IpcError as e:
            raise self._err(f"cannot read the Arrow schema: {e}") from None
        try:
            self.schema = pa.ipc.read_schema(pa.ipc.read_message(buf))
            self.schema.names  # noqa: B018  (field names must decode as UTF-8)
        except Exception as e:
            raise self._err(f"cannot decode the Arrow schema message: {e}") from None
        self.schema_message_size = info.size
        self._schema_end = ms.pos  # first record batch offset
        names = self.schema.names
        col: dict[str, int] = {}
        for fname in REQUIRED_FIELDS:
            hits = [i for i, n in enumerate(names) if n == fname]
            if not hits:
                raise self._err(
                    f"missing required field {fname!r} (fields present: {', '.join(names)})"
                )
            if len(hits) > 1:
                raise self._err(f"field {fname!r} appears {len(hits)} times in the schema")
            problem = field_type_problem(fname, self.schema.field(hits[0]).type)
            if problem:
                raise self._err(problem)
            col[fname] = hits[0]
        self._col = col
        self._layout = self._ipc_layout()
        self.fast_path = self._layout is not None  # own decoding of record batches
        self.bulk_scan = self.fast_path  # ... many messages per call (kernels.ipc_scan)
        self.bulk_scanned = 0  # records of the last pass that came from the bulk scan
        # (name, first node, first buffer) of the required fields, in REQUIRED_FIELDS order
        self._fields = [(n, *self._layout[col[n]]) for n in REQUIRED_FIELDS] if self._layout else []

    def _ipc_layout(self) -> dict[int, tuple[int, int]] | None:
        """(first node, first buffer) of every field in a record batch message, plus the totals
        under key -1; None when a field type is not known here (then pyarrow decodes)."""
        node = buf = 0
        where: dict[int, tuple[int, int]] = {}
        for i, fld in enumerate(self.schema):
            where[i] = (node, buf)
            counts = _buffer_counts(fld.type)
            if counts is None:
                return None
            node, buf = node + counts[0], buf + counts[1]
        where[-1] = (node, buf)
        return where

    def _load_index(self) -> ChunkIndex:
        assert self.csv_source is not None
        raw = self.csv_source.read_all()  # a missing file is an OSError, not a format error
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as e:
            raise ExportFormatError(
                self.csv_name or "", f"not a text file (byte {e.start} is not ASCII)"
            ) from None
        index = parse_chunk_index(text, self.csv_name or self.csv_source.url)
        if index.schema_size not in (None, 0, self._schema_end):
            raise ExportFormatError(
                self.csv_name or "",
                f"schema_size={index.schema_size} but the schema message of {self.name} ends at "
                f"byte {self._schema_end} (is the CSV from another export?)",
                line=1,
            )
        return index

    def _messages(self, f, start: int, end: int | None = None) -> ipc.MessageStream:
        return ipc.MessageStream(
            f,
            start,
            self._stream_end if end is None else end,
            eos_optional=self.ipc_format == "file",
        )

    # --- context manager -----------------------------------------------------------------------

    def __enter__(self) -> ExportFileReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._f.close()

    def __repr__(self) -> str:
        return f"ExportFileReader({self.name!r}, ipc={self.ipc_format}, csv={self.csv_name!r})"

    # --- public API ----------------------------------------------------------------------------

    def index(self) -> ChunkIndex | None:
        """The parsed CSV chunk index, or None when no CSV was given."""
        return self._index

    def chunk_count(self) -> int:
        """Number of chunks: CSV rows when there is a CSV, else a scan of the coordinate columns."""
        if self._index is not None:
            return len(self._index)
        return len(self.coordinates())

    def coordinates(self) -> np.ndarray:
        """(n, 3) int64 chunk coordinates (x, y, z) in file order, reading only the coordinate
        buffers of each record batch (the labels and blocks are skipped, not decoded)."""
        self._check_open()
        parts: list[np.ndarray] = []
        with self.arrow_source.open(sequential=True) as f:
            ms = self._messages(f, self._schema_end)
            try:
                while (hdr := ms.next_header()) is not None:
                    info, meta = hdr
                    if info.header_type != ipc.RECORD_BATCH:
                        raise self._unexpected_message(info)
                    parts.append(self._coords_of_message(ms, info, meta))
            except ipc.IpcError as e:
                raise self._err(str(e)) from None
            self._check_tail(f, ms)
        return np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)

    def _batch_header(self, info: ipc.MessageInfo, meta: bytes):
        """(rows, nodes, buffers) as flat lists, checked against the schema layout and the
        message body; None when pyarrow must decode the batch (unknown layout, compression)."""
        try:
            rows, nodes, buffers, compressed = ipc.parse_record_batch_header(meta, info.header)
        except (ValueError, struct.error) as e:
            raise self._err(
                f"record batch at byte offset {info.offset}: corrupt metadata: {e}"
            ) from None
        layout = self._layout
        if compressed or layout is None:
            return None
        want_nodes, want_buffers = layout[-1]
        where = f"record batch at byte offset {info.offset}"
        if len(nodes) != 2 * want_nodes or len(buffers) != 2 * want_buffers:
            raise self._err(
                f"{where}: {len(nodes) // 2} field nodes and {len(buffers) // 2} buffers, the "
                f"schema needs {want_nodes} and {want_buffers}"
            )
        if rows < 0 or (nodes and min(nodes) < 0) or (buffers and min(buffers) < 0):
            raise self._err(f"{where}: negative lengths or offsets")
        body = info.body_len
        for i in range(0, len(buffers), 2):
            if buffers[i] + buffers[i + 1] > body:
                raise self._err(f"{where}: buffer {i // 2} lies outside the message body")
            if buffers[i] % 8:
                raise self._err(f"{where}: buffer {i // 2} is not 8-byte aligned")
        return rows, nodes, buffers

    def _coords_of_message(self, ms: ipc.MessageStream, info: ipc.MessageInfo, meta: bytes):
        parsed = self._batch_header(info, meta)
        if parsed is None:  # unusual layout: decode the whole batch
            batch = self._decode_batch(ms.read_message(), info)
            return np.stack(
                [batch.column(self._col[n]).to_numpy().astype(np.int64) for n in COORD_FIELDS],
                axis=1,
            )
        rows, nodes, buffers = parsed
        assert self._layout is not None
        spans = []
        for name in COORD_FIELDS:
            node_i, buf_i = self._layout[self._col[name]]
            length, nulls = nodes[2 * node_i], nodes[2 * node_i + 1]
            off, size = buffers[2 * buf_i + 2], buffers[2 * buf_i + 3]
            if length != rows or nulls != 0:
                raise self._err(
                    f"record batch at byte offset {info.offset}: field {name!r} has "
                    f"{length} values ({nulls} null) for {rows} rows"
                )
            if size < 4 * rows:
                raise self._err(
                    f"record batch at byte offset {info.offset}: field {name!r} buffer too short"
                )
            spans.append(off)
        body = ms.read_body_prefix(max(spans) + 4 * rows) if rows else b""
        return np.stack(
            [np.frombuffer(body, "<i4", rows, off).astype(np.int64) for off in spans], axis=1
        ).reshape(rows, 3)

    def __iter__(self) -> Iterator[ChunkRecord]:
        self._check_open()
        return self._iter_records()

    def _iter_records(self) -> Iterator[ChunkRecord]:
        walk = _Walk(self._index)
        self.bulk_scanned = 0
        with self.arrow_source.open(sequential=True) as f:
            pos = self._schema_end
            while True:
                if self.fast_path and self.bulk_scan and walk.bulk:
                    # as many messages as the bulk scan understands, then one the slow way
                    pos = yield from self._scan_bulk(f, pos, walk)
                ms = self._messages(f, pos)
                try:
                    hdr = ms.next_header()
                    if hdr is None:
                        break
                    info, meta = hdr
                    if info.header_type != ipc.RECORD_BATCH:
                        raise self._unexpected_message(info)
                    parsed = self._batch_header(info, meta) if self.fast_path else None
                    buf = ms.read_message()
                except ipc.IpcError as e:
                    raise self._err(str(e)) from None
                if parsed is not None:
                    records = self._fast_records(buf, info, parsed, walk.row)
                else:
                    records = list(self._records(self._decode_batch(buf, info), walk.row, info))
                del buf
                for i, rec in enumerate(records):
                    self._check_record(walk, rec, info, walk.batch_no, i)
                    yield rec
                walk.row += len(records)
                walk.batch_no += 1
                walk.bailed += 1
                del records
                pos = ms.pos
            self._check_tail(f, ms)
        index, csv_seen = self._index, walk.csv_seen
        if index is not None and csv_seen is not None and not csv_seen.all():
            missing = np.flatnonzero(~csv_seen)
            first = missing[0]
            chunk = (int(index.x[first]), int(index.y[first]), int(index.z[first]))
            raise self._err(
                f"listed in the CSV index {self.csv_name} (row {first}) but missing from the Arrow "
                f"file ({len(missing)} chunk(s) missing in all; DVID dropped blocks or the file is "
                "incomplete)",
                chunk,
            )

    def _check_record(
        self, walk: _Walk, rec: ChunkRecord, info: ipc.MessageInfo, batch_no: int, row: int
    ) -> None:
        """The per-record checks: not seen before, and where the CSV index says it is."""
        key = _chunk_key(rec.x, rec.y, rec.z)
        if key in walk.seen:
            raise self._err("chunk appears twice in the Arrow file", rec.chunk)
        walk.seen.add(key)
        if walk.index is not None:
            self._check_against_index(walk.index, walk.csv_seen, rec, info, batch_no, row)

    # --- bulk scan -----------------------------------------------------------------------------

    def _scan_bulk(self, f, pos: int, walk: _Walk) -> Iterator[ChunkRecord]:
        """Records of the messages from `pos` on that kernels.ipc_scan understands, read a block
        of the file at a time; returns the offset of the first message it leaves to the
        per-message path (the end-of-stream marker, anything unusual or wrong)."""
        from dvid2ng.kernels import ipc_scan  # numba: only where records are read

        assert self._layout is not None
        fields = walk.scan_fields(self._layout, self._col)
        n_nodes, n_buffers = self._layout[-1]
        while True:
            if not walk.block_holds(pos) and not self._read_block(f, pos, 8, walk):
                return pos
            walk.kstate[0] = walk.batch_no
            status, rel, n, need = ipc_scan.scan_record_batches(
                walk.block, pos - walk.boff, walk.blen, fields, n_nodes, n_buffers,
                walk.out, walk.kstate,
            )  # fmt: skip
            if n:
                yield from self._bulk_records(walk, n)
                walk.bailed = 0
            walk.batch_no = int(walk.kstate[0])
            pos = walk.boff + rel
            if status == ipc_scan.SCAN_BAIL:
                if walk.bailed >= 8:  # nothing but unusual messages: stop trying
                    walk.bulk = False
                return pos
            if status == ipc_scan.SCAN_NEED_MORE and (
                pos + need > self._stream_end or not self._read_block(f, pos, need, walk)
            ):
                return pos  # truncated: the per-message path says so precisely
            # SCAN_FULL: scan on in the same block

    def _read_block(self, f, pos: int, need: int, walk: _Walk) -> bool:
        """Make walk.block hold the file from `pos` (SCAN_BLOCK bytes or `need` if more, never
        past the record batches), reusing the bytes of the current block that lie past `pos`.
        False when fewer than `need` bytes are there (the per-message path reports why)."""
        size = min(max(SCAN_BLOCK, need), self._stream_end - pos)
        if size < need:
            return False
        block = np.empty(-(-size // 8) * 8, np.uint8)  # whole uint64s: label views need them
        have = 0
        if walk.block is not None and walk.boff <= pos < walk.boff + walk.blen:
            tail = walk.block[pos - walk.boff : walk.blen]
            have = min(len(tail), size)
            block[:have] = tail[:have]
        f.seek(pos + have)
        view = memoryview(block)
        while have < size:
            got = f.readinto(view[have:size])
            if not got:
                break
            have += got
        view.release()
        block.flags.writeable = False
        walk.set_block(block, pos, have)
        return have >= need

    def _bulk_records(self, walk: _Walk, n: int) -> Iterator[ChunkRecord]:
        """ChunkRecords of the first `n` rows of walk.out, after the duplicate and CSV checks
        (vectorised; the first record failing one is checked again the exact way, which raises
        with the precise cause, after the records before it)."""
        from dvid2ng.kernels import ipc_scan as C

        t = walk.out[:n]
        rows = t.tolist()
        first_row = walk.row
        good = walk.first_unchecked(t, first_row)
        block, u64, mv, boff = walk.block, walk.u64, walk.mv, walk.boff
        for i in range(n):
            r = rows[i]
            lab, sv, nl, bo = r[C.C_LAB] >> 3, r[C.C_SV] >> 3, r[C.C_NLAB], r[C.C_BLOCK]
            rec = ChunkRecord(
                r[C.C_X],
                r[C.C_Y],
                r[C.C_Z],
                u64[lab : lab + nl],
                u64[sv : sv + nl],
                mv[bo : bo + r[C.C_BLEN]],
                r[C.C_USIZE],
                first_row + i,
            )
            if i >= good:
                info = ipc.MessageInfo(boff + r[C.C_MSG], r[C.C_MSIZE] - 8, 0, ipc.RECORD_BATCH)
                self._check_record(walk, rec, info, r[C.C_BATCH], r[C.C_ROW])
            yield rec
        walk.row += n
        self.bulk_scanned += n
        del block

    def records_in_batch(self, batch: pa.RecordBatch, first_record: int = 0) -> list[ChunkRecord]:
        """The ChunkRecords of a batch from `read_batch_at` (record = first_record + row)."""
        return list(self._records(batch, first_record, None))

    def read_batch_at(self, offset: int, size: int) -> pa.RecordBatch:
        """The record batch whose IPC message occupies bytes [offset, offset + size) of the file,
        as given by a CSV index row.

        Real DVID CSVs say `# schema_size=0` and give the first batch offset 0 with a size that
        also covers the schema message (and the ARROW1 magic of the IPC file format): a range
        starting at 0 is read as schema + one record batch.
        """
        self._check_open()
        offset, size = int(offset), int(size)
        where = f"range [{offset}, {offset + size})"
        if offset < 0 or size <= 0 or offset + size > self.file_size:
            raise self._err(f"{where} is outside the file ({self.file_size} bytes)")
        start = offset
        if offset < self._schema_end:
            if offset != 0:
                raise self._err(f"{where} starts inside the schema message")
            start = self._schema_end
        if offset + size > self._stream_end:
            raise self._err(f"{where} runs past the end of the record batches")
        try:
            with self._lock:
                ms = self._messages(self._f, start, offset + size)
                hdr = ms.next_header()
                if hdr is None:
                    raise self._err(
                        f"{where} starts at the end-of-stream marker, not a record batch"
                    )
                info, _ = hdr
                if info.header_type != ipc.RECORD_BATCH:
                    raise self._err(f"{where} holds a {info.type_name} message, not a record batch")
                buf = ms.read_message()
        except ipc.IpcError as e:
            raise self._err(
                f"{where} does not hold one whole record batch message: {e.cause}"
            ) from None
        if ms.pos != offset + size:
            raise self._err(
                f"{where}: the record batch message at {info.offset} ends at {info.end}, "
                f"not at {offset + size}"
            )
        return self._decode_batch(buf, info)

    # --- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.name}: reader is closed")

    def _unexpected_message(self, info: ipc.MessageInfo) -> ExportFormatError:
        if info.header_type == ipc.SCHEMA:
            return self._err(
                f"a second Schema message at byte offset {info.offset} (two streams without an "
                "end-of-stream marker between them?)"
            )
        return self._err(
            f"unexpected {info.type_name} message at byte offset {info.offset} "
            "(DVID writes only record batches after the schema)"
        )

    def _check_tail(self, f, ms: ipc.MessageStream) -> None:
        """After the end-of-stream marker: nothing may follow but the IPC file footer."""
        if ms.pos == ms.end:
            return
        extra = ms.end - ms.pos
        f.seek(ms.pos)
        peek = f.read(8)
        if peek.startswith(ipc.CONTINUATION) and peek != ipc.EOS_MARKER:
            raise self._err(
                f"{extra} bytes follow the end-of-stream marker at byte {ms.pos - 8}, starting "
                "with another Arrow IPC stream: DVID opens .arrow files for appending, so this "
                "shard was probably exported twice into the same directory (export into an "
                "empty directory)"
            )
        raise self._err(
            f"{extra} unexpected bytes after the end-of-stream marker at byte {ms.pos - 8}"
        )

    def _decode_batch(self, buf: pa.Buffer, info: ipc.MessageInfo) -> pa.RecordBatch:
        try:
            msg = pa.ipc.read_message(buf)
            batch = pa.ipc.read_record_batch(msg, self.schema)
            batch.validate(full=True)
        except Exception as e:
            raise self._err(f"corrupt record batch at byte offset {info.offset}: {e}") from None
        return batch

    def _fast_records(
        self, buf: pa.Buffer, info: ipc.MessageInfo, parsed, first_row: int
    ) -> list[ChunkRecord]:
        """Decode a record batch of the known layout straight from the message (several times
        faster than building pyarrow objects for DVID's 1-row batches), checking what pyarrow's
        full validation would check for these types."""
        rows, nodes, buffers = parsed
        base = 8 + info.metadata_len
        where = f"record batch at byte offset {info.offset}"
        try:  # let Arrow verify the flatbuffer and the metadata version (~2 us)
            pa.ipc.read_message(buf)
        except Exception as e:
            raise self._err(f"corrupt {where}: {e}") from None
        for name, n0, _ in self._fields:
            if nodes[2 * n0] != rows:
                raise self._err(
                    f"{where}: field {name!r} has {nodes[2 * n0]} values for {rows} rows"
                )
            if nodes[2 * n0 + 1]:
                raise self._err(f"{where}: field {name!r} holds nulls")
        if rows == 0:
            return []

        def ints(name: str, b: int, fmt: str, count: int) -> tuple[int, ...]:
            off, size = buffers[2 * b], buffers[2 * b + 1]
            if size < count * struct.calcsize(fmt):
                raise self._err(f"{where}: field {name!r}: buffer {b} is too short")
            return struct.unpack_from(f"<{count}{fmt}", buf, base + off)

        def offsets(name: str, b: int, limit: int) -> tuple[int, ...]:
            o = ints(name, b, "i", rows + 1)
            if o[0] < 0 or o[-1] > limit or any(o[k] > o[k + 1] for k in range(rows)):
                raise self._err(f"{where}: field {name!r} has corrupt offsets")
            return o

        (_, _, bx), (_, _, by), (_, _, bz) = self._fields[:3]
        xs = ints("chunk_x", bx + 1, "i", rows)
        ys = ints("chunk_y", by + 1, "i", rows)
        zs = ints("chunk_z", bz + 1, "i", rows)
        lists = []
        for name, n0, b0 in self._fields[3:5]:
            m, child_nulls = nodes[2 * n0 + 2], nodes[2 * n0 + 3]
            if child_nulls:
                raise self._err(f"{where}: field {name!r} holds null list items")
            off, size = buffers[2 * b0 + 6], buffers[2 * b0 + 7]
            if size < 8 * m:
                raise self._err(f"{where}: field {name!r}: values buffer is too short")
            values = np.frombuffer(buf, "<u8", m, base + off)
            lists.append((values, offsets(name, b0 + 1, m)))
        (lv, lo), (sv, so) = lists
        name, _, b0 = self._fields[5]
        doff, dsize = buffers[2 * b0 + 4], buffers[2 * b0 + 5]
        bo = offsets(name, b0 + 1, dsize)
        name, _, b0 = self._fields[6]
        sizes = ints(name, b0 + 1, "I", rows)
        data = memoryview(buf).cast("B")[base + doff : base + doff + dsize]
        out = []
        for i in range(rows):
            chunk = (xs[i], ys[i], zs[i])
            if chunk[0] < 0 or chunk[1] < 0 or chunk[2] < 0:
                raise self._err(f"{where}: negative chunk coordinate", chunk)
            if lo[i + 1] - lo[i] != so[i + 1] - so[i]:
                raise self._err(
                    f"labels has {lo[i + 1] - lo[i]} entries but supervoxels has "
                    f"{so[i + 1] - so[i]}",
                    chunk,
                )
            out.append(
                ChunkRecord(
                    chunk[0],
                    chunk[1],
                    chunk[2],
                    lv[lo[i] : lo[i + 1]],
                    sv[so[i] : so[i + 1]],
                    data[bo[i] : bo[i + 1]],
                    sizes[i],
                    first_row + i,
                )
            )
        return out

    def _records(
        self, batch: pa.RecordBatch, first_row: int, info: ipc.MessageInfo | None
    ) -> Iterator[ChunkRecord]:
        where = f"record batch at byte offset {info.offset}" if info else "record batch"
        n = batch.num_rows
        col = self._col
        for name in REQUIRED_FIELDS:
            if batch.column(col[name]).null_count:
                raise self._err(f"{where}: field {name!r} holds nulls")
        xs, ys, zs = (batch.column(col[c]).to_numpy().tolist() for c in COORD_FIELDS)
        sizes = batch.column(col["uncompressed_size"]).to_numpy().tolist()
        lists = []
        for name in ("labels", "supervoxels"):
            arr = batch.column(col[name])
            values = arr.values
            if values.null_count:
                raise self._err(f"{where}: field {name!r} holds null list items")
            vals = values.to_numpy()
            offs = arr.offsets.to_numpy()
            lists.append((vals, offs))
        (lv, lo), (sv, so) = lists
        blocks = batch.column(col["dvid_compressed_block"])
        bufs = blocks.buffers()
        boffs = np.frombuffer(bufs[1], np.int32, n + 1, 4 * blocks.offset) if n else None
        data = memoryview(bufs[2]).cast("B") if bufs[2] is not None else memoryview(b"")
        for i in range(n):
            chunk = (xs[i], ys[i], zs[i])
            if min(chunk) < 0:
                raise self._err(f"{where}: negative chunk coordinate", chunk)
            labels = lv[lo[i] : lo[i + 1]]
            supervoxels = sv[so[i] : so[i + 1]]
            if len(labels) != len(supervoxels):
                raise self._err(
                    f"labels has {len(labels)} entries but supervoxels has {len(supervoxels)}",
                    chunk,
                )
            assert boffs is not None
            yield ChunkRecord(
                chunk[0],
                chunk[1],
                chunk[2],
                labels,
                supervoxels,
                data[boffs[i] : boffs[i + 1]],
                sizes[i],
                first_row + i,
            )

    def _check_against_index(
        self,
        index: ChunkIndex,
        csv_seen: np.ndarray,
        rec: ChunkRecord,
        info: ipc.MessageInfo,
        batch_no: int,
        row_in_batch: int,
    ) -> None:
        r = index.row_of(rec.chunk)
        if r is None:
            raise self._err(
                f"record {rec.record} is in the Arrow file but not in the CSV index "
                f"{self.csv_name}",
                rec.chunk,
            )
        csv_seen[r] = True
        if index.rec is not None and int(index.rec[r]) not in (batch_no, rec.record):
            raise self._err(
                f"CSV index {self.csv_name} row {r} says rec {int(index.rec[r])}, but the chunk "
                f"is record {rec.record} in record batch {batch_no}",
                rec.chunk,
            )
        if index.offset is not None and index.size is not None:
            off, size = int(index.offset[r]), int(index.size[r])
            exact = (off, size) == (info.offset, info.size)
            quirk = batch_no == 0 and off == 0 and size == info.end  # schema_size=0 (ref. 2.7.1)
            if not (exact or quirk):
                raise self._err(
                    f"CSV index {self.csv_name} row {r} says offset {off} size {size}, but the "
                    f"record batch message is at offset {info.offset} size {info.size}",
                    rec.chunk,
                )
        if index.batch_idx is not None and int(index.batch_idx[r]) != row_in_batch:
            raise self._err(
                f"CSV index {self.csv_name} row {r} says batch_idx {int(index.batch_idx[r])}, "
                f"but the chunk is row {row_in_batch} of its record batch",
                rec.chunk,
            )


def _chunk_key(x: int, y: int, z: int) -> int | tuple[int, int, int]:
    """One hashable key per chunk: an int when the coordinates are small enough (cheaper)."""
    if x < 1 << _KEY_BITS and y < 1 << _KEY_BITS and z < 1 << _KEY_BITS:
        return (x << 2 * _KEY_BITS) | (y << _KEY_BITS) | z
    return (x, y, z)


class _Walk:
    """The state of one pass over a file: records and batches so far, the chunks seen, which
    CSV rows were matched, and the bulk scan's current block."""

    def __init__(self, index: ChunkIndex | None) -> None:
        self.index = index
        self.csv_seen = np.zeros(len(index), dtype=bool) if index is not None else None
        self.seen: set = set()
        self.row = 0
        self.batch_no = 0
        self.bulk = True
        self.bailed = 0  # messages in a row the bulk scan left to the per-message path
        self.block: np.ndarray | None = None
        self.boff = 0  # file offset of block[0]
        self.blen = 0  # valid bytes in block
        self.out = np.zeros((SCAN_ROWS, _SCAN_COLUMNS), np.int64)
        self.kstate = np.zeros(1, np.int64)
        self._fields: np.ndarray | None = None
        self._csv_sorted: tuple[np.ndarray, np.ndarray] | bool | None = False

    def scan_fields(self, layout: dict[int, tuple[int, int]], col: dict[str, int]) -> np.ndarray:
        if self._fields is None:
            self._fields = np.array([layout[col[n]] for n in REQUIRED_FIELDS], np.int64)
        return self._fields

    def block_holds(self, pos: int) -> bool:
        return self.block is not None and self.boff <= pos and pos + 8 <= self.boff + self.blen

    def set_block(self, block: np.ndarray, boff: int, blen: int) -> None:
        self.block, self.boff, self.blen = block, boff, blen
        self.u64 = block.view("<u8")
        self.mv = memoryview(block)

    def _csv_keys(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(sorted keys, their CSV rows) of the index, None when keys do not fit an int64."""
        if self._csv_sorted is False:
            ix = self.index
            assert ix is not None
            limit = 1 << _KEY_BITS
            if len(ix) and max(int(ix.x.max()), int(ix.y.max()), int(ix.z.max())) >= limit:
                self._csv_sorted = None
            else:
                keys = (ix.x << 2 * _KEY_BITS) | (ix.y << _KEY_BITS) | ix.z
                order = np.argsort(keys, kind="stable")
                self._csv_sorted = (keys[order], order)
        return self._csv_sorted  # type: ignore[return-value]

    def first_unchecked(self, t: np.ndarray, first_row: int) -> int:
        """Check the scanned rows `t` against the chunks seen and the CSV index at once; mark
        them seen/matched and return how many passed (the rest get the exact checks)."""
        from dvid2ng.kernels import ipc_scan as C

        n = len(t)
        x, y, z = t[:, C.C_X], t[:, C.C_Y], t[:, C.C_Z]
        if max(int(x.max()), int(y.max()), int(z.max())) >= 1 << _KEY_BITS:
            return 0
        keys = (x << 2 * _KEY_BITS) | (y << _KEY_BITS) | z
        klist = keys.tolist()
        good = n
        if len(set(klist)) != n or not self.seen.isdisjoint(klist):
            local: set = set()
            for i, k in enumerate(klist):
                if k in self.seen or k in local:
                    good = i
                    break
                local.add(k)
        ix = self.index
        rows_in_csv = None
        if ix is not None and good:
            sorted_keys = self._csv_keys()
            if sorted_keys is None:
                return 0
            skeys, order = sorted_keys
            if not len(skeys):
                return 0
            k = keys[:good]
            p = np.minimum(np.searchsorted(skeys, k), len(skeys) - 1)
            ok = skeys[p] == k
            r = order[p]
            batch = t[:good, C.C_BATCH]
            if ix.rec is not None:
                rec = ix.rec[r]
                ok &= (rec == batch) | (rec == np.arange(first_row, first_row + good))
            if ix.offset is not None and ix.size is not None:
                off = t[:good, C.C_MSG] + self.boff
                size = t[:good, C.C_MSIZE]
                io, isz = ix.offset[r], ix.size[r]
                ok &= ((io == off) & (isz == size)) | (
                    (batch == 0) & (io == 0) & (isz == off + size)
                )
            if ix.batch_idx is not None:
                ok &= ix.batch_idx[r] == t[:good, C.C_ROW]
            if not ok.all():
                good = int(np.argmin(ok))
            rows_in_csv = r[:good]
        self.seen.update(klist[:good])
        if rows_in_csv is not None and self.csv_seen is not None:
            self.csv_seen[rows_in_csv] = True
        return good


# --- zstd --------------------------------------------------------------------------------------

_tls = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_tls, "dctx", None)
    if d is None:
        d = _tls.dctx = zstandard.ZstdDecompressor()
    return d


def decompress_block(record: ChunkRecord, file: str | Path) -> np.ndarray:
    """The DVID compressed label block of `record` (uint8 array), zstd-decompressed and checked
    against `uncompressed_size`. Frames with and without a content size are accepted; output is
    capped at 64 MiB. Errors raise ExportFormatError naming `file` and the chunk."""
    chunk = record.chunk
    n = int(record.uncompressed_size)
    data = record.block_zstd
    if n <= 0:
        raise ExportFormatError(file, f"uncompressed_size is {n}", chunk)
    if n > MAX_UNCOMPRESSED_BLOCK:
        raise ExportFormatError(
            file, f"uncompressed_size {n} is above the {MAX_UNCOMPRESSED_BLOCK}-byte limit", chunk
        )
    if len(data) == 0:
        raise ExportFormatError(file, "empty dvid_compressed_block (no zstd frame)", chunk)
    try:
        content_size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise ExportFormatError(file, "dvid_compressed_block is not a zstd frame", chunk) from None
    if content_size >= 0 and content_size != n:
        raise ExportFormatError(
            file,
            f"zstd frame holds {content_size} bytes but uncompressed_size is {n}",
            chunk,
        )
    try:
        if content_size >= 0:
            out = _dctx().decompress(data, allow_extra_data=False)
        else:
            out = _dctx().decompress(data, max_output_size=n + 1, allow_extra_data=False)
    except zstandard.ZstdError as e:
        text = str(e)
        if "did not decompress full frame" in text:
            cause = (
                "zstd frame is truncated"
                if content_size >= 0
                else "zstd frame is truncated or decodes to more than uncompressed_size"
            )
        elif "unused data" in text:
            cause = f"extra bytes after the zstd frame ({text})"
        else:
            cause = f"corrupt zstd frame: {text}"
        raise ExportFormatError(file, cause, chunk) from None
    if len(out) != n:
        raise ExportFormatError(
            file, f"zstd frame decodes to {len(out)} bytes but uncompressed_size is {n}", chunk
        )
    return np.frombuffer(out, dtype=np.uint8)


# --- export folder -----------------------------------------------------------------------------


def list_export(source: str | Path) -> dict[int, list[ExportFile]]:
    """The `.arrow` files of an export folder by scale: `s<N>/<X>_<Y>_<Z>.arrow` (+ `.csv`).

    Other files (export.log, label profiles, manifests) and folders are ignored. Raises
    ExportFormatError for what would otherwise lose a shard silently: an `.arrow` whose name is
    not X_Y_Z, an `X_Y_Z.arrow` that is not a regular file (a directory, a dangling link), and an
    `X_Y_Z.csv` index without its `.arrow`. Files are sorted by origin (z, y, x). A scale folder
    without files is listed with no files (the planner decides what that means).
    """
    if is_gcs(source):
        return _list_gcs_export(str(source))
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: export folder not found")
    out: dict[int, list[ExportFile]] = {}
    for sub in sorted(source.iterdir()):
        m = _SCALE_DIR_RE.fullmatch(sub.name)
        if not m or not sub.is_dir():
            continue
        scale = int(m.group(1))
        if scale in out:  # "s1" and "s01"
            raise ExportFormatError(str(sub), f"two folders for scale {scale}")
        out[scale] = _list_scale_folder(scale, sub)
    return dict(sorted(out.items()))


def _list_scale_folder(scale: int, folder: Path) -> list[ExportFile]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.suffix == ".csv" and _STEM_RE.fullmatch(p.stem):
            if not p.with_suffix(".arrow").exists():
                raise ExportFormatError(
                    str(p.absolute()),
                    f"chunk index without its data file {p.stem}.arrow (an interrupted copy?); "
                    "copy the .arrow file too, or remove the .csv",
                )
            continue
        if p.suffix != ".arrow":
            continue
        if not _STEM_RE.fullmatch(p.stem):
            raise ExportFormatError(
                str(p.absolute()),
                "not a DVID export file name: expected <X>_<Y>_<Z>.arrow (voxel origin)",
            )
        if not p.is_file():
            what = "a directory" if p.is_dir() else "not a regular file (a dangling link?)"
            raise ExportFormatError(
                str(p.absolute()), f"is {what}, not a DVID export file; its shard cannot be read"
            )
        csv = p.with_suffix(".csv")
        st = p.stat()
        files.append(
            ExportFile(scale, p.stem, p, csv if csv.is_file() else None, st.st_size, st.st_mtime_ns)
        )
    files.sort(key=lambda e: e.origin[::-1])
    return files


def _list_gcs_export(url: str) -> dict[int, list[ExportFile]]:
    """list_export for gs://bucket/prefix: one listing of the prefix (paged by the client)."""
    bucket, prefix = split_gs_url(url.rstrip("/"))
    prefix = prefix + "/" if prefix else ""
    arrows: dict[tuple[int, str], tuple[int, str]] = {}
    csvs: set[tuple[int, str]] = set()
    scales: set[int] = set()
    for blob in storage_client().list_blobs(bucket, prefix=prefix):
        rel = blob.name[len(prefix) :]
        parts = rel.split("/")
        if len(parts) != 2 or not _SCALE_DIR_RE.fullmatch(parts[0]):
            continue
        scale = int(parts[0][1:])
        scales.add(scale)
        stem, dot, ext = parts[1].rpartition(".")
        full = f"gs://{bucket}/{blob.name}"
        if ext == "arrow" and dot:
            if not _STEM_RE.fullmatch(stem):
                raise ExportFormatError(
                    full, "not a DVID export file name: expected <X>_<Y>_<Z>.arrow (voxel origin)"
                )
            arrows[(scale, stem)] = (int(blob.size), str(blob.generation))
        elif ext == "csv" and _STEM_RE.fullmatch(stem):
            csvs.add((scale, stem))
    for scale, stem in sorted(csvs - set(arrows)):
        raise ExportFormatError(
            f"gs://{bucket}/{prefix}s{scale}/{stem}.csv",
            f"chunk index without its data file {stem}.arrow (an interrupted upload?); "
            "copy the .arrow file too, or remove the .csv",
        )
    out: dict[int, list[ExportFile]] = {s: [] for s in sorted(scales)}
    for (scale, stem), (size, generation) in arrows.items():
        base = f"gs://{bucket}/{prefix}s{scale}/{stem}"
        csv = base + ".csv" if (scale, stem) in csvs else None
        out[scale].append(
            ExportFile(scale, stem, base + ".arrow", csv, size, gcs_generation=generation)
        )
    for files in out.values():
        files.sort(key=lambda e: e.origin[::-1])
    return out

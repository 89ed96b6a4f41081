"""DVID `export-shards` output format: the Arrow schema, the CSV chunk index and its errors.

Pure format definitions (no file I/O). See docs: formats reference sections 2-5.

* `DVID_ARROW_SCHEMA` is the exact schema DVID's Go writer produces (field order, types,
  non-nullable top-level fields, nullable `item` list children, the binary field's metadata in
  DVID's key order). Readers look fields up by name and allow extra fields.
* `ChunkIndex` models the three CSV index layouts DVID (and helper scripts) have written:

  =========  ==================================  =========================================
  layout     header                              notes
  =========  ==================================  =========================================
  legacy     ``x,y,z,rec``                       DVID before 2026-03-24; rec = record index
  offsets    ``x,y,z,rec,offset,size``           `compute-offsets` script output
  batch      ``x,y,z,offset,size,batch_idx``     current DVID (`# schema_size=N` line first)
  =========  ==================================  =========================================

  Real DVID writes ``# schema_size=0`` and gives the first row offset 0 with a size that covers
  the schema message as well (formats ref. 2.7.1); that is valid input here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

Chunk = tuple[int, int, int]

# --- Arrow schema ------------------------------------------------------------------------------

ZSTD_FIELD_METADATA = {"compression": "true", "codec": "zstd"}  # DVID's key order

DVID_ARROW_SCHEMA = pa.schema(
    [
        pa.field("chunk_x", pa.int32(), nullable=False),
        pa.field("chunk_y", pa.int32(), nullable=False),
        pa.field("chunk_z", pa.int32(), nullable=False),
        pa.field("labels", pa.list_(pa.field("item", pa.uint64(), nullable=True)), nullable=False),
        pa.field(
            "supervoxels", pa.list_(pa.field("item", pa.uint64(), nullable=True)), nullable=False
        ),
        pa.field(
            "dvid_compressed_block", pa.binary(), nullable=False, metadata=ZSTD_FIELD_METADATA
        ),
        pa.field("uncompressed_size", pa.uint32(), nullable=False),
    ]
)

REQUIRED_FIELDS: tuple[str, ...] = tuple(DVID_ARROW_SCHEMA.names)

COORD_FIELDS: tuple[str, str, str] = ("chunk_x", "chunk_y", "chunk_z")

# Largest DVID block after zstd decompression we accept (a 64^3 block is at most ~2.2 MB even
# with 512 labels per sub-block; DVID's own limit is a 1024^3 block, far above anything exported).
MAX_UNCOMPRESSED_BLOCK = 64 << 20


def field_type_problem(name: str, typ: pa.DataType) -> str | None:
    """Why `typ` is not acceptable for required field `name` (None if it is)."""
    want = DVID_ARROW_SCHEMA.field(name).type
    if pa.types.is_list(want):
        if pa.types.is_list(typ) and typ.value_type == pa.uint64():
            return None  # the child's name and nullability do not matter
    elif typ == want:
        return None
    return f"field {name!r} has type {typ}, expected {want}"


# --- errors ------------------------------------------------------------------------------------


class ExportFormatError(ValueError):
    """A DVID export file (Arrow or CSV) is malformed or inconsistent.

    `file` names the file (as given to the reader), `chunk` the chunk (x, y, z) concerned or None,
    `line` the CSV line number (1-based) or None, and `cause` says what is wrong. str() gives
    ``"s0/0_0_0.arrow: chunk (3, 4, 5): zstd frame is truncated"``.
    """

    def __init__(
        self,
        file: str | Path,
        cause: str,
        chunk: tuple[int, int, int] | None = None,
        *,
        line: int | None = None,
    ) -> None:
        self.file = str(file)
        self.cause = cause
        self.chunk = None if chunk is None else tuple(int(c) for c in chunk)
        self.line = line
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.chunk is not None:
            parts.append(f"chunk {self.chunk}")
        parts.append(self.cause)
        return ": ".join(parts)

    def __reduce__(self):  # keep the attributes when pickled across processes
        return (_rebuild_error, (self.file, self.cause, self.chunk, self.line))


def _rebuild_error(file, cause, chunk, line):
    return ExportFormatError(file, cause, chunk, line=line)


# --- CSV chunk index ---------------------------------------------------------------------------

LAYOUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "legacy": ("x", "y", "z", "rec"),
    "offsets": ("x", "y", "z", "rec", "offset", "size"),
    "batch": ("x", "y", "z", "offset", "size", "batch_idx"),
}
_HEADER_TO_LAYOUT = {",".join(cols): name for name, cols in LAYOUT_COLUMNS.items()}
_SCHEMA_SIZE_RE = re.compile(r"#\s*schema_size\s*=\s*(\S*)\s*")
_INT_RE = re.compile(r"-?[0-9]+")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


@dataclass
class ChunkIndex:
    """One parsed CSV chunk index. Arrays are int64, one entry per row, in file order."""

    layout: str  # "legacy" | "offsets" | "batch"
    schema_size: int | None
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    rec: np.ndarray | None = None
    offset: np.ndarray | None = None
    size: np.ndarray | None = None
    batch_idx: np.ndarray | None = None
    _rows: dict[Chunk, int] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUT_COLUMNS:
            raise ValueError(f"unknown chunk index layout {self.layout!r}")
        for name in LAYOUT_COLUMNS[self.layout]:
            if getattr(self, name) is None:
                raise ValueError(f"layout {self.layout!r} needs column {name!r}")
        for name in ("x", "y", "z", "rec", "offset", "size", "batch_idx"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.asarray(v, dtype=np.int64).reshape(-1))
        n = len(self.x)
        for name in LAYOUT_COLUMNS[self.layout]:
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name!r} has {len(getattr(self, name))} rows, x has {n}")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def columns(self) -> tuple[str, ...]:
        return LAYOUT_COLUMNS[self.layout]

    @property
    def has_offsets(self) -> bool:
        return self.offset is not None

    def chunks(self) -> list[Chunk]:
        """Chunk coordinates (x, y, z) in row order."""
        return list(zip(self.x.tolist(), self.y.tolist(), self.z.tolist(), strict=True))

    def coords(self) -> np.ndarray:
        """(n, 3) int64 array of chunk coordinates, x y z."""
        return (
            np.stack([self.x, self.y, self.z], axis=1) if len(self) else np.zeros((0, 3), np.int64)
        )

    def row_of(self, chunk: Chunk) -> int | None:
        """Row number (0-based) of `chunk`, or None if the index does not list it."""
        if self._rows is None:
            self._rows = {c: i for i, c in enumerate(self.chunks())}
        return self._rows.get(tuple(int(c) for c in chunk))  # type: ignore[arg-type]


def parse_chunk_index(text: str, source: str) -> ChunkIndex:
    """Parse a DVID CSV chunk index (any of the three layouts, detected from the header line).

    Accepts an optional first line ``# schema_size=N`` (N >= 0, 0 being what real DVID writes),
    ``\\n`` or ``\\r\\n`` line ends and a missing final newline. A header with no rows is a valid
    empty index. Anything else (unknown header, wrong field count, non-integers, negative values,
    coordinates outside int32, zero sizes, duplicate chunks, blank lines) raises ExportFormatError
    naming `source` and the line number.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # final newline
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise ExportFormatError(source, "empty chunk index (no header line)", line=1)

    lineno = 1
    schema_size: int | None = None
    m = _SCHEMA_SIZE_RE.fullmatch(lines[0])
    if m:
        value = m.group(1)
        if not value.isdigit() or not value.isascii():
            raise ExportFormatError(
                source, f"schema_size must be a non-negative integer, got {value!r}", line=1
            )
        schema_size = int(value)
        lineno = 2
    elif lines[0].startswith("#"):
        raise ExportFormatError(
            source,
            f"unexpected comment line {lines[0]!r} (only '# schema_size=N' is known)",
            line=1,
        )
    if len(lines) < lineno:
        raise ExportFormatError(source, "missing header line", line=lineno)

    header = lines[lineno - 1].strip()
    layout = _HEADER_TO_LAYOUT.get(header.replace(" ", ""))
    if layout is None:
        known = " | ".join(_HEADER_TO_LAYOUT)
        raise ExportFormatError(
            source, f"unknown header {lines[lineno - 1]!r}, expected one of {known}", line=lineno
        )
    cols = LAYOUT_COLUMNS[layout]
    ncols = len(cols)
    rows = lines[lineno:]
    data = _parse_plain_rows(rows, cols)
    if data is not None:
        arrays = {name: data[:, j].copy() for j, name in enumerate(cols)}
        return ChunkIndex(layout=layout, schema_size=schema_size, **arrays)
    data = np.empty((len(rows), ncols), dtype=np.int64)
    seen: dict[Chunk, int] = {}
    for i, row in enumerate(rows):
        ln = lineno + 1 + i
        parts = row.split(",")
        if len(parts) != ncols:
            what = "blank line" if not row.strip() else f"{len(parts)} fields"
            raise ExportFormatError(
                source, f"expected {ncols} fields ({','.join(cols)}), got {what}: {row!r}", line=ln
            )
        for j, p in enumerate(parts):
            p = p.strip()
            if not _INT_RE.fullmatch(p):
                raise ExportFormatError(source, f"{cols[j]} is not an integer: {p!r}", line=ln)
            v = int(p)
            if v < 0:
                raise ExportFormatError(source, f"{cols[j]} must not be negative, got {v}", line=ln)
            limit = _INT32_MAX if cols[j] in ("x", "y", "z") else _INT64_MAX
            if v > limit:
                raise ExportFormatError(source, f"{cols[j]} {v} is out of range", line=ln)
            data[i, j] = v
        chunk = (int(data[i, 0]), int(data[i, 1]), int(data[i, 2]))
        if chunk in seen:
            raise ExportFormatError(
                source, f"chunk listed twice (first on line {seen[chunk]})", chunk, line=ln
            )
        seen[chunk] = ln
        if "size" in cols and data[i, cols.index("size")] == 0:
            raise ExportFormatError(source, "size must be positive, got 0", chunk, line=ln)

    arrays = {name: data[:, j].copy() for j, name in enumerate(cols)}
    index = ChunkIndex(layout=layout, schema_size=schema_size, **arrays)
    index._rows = {c: ln - lineno - 1 for c, ln in seen.items()}
    return index


def _parse_plain_rows(rows: list[str], cols: tuple[str, ...]) -> np.ndarray | None:
    """The rows as an (n, ncols) int64 array when every row is plain (ncols fields of 1-18
    digits, comma-separated), coordinates fit int32, sizes are positive and no chunk is listed
    twice, all checked at once on the bytes; None otherwise, and the row-by-row parser below
    finds the line and says what is wrong. (A 32K-row index parses about 20x faster.)"""
    ncols = len(cols)
    if not rows:
        return None
    text = "\n".join(rows) + "\n"
    if not text.isascii():
        return None
    b = np.frombuffer(text.encode("ascii"), np.uint8)
    newline, comma = b == 10, b == 44
    sep = newline | comma
    if not np.all(sep | ((b >= 48) & (b <= 57))):
        return None  # something other than digits, commas and line ends
    where = np.flatnonzero(sep)
    field_len = np.diff(where, prepend=-1) - 1
    if field_len.min() < 1 or field_len.max() > 18:
        return None  # an empty field, or a value that might not fit int64
    commas_per_row = np.diff(np.cumsum(comma, dtype=np.int32)[newline], prepend=0)
    if len(commas_per_row) != len(rows) or np.any(commas_per_row != ncols - 1):
        return None
    data = np.fromstring(text.replace("\n", ","), dtype=np.int64, sep=",")
    if len(data) != len(rows) * ncols:
        return None
    data = data.reshape(-1, ncols)
    if data[:, :3].max() >= 1 << 21:
        return None  # let the row parser check the int32 range (and keys stay < 2**63 here)
    if "size" in cols and not data[:, cols.index("size")].all():
        return None
    keys = (data[:, 0] << 42) | (data[:, 1] << 21) | data[:, 2]
    if len(np.unique(keys)) != len(keys):
        return None
    return data


def format_chunk_index(index: ChunkIndex) -> str:
    """The CSV text of `index` (``\\n`` line ends, the schema_size line when it is not None)."""
    out = []
    if index.schema_size is not None:
        out.append(f"# schema_size={int(index.schema_size)}\n")
    cols = index.columns
    out.append(",".join(cols) + "\n")
    if len(index):
        table = np.stack([getattr(index, c) for c in cols], axis=1).tolist()
        out.extend(",".join(map(str, row)) + "\n" for row in table)
    return "".join(out)

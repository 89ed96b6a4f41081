"""Arrow IPC message framing, read one message at a time from a buffered binary file.

pyarrow's stream reader hides where each message starts and ends, treats a stream that stops
without its end-of-stream marker as complete, and cannot report bytes after the marker. DVID
hazards need all three (truncated uploads, a second stream appended by a re-export, CSV byte
offsets), so we frame messages ourselves and hand each complete message to pyarrow for decoding:

    0xFFFFFFFF | int32 metadata length | flatbuffer Message (padded) | body (bodyLength bytes)

Only the few flatbuffer fields needed for framing are parsed here (bounds-checked; pyarrow
verifies the whole flatbuffer again when it decodes the message).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa

CONTINUATION = b"\xff\xff\xff\xff"
EOS_MARKER = CONTINUATION + b"\x00\x00\x00\x00"
FILE_MAGIC = b"ARROW1"
FILE_HEADER_LEN = 8  # magic + 2 padding bytes
FILE_TRAILER_LEN = 10  # int32 footer length + magic

# MessageHeader union type codes (Message.fbs)
SCHEMA = 1
DICTIONARY_BATCH = 2
RECORD_BATCH = 3
MESSAGE_TYPE_NAMES = {
    0: "NONE",
    1: "Schema",
    2: "DictionaryBatch",
    3: "RecordBatch",
    4: "Tensor",
    5: "SparseTensor",
}

# Metadata above this is not an export file (DVID's are < 1 KiB); refuse before allocating.
MAX_METADATA_LEN = 16 << 20


class IpcError(Exception):
    """Framing problem; `offset` is the byte offset of the message concerned."""

    def __init__(self, offset: int, cause: str) -> None:
        self.offset = offset
        self.cause = cause
        super().__init__(f"byte offset {offset}: {cause}")


_U8 = struct.Struct("<B").unpack_from
_U16 = struct.Struct("<H").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_I64 = struct.Struct("<q").unpack_from


class _FB:
    """Bounds-checked access to a flatbuffer in `buf` (every read raises ValueError when it
    would leave the buffer; struct itself would accept negative offsets)."""

    __slots__ = ("buf", "n")

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = buf
        self.n = len(buf)

    def _check(self, off: int, size: int) -> None:
        if off < 0 or off + size > self.n:
            raise ValueError(f"flatbuffer offset {off} out of range")

    def u8(self, off: int) -> int:
        self._check(off, 1)
        return _U8(self.buf, off)[0]

    def u16(self, off: int) -> int:
        self._check(off, 2)
        return _U16(self.buf, off)[0]

    def i32(self, off: int) -> int:
        self._check(off, 4)
        return _I32(self.buf, off)[0]

    def u32(self, off: int) -> int:
        self._check(off, 4)
        return _U32(self.buf, off)[0]

    def i64(self, off: int) -> int:
        self._check(off, 8)
        return _I64(self.buf, off)[0]

    def root(self) -> int:
        return self.u32(0)

    def vtable(self, table: int) -> tuple[int, int]:
        """(vtable position, vtable size in bytes) of the table at `table`."""
        vt = table - self.i32(table)
        vsize = self.u16(vt)
        if vsize < 4 or vsize % 2:
            raise ValueError("bad flatbuffer vtable")
        self._check(vt, vsize)
        return vt, vsize

    def field_pos(self, table: int, slot: int, vt: tuple[int, int] | None = None) -> int:
        """Absolute position of field `slot` of the table at `table`, or 0 when absent."""
        vpos, vsize = vt or self.vtable(table)
        entry = 4 + 2 * slot
        if entry + 2 > vsize:
            return 0
        rel = _U16(self.buf, vpos + entry)[0]
        return table + rel if rel else 0

    def deref(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, pos: int, elem_size: int) -> tuple[int, int]:
        """(start of elements, count) of the vector referenced at `pos`, all inside the buffer."""
        v = self.deref(pos)
        count = self.u32(v)
        self._check(v + 4, count * elem_size)
        return v + 4, count


@dataclass(frozen=True)
class MessageInfo:
    offset: int  # of the continuation marker
    metadata_len: int  # flatbuffer bytes (after the 8-byte prefix)
    body_len: int
    header_type: int
    header: int = 0  # position of the header table in the metadata flatbuffer

    @property
    def size(self) -> int:
        return 8 + self.metadata_len + self.body_len

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def type_name(self) -> str:
        return MESSAGE_TYPE_NAMES.get(self.header_type, f"type {self.header_type}")


def parse_message_metadata(meta: bytes | memoryview) -> tuple[int, int, int]:
    """(header_type, body_length, header table position) of a flatbuffer Message."""
    fb = _FB(meta)
    root = fb.root()
    vt = fb.vtable(root)
    p = fb.field_pos(root, 1, vt)
    header_type = fb.u8(p) if p else 0
    p = fb.field_pos(root, 3, vt)
    body_len = fb.i64(p) if p else 0
    p = fb.field_pos(root, 2, vt)
    header = fb.deref(p) if p else 0
    return header_type, body_len, header


def parse_record_batch_header(
    meta: bytes | memoryview, header: int
) -> tuple[int, list[int], list[int], bool]:
    """(rows, nodes, buffers, body compressed?) of a RecordBatch message header; `nodes` is
    the flat list [length0, null_count0, length1, ...] and `buffers` [offset0, length0, ...]."""
    fb = _FB(meta)
    if header <= 0:
        raise ValueError("record batch message without a header")
    vt = fb.vtable(header)
    p = fb.field_pos(header, 0, vt)
    length = fb.i64(p) if p else 0
    out: list[list[int]] = []
    for slot in (1, 2):
        p = fb.field_pos(header, slot, vt)
        if p:
            start, count = fb.vector(p, 16)
            out.append(list(struct.unpack_from(f"<{2 * count}q", meta, start)))
        else:
            out.append([])
    compressed = bool(fb.field_pos(header, 3, vt))
    return length, out[0], out[1], compressed


class MessageStream:
    """Sequential reader of IPC messages from a buffered binary file between `start` and `end`.

    `next_header()` reads the 8-byte prefix and the metadata of the next message and returns its
    MessageInfo plus the metadata bytes, or None at the end-of-stream marker. The body is then
    either read with `read_body()` or skipped with `skip_body()`.
    """

    def __init__(self, f: BinaryIO, start: int, end: int, *, eos_optional: bool = False) -> None:
        self.f = f
        self.pos = start
        self.end = end
        self.eos_optional = eos_optional  # IPC file format: the footer may follow without EOS
        self.eos_seen = False
        f.seek(start)
        self._pending: MessageInfo | None = None
        self._meta: bytes = b""

    def next_header(self) -> tuple[MessageInfo, bytes] | None:
        if self._pending is not None:
            self.skip_body()
        pos = self.pos
        if pos >= self.end:
            if self.eos_optional and pos == self.end:
                return None
            raise IpcError(pos, "file ends without the end-of-stream marker (truncated?)")
        prefix = self.f.read(8)
        if len(prefix) < 8 or pos + 8 > self.end:
            raise IpcError(
                pos, f"truncated message prefix ({min(len(prefix), self.end - pos)} bytes)"
            )
        if prefix[:4] != CONTINUATION:
            raise IpcError(
                pos,
                "expected an Arrow IPC message (continuation marker ffffffff), "
                f"found {prefix[:4].hex()}",
            )
        (meta_len,) = struct.unpack_from("<i", prefix, 4)
        if meta_len == 0:
            self.pos = pos + 8
            self.eos_seen = True
            return None
        if meta_len < 0 or meta_len > MAX_METADATA_LEN:
            raise IpcError(pos, f"invalid metadata length {meta_len}")
        if pos + 8 + meta_len > self.end:
            raise IpcError(
                pos,
                f"truncated message: metadata needs {meta_len} bytes, "
                f"{max(0, self.end - pos - 8)} left in the file",
            )
        meta = self.f.read(meta_len)
        if len(meta) != meta_len:
            raise IpcError(pos, "truncated message metadata")
        try:
            header_type, body_len, header = parse_message_metadata(meta)
        except (ValueError, struct.error) as e:
            raise IpcError(pos, f"corrupt message metadata: {e}") from None
        if body_len < 0:
            raise IpcError(pos, f"invalid body length {body_len}")
        info = MessageInfo(pos, meta_len, body_len, header_type, header)
        if info.end > self.end:
            raise IpcError(
                pos,
                f"truncated {info.type_name} message: body needs {body_len} bytes, "
                f"{max(0, self.end - pos - 8 - meta_len)} left in the file",
            )
        self._pending = info
        self._meta = meta
        self.pos = pos + 8 + meta_len
        return info, meta

    def read_message(self) -> pa.Buffer:
        """The whole pending message (prefix, metadata, body) in one Arrow-allocated buffer."""
        info = self._pending
        assert info is not None
        buf = pa.allocate_buffer(info.size)
        mv = memoryview(buf).cast("B")
        mv[:4] = CONTINUATION
        mv[4:8] = struct.pack("<i", info.metadata_len)
        mv[8 : 8 + info.metadata_len] = self._meta
        got = self.f.readinto(mv[8 + info.metadata_len :]) if info.body_len else 0
        mv.release()
        if got != info.body_len:
            raise IpcError(info.offset, "truncated message body")
        self.pos = info.end
        self._pending = None
        return buf

    def read_body_prefix(self, n: int) -> bytes:
        """The first `n` body bytes of the pending message (the rest is skipped later)."""
        info = self._pending
        assert info is not None and n <= info.body_len
        data = self.f.read(n)
        if len(data) != n:
            raise IpcError(info.offset, "truncated message body")
        self.pos += n
        return data

    def skip_body(self) -> None:
        info = self._pending
        assert info is not None
        if self.pos != info.end:
            self.f.seek(info.end)
            self.pos = info.end
        self._pending = None

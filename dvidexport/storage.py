"""Where DVID export files are read from: a local folder or a GCS bucket (`gs://`).

The reader needs three things of a file: its size, a seekable binary handle (one buffered for
the sequential scan, one unbuffered for range reads at CSV offsets) and, for the small CSV
index, all of its bytes. `SourceFile` gives exactly that for both places.

On GCS a handle is google-cloud-storage's `BlobReader`: ranged GETs of `chunk_size` bytes as the
reader walks the file (streamed, never the whole object; the library retries each GET), pinned
to the object generation recorded at planning, so a file re-exported in place is an error, not
a silent mix of two exports. `STORAGE_EMULATOR_HOST` is honoured by the client library.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dvid2ng.schemas.dvid import ExportFormatError

SCAN_CHUNK = 8 << 20  # bytes per ranged GET of a sequential scan
RANGE_CHUNK = 256 << 10  # bytes per ranged GET when reading one record batch at an offset
LOCAL_READ_BUFFER = 1 << 20


class SourceFile(Protocol):
    url: str  # how errors name the file (a path or gs:// URL)

    def size(self) -> int: ...

    def generation(self) -> str: ...

    def open(self, *, sequential: bool) -> BinaryIO: ...

    def read_all(self) -> bytes: ...


@dataclass(frozen=True)
class LocalFile:
    path: Path

    @property
    def url(self) -> str:
        return str(self.path)

    def size(self) -> int:
        return os.stat(self.path).st_size

    def generation(self) -> str:
        return str(os.stat(self.path).st_mtime_ns)

    def open(self, *, sequential: bool) -> BinaryIO:
        # An unbuffered handle for random ranges: read-ahead would fetch 1 MiB per small batch.
        return open(self.path, "rb", buffering=LOCAL_READ_BUFFER if sequential else 0)

    def read_all(self) -> bytes:
        return self.path.read_bytes()


@functools.cache
def _storage_client(emulator: str):
    from google.cloud import storage

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="emulator", credentials=AnonymousCredentials())
    return storage.Client()


_client_lock = threading.Lock()


def storage_client():
    """One client per process and endpoint (clients are thread-safe; making one costs an auth
    lookup). The client library reads STORAGE_EMULATOR_HOST itself."""
    with _client_lock:
        return _storage_client(os.environ.get("STORAGE_EMULATOR_HOST", ""))


def split_gs_url(url: str) -> tuple[str, str]:
    if not url.startswith("gs://"):
        raise ValueError(f"not a gs:// URL: {url!r}")
    bucket, _, name = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URL without a bucket: {url!r}")
    return bucket, name


@dataclass(frozen=True)
class GcsFile:
    """An object `gs://bucket/name`, pinned to `pinned_generation` when given."""

    url: str
    pinned_generation: str = ""
    known_size: int = -1

    def _blob(self, reload: bool = False):
        bucket, name = split_gs_url(self.url)
        generation = int(self.pinned_generation) if self.pinned_generation else None
        blob = storage_client().bucket(bucket).blob(name, generation=generation)
        if reload:
            from google.api_core import exceptions

            try:
                blob.reload()
            except exceptions.NotFound:
                raise FileNotFoundError(self._missing()) from None
        return blob

    def _missing(self) -> str:
        if self.pinned_generation:
            return (
                f"{self.url} generation {self.pinned_generation} does not exist any more "
                "(re-exported or deleted since it was planned)"
            )
        return f"{self.url} does not exist"

    @functools.cached_property
    def _metadata(self):
        return self._blob(reload=True)

    def size(self) -> int:
        if self.known_size >= 0:
            return self.known_size
        return int(self._metadata.size)

    def generation(self) -> str:
        return str(self._metadata.generation)

    def open(self, *, sequential: bool) -> BinaryIO:
        blob = self._metadata
        return _GcsReader(
            blob.open("rb", chunk_size=SCAN_CHUNK if sequential else RANGE_CHUNK),
            self,
        )

    def read_all(self) -> bytes:
        from google.api_core import exceptions

        try:
            return self._blob().download_as_bytes()
        except exceptions.NotFound:
            raise FileNotFoundError(self._missing()) from None


class _GcsReader:
    """A BlobReader that turns "the pinned generation is gone" into FileNotFoundError."""

    def __init__(self, reader, source: GcsFile) -> None:
        self._r = reader
        self._source = source

    def read(self, n: int = -1) -> bytes:
        from google.api_core import exceptions

        try:
            return self._r.read(n)
        except exceptions.NotFound:
            raise FileNotFoundError(self._source._missing()) from None

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._r.seek(pos, whence)

    def tell(self) -> int:
        return self._r.tell()

    def close(self) -> None:
        self._r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def source_file(where: str | Path | SourceFile, generation: str = "", size: int = -1) -> SourceFile:
    """The SourceFile for a local path or gs:// URL (a SourceFile is returned as it is)."""
    if not isinstance(where, str | Path):
        return where
    text = str(where)
    if text.startswith("gs://"):
        return GcsFile(text, generation, size)
    if "://" in text and not text.startswith("file://"):
        raise ExportFormatError(text, "unsupported source: use a local path or gs:// URL")
    return LocalFile(Path(text.removeprefix("file://")))


def is_gcs(where: str | Path) -> bool:
    return str(where).startswith("gs://")

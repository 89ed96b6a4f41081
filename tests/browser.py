"""A real browser on the viewer: `dvid2ng view` as a subprocess, Debian's Chromium driven by
Playwright (never `playwright install`: that downloads a browser), and what it drew.

Shared by tests/test_view_browser.py and docs/img/make_view_demo.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
# Headless, software WebGL (SwiftShader), and nothing that talks to the network on its own.
CHROMIUM_FLAGS = [
    "--use-angle=swiftshader",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY_TIMEOUT_MS = 120_000  # SwiftShader on a busy 2-core machine is slow, not stuck

# Console errors a correct run may still show, each with why it is harmless (the tests accept
# them only for URLs under the volume's data URL):
CONSOLE_ALLOW = {
    # A chunk or shard that was never written (an all-zero region) is a 404 by design, which
    # Neuroglancer reads as empty, and Chromium logs a failed fetch as "Failed to load
    # resource: ... 404". Chromium 156 does not log the fetches Neuroglancer makes from its
    # chunk worker, so the measured runs show none; a Chromium that does must not fail them.
    "missing data": "the server responded with a status of 404",
}


def chromium_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return (
            f"Chromium is not installed at {CHROMIUM}; .ci/run installs Debian's `chromium` "
            "with apt-get (apt-get install -y --no-install-recommends chromium)"
        )
    return None


@dataclass
class ConsoleEntry:
    type: str
    text: str
    url: str


@dataclass
class Page:
    page: object  # playwright.sync_api.Page
    console: list[ConsoleEntry] = field(default_factory=list)

    def errors(self) -> list[ConsoleEntry]:
        return [c for c in self.console if c.type in ("error", "pageerror")]


@contextlib.contextmanager
def chromium_page(profile: Path, width: int = 800, height: int = 600) -> Iterator[Page]:
    """A fresh headless Chromium (its own user-data-dir) with one page of width x height CSS
    pixels at one device pixel each; console messages and page errors are collected."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
            device_scale_factor=1,
        )
        try:
            page = Page(context.new_page())

            def record(message) -> None:
                page.console.append(
                    ConsoleEntry(message.type, message.text, message.location["url"])
                )

            # Neuroglancer fetches and decodes chunks in a Web Worker: listen there too.
            page.page.on("console", record)
            page.page.on("worker", lambda worker: worker.on("console", record))
            page.page.on(
                "pageerror", lambda e: page.console.append(ConsoleEntry("pageerror", str(e), ""))
            )
            yield page
        finally:
            context.close()


def wait_until_ready(page: Page) -> None:
    page.page.wait_for_function(
        "window.viewer !== undefined && window.viewer.isReady()",
        timeout=READY_TIMEOUT_MS,
        polling=100,
    )


def open_state(page: Page, url: str) -> None:
    """Go to `url` (a viewer URL with its state) and wait until Neuroglancer has drawn it."""
    page.page.goto(url)
    wait_until_ready(page)


def show_state(page: Page, url: str, state: dict) -> None:
    """Switch an open viewer to `state` (given with its `url`) through the URL fragment, as a
    user editing the URL would, and wait until it has taken effect and is drawn."""
    page.page.evaluate("fragment => { window.location.hash = fragment; }", url.split("#", 1)[1])
    page.page.wait_for_function(
        """want => { const s = window.viewer.state.toJSON();
                     return s.layout === want.layout
                         && JSON.stringify(s.position) === JSON.stringify(want.position)
                         && window.viewer.isReady(); }""",
        arg={"layout": state["layout"], "position": state["position"]},
        timeout=READY_TIMEOUT_MS,
        polling=100,
    )


def screenshot(page: Page, path: Path | None = None) -> np.ndarray:
    """The page as an (H, W, 3) uint8 RGB array (and a PNG at `path`)."""
    from PIL import Image

    png = page.page.screenshot()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def panel_boxes(page: Page) -> list[tuple[float, float, float, float]]:
    """(left, top, width, height) in screen pixels of the drawing area (inside the border) of
    each panel, in page order (for "4panel": xy, xz, 3d, yz)."""
    boxes = page.page.evaluate(
        """() => Array.from(document.querySelectorAll('.neuroglancer-rendered-data-panel'))
            .map(e => { const r = e.getBoundingClientRect();
                        return [r.left + e.clientLeft, r.top + e.clientTop,
                                e.clientWidth, e.clientHeight]; })"""
    )
    return [tuple(box) for box in boxes]  # type: ignore[misc]


def panel_box(page: Page) -> tuple[int, int, int, int]:
    """The drawing area of the one cross-section panel of an "xy" layout."""
    boxes = panel_boxes(page)
    assert len(boxes) == 1, f"expected one data panel (layout xy), found {boxes}"
    assert all(float(v).is_integer() for v in boxes[0]), f"panel not on whole pixels: {boxes}"
    return tuple(int(v) for v in boxes[0])  # type: ignore[return-value]


@dataclass
class ViewProcess:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def requests(self) -> list[dict]:
        """The server's request log (JSON lines of `--log-level info`)."""
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "request":
                    out.append(entry)
        return out


@contextlib.contextmanager
def view_server(dest: Path | str, *args: str, log_path: Path, env: dict | None = None):
    """`dvid2ng --log-level info view DEST ARGS` in its own process group; yields once it has
    printed its URL, and is stopped (SIGTERM, then SIGKILL) whatever happens."""
    cmd = [sys.executable, "-m", "dvid2ng.dispatcher.cli", "--log-level", "info", "view"]
    cmd += [str(dest), *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        url = _first_line(proc, timeout=60)
        if not url.startswith("http://"):
            raise AssertionError(
                f"dvid2ng view printed {url!r}, exit {proc.poll()}:\n{log_path.read_text()}"
            )
        yield ViewProcess(proc, url, log_path)
    finally:
        stop_process_group(proc)


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0].strip() if got else ""


def stop_process_group(proc: subprocess.Popen, grace: float = 10) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def colour_mask(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 24) -> np.ndarray:
    """Pixels within `tolerance` (sum of channel differences) of `rgb`."""
    return np.abs(image.astype(np.int32) - np.array(rgb)).sum(axis=-1) <= tolerance


def expected_labels(
    image_shape: tuple[int, ...],
    box: tuple[int, int, int, int],
    position: list[float],
    section: np.ndarray,
) -> np.ndarray:
    """What one voxel per screen pixel must show: for every screen pixel inside `box`, the
    label of the xy `section` (y, x) voxel under the pixel's centre (0 outside the volume).
    The panel's centre is at `position`; voxel i spans [i, i + 1)."""
    left, top, width, height = box
    ys, xs = np.mgrid[0 : image_shape[0], 0 : image_shape[1]]
    vx = np.floor(position[0] + (xs + 0.5 - (left + width / 2))).astype(np.int64)
    vy = np.floor(position[1] + (ys + 0.5 - (top + height / 2))).astype(np.int64)
    inside = (xs >= left) & (xs < left + width) & (ys >= top) & (ys < top + height)
    inside &= (vx >= 0) & (vx < section.shape[1]) & (vy >= 0) & (vy < section.shape[0])
    labels = np.zeros(image_shape[:2], dtype=section.dtype)
    labels[inside] = section[vy[inside], vx[inside]]
    return labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0

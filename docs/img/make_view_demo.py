"""Make docs/img/view-demo.png: what `dvid2ng demo` and then the `dvid2ng view` command it
prints show in a browser (headless Debian Chromium through Playwright, as in the tests).

    .venv/bin/python docs/img/make_view_demo.py [OUT.png]
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # for tests.browser, the tests' browser driver

from dvid2ng.dispatcher.cli import main  # noqa: E402
from tests import browser  # noqa: E402


def make(out: Path) -> None:
    reason = browser.chromium_unavailable()
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["demo", str(root / "demo")]) == 0
        command = next(line for line in err.getvalue().splitlines() if " view " in line)
        args = shlex.split(command)[2:]
        with (
            browser.view_server(*args, log_path=root / "view.log") as server,
            browser.chromium_page(root / "profile", width=1000, height=700) as page,
        ):
            browser.open_state(page, server.url)
            browser.screenshot(page, out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes) for: {command.strip()}")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "img" / "view-demo.png")

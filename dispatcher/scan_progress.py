"""Progress of long scans (validate-dvid, verify): a tqdm bar on a terminal, a line every 10 s
otherwise (logs, CI), nothing with --no-progress."""

from __future__ import annotations

import sys
import time

LINE_EVERY_S = 10.0


class ScanProgress:
    def __init__(
        self, total: int | None, *, unit: str, desc: str, enabled: bool = True, stream=None
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.unit = unit
        self.desc = desc
        self.done = 0
        self.note = ""
        self.started = self.last = time.monotonic()
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm  # ~0.1 s to import: only a terminal's bar pays it

            self.bar = tqdm(
                total=total or None,
                unit=unit,
                unit_scale=True,
                dynamic_ncols=True,
                desc=desc,
                file=self.stream,
            )

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if note:
            self.note = note
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= LINE_EVERY_S:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        rate = self.done / max(1e-9, now - self.started)
        of = f"/{self.total:,}" if self.total else ""
        note = f" ({self.note})" if self.note else ""
        print(
            f"{self.desc}: {self.done:,}{of} {self.unit}s, {rate:,.0f}/s{note}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and time.monotonic() - self.started >= LINE_EVERY_S:
            self._line(time.monotonic())

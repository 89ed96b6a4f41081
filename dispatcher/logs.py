"""structlog set-up: readable lines on a terminal, JSON lines elsewhere (Cloud Logging, files)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

import structlog


def configure_logging(
    *, json: bool | None = None, level: str = "info", file: Path | None = None
) -> None:
    """JSON when `json` is True, when DVID2NG_LOG_FORMAT=json, or when the stream is not a TTY."""
    stream: TextIO
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        stream = open(file, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        json = True
    else:
        stream = sys.stderr
    if json is None:
        env = os.environ.get("DVID2NG_LOG_FORMAT", "")
        json = env == "json" or (env != "console" and not stream.isatty())
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=_factory(stream if file is not None else None),
        cache_logger_on_first_use=False,
    )


def _factory(stream: TextIO | None):
    """Loggers write to `stream`, or to whatever sys.stderr is at the time (so redirected or
    captured stderr works)."""

    def make(*_args) -> structlog.PrintLogger:
        return structlog.PrintLogger(stream if stream is not None else sys.stderr)

    return make

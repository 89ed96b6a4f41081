"""Ending a worker process without the interpreter's teardown.

A worker that has imported Numba, llvmlite and TensorStore spends 0.3-0.4 s of CPU at exit
tearing down modules and collecting their objects (LLVM's and Numba's above all): billed on a
Cloud Run worker, and the tail of every embedded `dvid2ng run`, whose supervisor waits for its
workers. Nothing of that teardown is needed once a worker's queue and state are closed: every
shard it finished is committed to the destination and recorded in the state before its message
is acked.

`exit_now` keeps what a normal exit does for others: it waits for non-daemon threads, runs the
atexit handlers, shuts logging down and flushes stdout and stderr, then ends the process with
`os._exit`. Only module teardown and the last garbage collection are skipped (no `__del__` of
ours does I/O: files we write are closed, or line-buffered logs).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)

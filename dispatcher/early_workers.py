"""Embedded worker processes started before the plan exists (light module: no NumPy, Numba
or TensorStore here, so the dispatcher can start them first thing).

A worker's start-up (the interpreter, NumPy, Numba, TensorStore, pyarrow, loading the kernels)
costs seconds on a small machine. `dvid2ng run` starts its workers before it checks the spec,
scans the export and publishes, so that this cost runs beside the planning instead of after it;
each worker then waits for its orders (the state folder, its index and its settings), or None
when it is not needed after all.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

EMBEDDED_ATTEMPTS_PER_TIER = 2


@dataclass(frozen=True)
class WorkerSettings:
    """What every embedded worker process is told (picklable)."""

    gzip_level: int = 6
    attempts: int = EMBEDDED_ATTEMPTS_PER_TIER
    log_level: str = "info"
    threads: int = 1


def die_with_parent(parent: int) -> None:
    """Ask Linux to send us SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so a worker
    never converts on for a run that is gone; then make sure it had not died already."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        sys.exit(0)


def _early_worker_main(orders, stop, parent: int) -> None:
    """Entry point of a worker process started before the plan: import everything and load the
    kernels now (while the dispatcher plans), then wait for (state folder, index, settings),
    or None: not needed after all."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into `stop`
    die_with_parent(parent)
    from dvid2ng.worker import startup_gc

    startup_gc.pause()  # no garbage collection while importing and loading (worker/startup_gc.py)
    from dvid2ng.dispatcher import embedded  # the worker's imports, paid now
    from dvid2ng.dispatcher.logs import configure_logging  # noqa: F401
    from dvid2ng.kernels import warm_up_transcode
    from dvid2ng.kernels.cache_load import load_cached_lightly
    from dvid2ng.worker.loop import Worker  # noqa: F401  (TensorStore, the converter)

    load_cached_lightly()  # cache hits without Numba's registry refresh
    startup_gc.resume_on_compile()
    warm_up_transcode()
    startup_gc.resume()  # what start-up made is frozen, out of later collections
    try:
        got = orders.recv()
    except (EOFError, OSError):  # the supervisor is gone
        return
    finally:
        orders.close()
    if got is not None:
        state_dir, index, settings = got
        embedded._worker_main(state_dir, index, stop, settings, parent)


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """Spawned workers inherit os.environ: no BLAS thread pool (numpy's linear algebra is
    never used; its threads cost start-up time), unless the user set one."""
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)


class EarlyWorkers:
    """Worker processes started before planning, so that their start-up (the interpreter,
    NumPy, Numba, TensorStore, loading the kernels: seconds on a small machine) runs while
    the dispatcher checks the spec, scans the export and publishes, instead of after it.
    The supervisor hands each one its orders; the rest are told to exit by `close()`."""

    def __init__(self, count: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.stop = self.ctx.Event()
        self._idle: list[tuple[mp.process.BaseProcess, object]] = []
        with worker_environment():
            for _ in range(count):
                receive, send = self.ctx.Pipe(duplex=False)
                proc = self.ctx.Process(
                    target=_early_worker_main, args=(receive, self.stop, os.getpid()), daemon=True
                )
                proc.start()
                receive.close()
                self._idle.append((proc, send))

    def hand_over(
        self, state_dir: str, index: int, settings: WorkerSettings
    ) -> mp.process.BaseProcess | None:
        """An idle early worker, now converting as worker `index`; None when none is left."""
        while self._idle:
            proc, send = self._idle.pop(0)
            try:
                send.send((state_dir, index, settings))  # type: ignore[attr-defined]
                return proc
            except OSError:  # it died while starting: the caller spawns a fresh one
                proc.join(timeout=1)
            finally:
                send.close()  # type: ignore[attr-defined]
        return None

    def close(self) -> None:
        """Dismiss the workers nobody needed (a small plan, or planning failed)."""
        idle, self._idle = self._idle, []
        for _, send in idle:
            with contextlib.suppress(OSError):
                send.send(None)  # type: ignore[attr-defined]
            send.close()  # type: ignore[attr-defined]
        for proc, _ in idle:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()

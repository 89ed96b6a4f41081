"""Start-up: load the transcoder's Numba kernels on a thread while the worker connects.

Loading even a cached kernel costs Numba a one-off ~0.3-0.6 s (it sets up its typing and
lowering registries before it can use any compiled function). A worker meanwhile opens its
queue and state, pulls a message, claims the shard, reads the destination's `info` and opens
the source: mostly waiting on the network in the fleet. Doing both at once takes that wait off
the time to the first chunk; a kernel called before the thread is done simply waits for
Numba's compile lock. Failures are left to the first real call, which reports them.

Cache hits skip Numba's registry refresh (kernels/cache_load.py): ~0.3 s less CPU before the
first chunk.
"""

from __future__ import annotations

import contextlib
import threading


def _load() -> None:
    with contextlib.suppress(Exception):
        from dvid2ng.kernels.cache_load import load_cached_lightly

        load_cached_lightly()
        from dvid2ng.worker import startup_gc

        if startup_gc.paused():
            startup_gc.resume_on_compile()  # a cold cache compiles: collect again
        from dvid2ng.kernels import warm_up_transcode

        warm_up_transcode()


_started: threading.Thread | None = None
_lock = threading.Lock()


def warm_in_background() -> threading.Thread:
    """Start loading (once per process; later calls return the same thread)."""
    global _started
    with _lock:
        if _started is None:
            _started = threading.Thread(target=_load, name="warm-kernels", daemon=True)
            _started.start()
        return _started

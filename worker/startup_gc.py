"""Start-up without the cyclic garbage collector.

A worker's start-up (NumPy, Numba, TensorStore and the rest imported, the kernels loaded)
allocates about 70,000 long-lived objects. CPython's collector walks them as they arrive: 141
young, 13 middle and one full collection before the first chunk, 70-90 ms of CPU here
(docs/performance.md, "Start-up"), all of it holding the GIL the start-up threads share. Almost
none of it is garbage: collecting at the end finds about 1,200 unreachable objects.

So a worker pauses the collector for its start-up, then moves everything start-up made into
the permanent generation (`gc.freeze()`: later full collections no longer walk Numba's and
TensorStore's objects at all) and collects as usual from there. It resumes at the first of:
- its first converted chunks (`resume()`, from the worker loop);
- a Numba compile (a cold cache): compiling makes garbage for seconds;
- `MAX_PAUSE_S` after the pause, whatever start-up is waiting for (a slow queue, no work).
"""

from __future__ import annotations

import gc
import threading

MAX_PAUSE_S = 3.0

_lock = threading.Lock()
_paused = False
_timer: threading.Timer | None = None
_at_pause = 0  # collections in this process when the pause began
# collections between pause and resume (none, unless forced); set once start-up is over, which
# is once per process: after a resume, pause() does nothing
_while_paused: int | None = None


def _collections() -> int:
    return sum(s["collections"] for s in gc.get_stats())


def pause() -> None:
    """Stop automatic collection until `resume()` (at most MAX_PAUSE_S). A no-op when paused
    already, after start-up has resumed once, or when the collector is off (somebody else's
    choice)."""
    global _paused, _timer, _at_pause
    with _lock:
        if _paused or _while_paused is not None or not gc.isenabled():
            return
        _at_pause = _collections()
        gc.disable()
        _paused = True
        _timer = threading.Timer(MAX_PAUSE_S, resume)
        _timer.daemon = True
        _timer.name = "startup-gc"
        _timer.start()


def resume() -> None:
    """Freeze what start-up made and collect automatically again (idempotent)."""
    global _paused, _timer, _while_paused
    with _lock:
        if not _paused:
            return
        _paused = False
        _while_paused = _collections() - _at_pause
        if _timer is not None and _timer is not threading.current_thread():
            _timer.cancel()
        _timer = None
        gc.freeze()
        gc.enable()


def paused() -> bool:
    return _paused


def collections_while_paused() -> int | None:
    """Collections during the start-up pause (0 unless somebody called gc.collect());
    None before a pause has ended."""
    return _while_paused


def resume_on_compile() -> None:
    """Resume when Numba starts to compile (call once Numba is imported: from the thread
    that loads the kernels, so that the main thread never imports Numba for this)."""
    from numba.core import event

    class _OnCompile(event.Listener):
        def on_start(self, event) -> None:
            resume()

        def on_end(self, event) -> None:
            pass

    event.register("numba:compile", _OnCompile())

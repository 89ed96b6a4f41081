"""Loading cached kernels without Numba's registry refresh: a worker's start-up.

Before Numba loads any function from its on-disk cache it refreshes its typing and lowering
registries (`Cache.load_overload` calls `target_context.refresh()`), which imports about 90
modules of `numba.np`, `numba.cpython`, `numba.typed`, cffi support and more: 0.3 s of CPU on
this project's machine, half of what a worker spends in Numba before its first chunk
(docs/performance.md, "Start-up"). None of it is needed to run code that is already compiled:
a cached kernel is machine code plus its environment, and what that code calls at run time is
Numba's runtime (NRT), which `rtsys.initialize` sets up on its own.

Nor does it need Numba's extensions: before its first dispatch Numba also scans every installed
distribution's entry points for `numba_extensions` (`Dispatcher._compilation_chain_init_hook`,
another ~0.07 s here, more the more packages are installed).

`load_cached_lightly()` makes cache hits initialize only the NRT, and leaves the entry-point
scan to the first compile. A cache miss is unchanged: it compiles, and Numba's compiler
refreshes both registries itself before it compiles (`CompilerBase.__init__`), loading the
extensions on the way (`CPUContext.load_additional_registries` calls `entrypoints.init_all`),
so a kernel compiled afterwards in the same process sees every registry and extension. (Only
the typing of a compile's arguments now runs before the extensions load: this project passes
its kernels numpy arrays, ints and tuples, which no extension defines.) The patch is meant for
processes that run this project's kernels only: the workers.

Numba's internals move between versions: the patch applies only to the versions pyproject.toml
allows and whose methods it finds, and otherwise leaves Numba as it is (the worker is then as
fast as before, not wrong); DVID2NG_LIGHT_CACHE_LOAD=0 turns it off.
`tests/kernels/test_cache_load.py` checks the results against the normal load, in fresh
processes.
"""

from __future__ import annotations

import os
import threading

_TESTED_NUMBA = ((0, 60), (0, 63))  # [low, high) of the versions this was checked on
_lock = threading.Lock()
_patched = False


def load_cached_lightly() -> bool:
    """Patch Numba (process-wide, idempotent); True when the light load is in effect."""
    global _patched
    with _lock:
        if _patched:
            return True
        if os.environ.get("DVID2NG_LIGHT_CACHE_LOAD", "1") == "0":
            return False
        import numba
        from numba.core import caching, dispatcher
        from numba.core.runtime import nrt

        version = tuple(int(p) for p in numba.__version__.split(".")[:2])
        cache = getattr(caching, "Cache", None)
        needed = ("load_overload", "_load_overload", "_guard_against_spurious_io_errors")
        if not (_TESTED_NUMBA[0] <= version < _TESTED_NUMBA[1]) or cache is None:
            return False
        if not all(hasattr(cache, n) for n in needed) or not hasattr(nrt.rtsys, "initialize"):
            return False
        if not hasattr(dispatcher.Dispatcher, "_compilation_chain_init_hook"):
            return False

        def load_overload(self, sig, target_context):
            # what Cache.load_overload does, with rtsys.initialize instead of a refresh
            nrt.rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)

        def no_entry_point_scan(self):
            pass  # the first compile's refresh scans them (see above)

        cache.load_overload = load_overload
        dispatcher.Dispatcher._compilation_chain_init_hook = no_entry_point_scan
        _patched = True
        return True

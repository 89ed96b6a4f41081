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

Nor does it need the modules of the library functions a kernel inlined: a cached kernel carries
one pickled `Environment` per function it was compiled from, and unpickling one imports the
module it belongs to (`environment._rebuild_env`), for the module's globals. This project's
transcoder has one from `numba.np.arrayobj` (array allocation), whose import pulls in 16 more
modules (unicode, random, sorting): 60-90 ms here. Those globals are read only by object-mode
code (`PyLower`), which nopython kernels never contain; what a kernel does read at run time is
the environment's constants, which are unpickled as before.

And the NRT itself is compiled at every start unless loaded from a file (kernels/nrt_cache.py).

`load_cached_lightly()` makes cache hits initialize only the NRT (from its file once one
process has written it), leaves the entry-point scan to the first compile, and gives an
environment whose module is not imported yet just the module's name for globals (every
environment of an already imported module, this project's own included, still gets the
module's real globals). A cache miss is unchanged: it compiles, and Numba's compiler
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
import sys
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
        from numba.core import caching, dispatcher, environment
        from numba.core.runtime import nrt, nrtdynmod

        version = tuple(int(p) for p in numba.__version__.split(".")[:2])
        cache = getattr(caching, "Cache", None)
        needed = ("load_overload", "_load_overload", "_guard_against_spurious_io_errors")
        if not (_TESTED_NUMBA[0] <= version < _TESTED_NUMBA[1]) or cache is None:
            return False
        if not all(hasattr(cache, n) for n in needed) or not hasattr(nrt.rtsys, "initialize"):
            return False
        if not hasattr(dispatcher.Dispatcher, "_compilation_chain_init_hook"):
            return False
        if not all(hasattr(environment, n) for n in ("_rebuild_env", "lookup_environment")):
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
        environment._rebuild_env = _light_rebuild_env(environment)
        from dvid2ng.kernels import nrt_cache

        nrt_cache.install(nrtdynmod)  # the runtime from a file, not compiled (nrt_cache.py)
        _patched = True
        return True


def _light_rebuild_env(environment):
    """`environment._rebuild_env` (the unpickler of a cached kernel's environments) that does
    not import a module only for its globals (see above)."""
    original = environment._rebuild_env

    def rebuild_env(modname, consts, env_name):
        env = environment.lookup_environment(env_name)
        if env is not None:
            return env
        module = sys.modules.get(modname)
        if module is None and modname is not None:
            # what object mode would read is never read by nopython code; `__name__` keeps
            # `can_cache()` and pickling (`__reduce__`) as they are
            env = environment.Environment({"__name__": modname})
            env.consts[:] = consts
            env.env_name = env_name
            environment.Environment._memo[env_name] = env
            return env
        return original(modname, consts, env_name)

    # pickle stores a function by module and name: an environment pickled while this is in
    # place still names numba's own `_rebuild_env`, which any process can load
    rebuild_env.__module__ = original.__module__
    rebuild_env.__qualname__ = original.__qualname__
    rebuild_env.__name__ = original.__name__
    return rebuild_env

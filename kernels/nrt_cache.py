"""Numba's runtime (NRT) from a file instead of compiled at every start: part of the light load.

Before a process runs its first compiled function, Numba builds the LLVM IR of its runtime's
atomic reference counting in Python and compiles it (`nrtdynmod.compile_nrt_functions`): 25-35
ms of a worker's start-up here, every time, for the same machine code. Numba caches every
function it compiles this way except this one.

`install()` makes that compile save the library the way Numba's cache saves a kernel (object
code plus the bitcode that later compiles link against, `serialize_using_object_code`), next to
the kernels' cache, and later processes load it (`unserialize_library`, ~5 ms). The file name
is a hash of what the code depends on: the Numba, llvmlite and Python versions and the codegen's
target triple, CPU name and features (`magic_tuple`, Numba's own cache key). The file holds a
SHA-256 of its payload, and anything unreadable, mismatched or failing to load is compiled
again and replaced; the file is written to a temporary name and renamed.

The Docker image's warm-up writes it (Dockerfile); the embedded default writes it on its first
run, with the kernels. `tests/kernels/test_cache_load.py` checks that a second process loads it
and computes the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
from pathlib import Path

_MAGIC = b"dvid2ng-nrt-1\n"
last_source: str | None = None  # "file" or "compiled": where this process's NRT came from


def install(nrtdynmod) -> bool:
    """Patch `nrtdynmod.compile_nrt_functions` (once per process); False if it is not the
    function this was written against."""
    original = getattr(nrtdynmod, "compile_nrt_functions", None)
    if original is None or not hasattr(nrtdynmod, "create_nrt_module"):
        return False
    if getattr(original, "_dvid2ng_cached", False):
        return True

    def compile_nrt_functions(ctx):
        global last_source
        path = cache_file(ctx)
        library = _load(ctx, path)
        last_source = "file"
        if library is None:
            library = _compile(nrtdynmod, ctx)
            last_source = "compiled"
            _save(library, path)
        return library

    compile_nrt_functions._dvid2ng_cached = True
    nrtdynmod.compile_nrt_functions = compile_nrt_functions
    return True


def cache_file(ctx) -> Path:
    """Where this process's runtime library is kept: Numba's cache folder (NUMBA_CACHE_DIR)
    or, as Numba does for the kernels without one, the kernels' `__pycache__`."""
    import llvmlite
    import numba
    from numba.core import config

    folder = Path(config.CACHE_DIR) if config.CACHE_DIR else Path(__file__).parent / "__pycache__"
    codegen = ctx.codegen()
    key = repr((numba.__version__, llvmlite.__version__, sys.version, config.OPT,
                codegen.magic_tuple()))  # fmt: skip
    return folder / f"dvid2ng-nrt-{hashlib.sha256(key.encode()).hexdigest()[:20]}.bin"


def _compile(nrtdynmod, ctx):
    # compile_nrt_functions, with object caching on so that the library can be serialized
    ir_mod, library = nrtdynmod.create_nrt_module(ctx)
    library.enable_object_caching()
    library.add_ir_module(ir_mod)
    library.finalize()
    return library


def _load(ctx, path: Path):
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head, digest, payload = (
        data[: len(_MAGIC)],
        data[len(_MAGIC) : len(_MAGIC) + 32],
        data[len(_MAGIC) + 32 :],
    )
    if head != _MAGIC or hashlib.sha256(payload).digest() != digest:
        return None
    try:
        state = pickle.loads(payload)
        if not (isinstance(state, tuple) and len(state) == 3 and state[1] == "object"):
            return None
        return ctx.codegen().unserialize_library(state)
    except Exception:  # whatever a stale or foreign file does: compile instead
        return None


def _save(library, path: Path) -> None:
    try:
        payload = pickle.dumps(library.serialize_using_object_code(), protocol=4)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except Exception:  # a read-only cache: this process compiled, the next one will too
        pass

"""Input normalisation shared by the kernel wrappers (no copies where avoidable)."""

from __future__ import annotations

import sys

import numpy as np

from .errors import KernelError

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("kernels assume a little-endian host (output words are written natively)")


def as_u8(data: object, what: str, exc: type[KernelError] = KernelError) -> np.ndarray:
    """Return a read-only 1-D contiguous np.uint8 view of `data`.

    Accepts bytes, bytearray, memoryview (any C-contiguous buffer) and np.uint8 arrays.
    Always read-only so that Numba compiles a single specialisation per kernel.
    """
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise exc(
                f"{what} must be bytes-like or a np.uint8 array, got array of dtype {data.dtype}"
            )
        arr = data.reshape(-1) if data.ndim != 1 else data
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        arr = arr.view()
    elif isinstance(data, (bytes, bytearray)):
        arr = np.frombuffer(data, dtype=np.uint8)
    elif isinstance(data, str):
        raise exc(f"{what} must be bytes, bytearray, memoryview or a np.uint8 array, got str")
    else:
        try:  # any other buffer: memoryview, mmap, pyarrow.Buffer, ...
            mv = memoryview(data)  # type: ignore[arg-type]
        except TypeError:
            raise exc(
                f"{what} must be bytes, bytearray, memoryview or a np.uint8 array, "
                f"got {type(data).__name__}"
            ) from None
        if not mv.c_contiguous:
            mv = memoryview(mv.tobytes())
        arr = np.frombuffer(mv, dtype=np.uint8)
    arr.flags.writeable = False
    return arr


def as_u64_table(table: object, what: str, exc: type[KernelError] = KernelError) -> np.ndarray:
    """Return `table` as a read-only contiguous 1-D np.uint64 array (copy only if needed)."""
    if isinstance(table, np.ndarray):
        t = table
    else:
        # a sequence of Python ints: np.asarray would turn [7, 2**64 - 1] into float64
        try:
            items = list(table)  # type: ignore[call-overload]
        except TypeError:
            raise exc(
                f"{what} must be a sequence of integers, got {type(table).__name__}"
            ) from None
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise exc(f"{what} must hold integers, got {v!r}")
        try:
            t = np.array([int(v) for v in items], dtype=np.uint64)
        except OverflowError:
            raise exc(f"{what} holds values outside 0..2**64-1") from None
    if t.ndim != 1:
        raise exc(f"{what} must be 1-D, got shape {t.shape}")
    if t.dtype != np.uint64:
        if t.size == 0:
            t = t.astype(np.uint64)
        elif t.dtype.kind == "i":
            if int(t.min()) < 0:
                raise exc(f"{what} holds negative values (min {int(t.min())}); labels are uint64")
            t = t.astype(np.uint64)
        elif t.dtype.kind == "u":
            t = t.astype(np.uint64)
        elif t.dtype.kind == "O":
            try:
                t = np.array([int(v) for v in t], dtype=np.uint64)
            except (ValueError, TypeError, OverflowError) as e:
                raise exc(f"{what} holds values that are not uint64 integers: {e}") from None
        else:
            raise exc(f"{what} must hold unsigned 64-bit integers, got dtype {t.dtype}")
    if not t.flags.c_contiguous:
        t = np.ascontiguousarray(t)
    t = t.view()
    t.flags.writeable = False
    return t

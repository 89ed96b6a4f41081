"""Exceptions raised by the kernel wrappers.

The Numba kernels themselves never raise: they return an integer status code plus details
in a small output array, and the thin Python wrappers turn that into one of these
exceptions with a message that says exactly what is wrong with the input.
"""

from __future__ import annotations

__all__ = ["CorruptBlockError", "CsegDecodeError", "KernelError"]


class KernelError(ValueError):
    """Any invalid input to a kernel (bad arguments, corrupt or truncated data)."""


class CorruptBlockError(KernelError):
    """A DVID compressed label block is malformed, truncated, or inconsistent with its table."""


class CsegDecodeError(KernelError):
    """A neuroglancer compressed_segmentation buffer is malformed or truncated."""

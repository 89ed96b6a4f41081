"""The calls a converter thread spends its time in let the other threads run (no clock: the
probe in tests/gil_probe.py counts whether another thread ran Python during each call).

The shard conversion scales over threads only because zstd, the Numba kernels and libdeflate
release the GIL; a dependency update that silently stopped doing so would make `--threads`
worthless without failing anything else. bench/bench_threads.py measures the resulting
speed-up (wall against CPU time); this only proves the overlap exists.
"""

from __future__ import annotations

import deflate
import numpy as np
import pytest
import zstandard
from numba import njit

from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
from dvid2ng.kernels import dvid_block as dvid_block_module
from dvid2ng.kernels import dvid_block_to_cseg, ipc_scan
from dvid2ng.kernels.dvid_encode import encode_dvid_block
from tests.gil_probe import overlap_fraction

CALLS = 60


@pytest.fixture(scope="module")
def big_block() -> tuple[bytes, np.ndarray]:
    """A 256^3 DVID block with many labels: tens of milliseconds per transcode."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(1, 5000, size=(32, 32, 32), dtype=np.uint64)
    vol = np.ascontiguousarray(coarse.repeat(8, 0).repeat(8, 1).repeat(8, 2))
    vol[::3, ::5, ::7] = rng.integers(1, 5000, size=vol[::3, ::5, ::7].shape, dtype=np.uint64)
    block = encode_dvid_block(vol, rng=rng)
    return block, np.unique(vol)


def test_probe_scores_a_gil_holding_call_zero():
    """The control: pure Python and a Numba function compiled without nogil never overlap, so
    the probe can fail."""

    @njit(nogil=False, cache=False)
    def holds_the_gil(n):
        s = 0
        for i in range(n):
            s += i * i % 7
        return s

    holds_the_gil(10)
    assert overlap_fraction(lambda: sum(i * i for i in range(50_000)), CALLS) == 0
    assert overlap_fraction(lambda: holds_the_gil(20_000_000), CALLS) == 0


def test_transcode_kernel_releases_the_gil(big_block):
    block, _ = big_block
    cseg, _ = dvid_block_to_cseg(block)
    assert len(cseg) > 0
    assert overlap_fraction(lambda: dvid_block_to_cseg(block), CALLS) > 0


def test_libdeflate_and_zstd_release_the_gil(big_block):
    block, _ = big_block
    frame = zstandard.ZstdCompressor(level=3).compress(block)
    dctx = zstandard.ZstdDecompressor()
    assert overlap_fraction(lambda: deflate.gzip_compress(block, 6), CALLS) > 0
    assert overlap_fraction(lambda: dctx.decompress(frame), CALLS) > 0


# The kernel modules a converter thread calls into: the transcoder, the z-stride path and the
# cseg encoder it uses, the reader's bulk Arrow scan, and the downsampling worker's kernels.
CONVERT_PATH_MODULES = ("dvid_block", "cseg", "_cseg_core", "zstride", "ipc_scan", "downsample")


def test_worker_path_kernels_are_declared_nogil():
    """Every Numba function of those modules is compiled nogil (read from the dispatchers, so a
    kernel added without it is caught even before anything is slow). One kernel holding the
    GIL would serialise every converter thread behind it."""
    import importlib

    from numba.core.dispatcher import Dispatcher

    seen = 0
    for name in CONVERT_PATH_MODULES:
        module = importlib.import_module(f"dvid2ng.kernels.{name}")
        for attr, fn in vars(module).items():
            if isinstance(fn, Dispatcher) and fn.py_func.__module__ == module.__name__:
                seen += 1
                assert fn.targetoptions.get("nogil") is True, f"{name}.{attr} holds the GIL"
    assert seen >= 40  # the walk found the kernels (46 today), not an empty list
    for fn in (dvid_block_module._transcode_kernel, ipc_scan.scan_record_batches):
        assert fn.targetoptions.get("nogil") is True, fn


def test_zstride_encoder_releases_the_gil(big_block):
    """The Z-compressed path (`run --z-compress`) runs on the same converter threads."""
    from dvid2ng.kernels.zstride import dvid_block_to_cseg_zstride

    block, _ = big_block
    assert overlap_fraction(lambda: dvid_block_to_cseg_zstride(block, None, 2), CALLS) > 0


def test_real_records_decompress_and_transcode_off_the_gil():
    """On a real export file, the per-record calls of a converter thread overlap too."""
    from tests.conftest import REPO_ROOT

    arrow = REPO_ROOT.parent / "shared/fixtures/mcns-s1-shard/30720_24576_28672.arrow"
    if not arrow.exists():
        pytest.skip("shared fixtures not available")
    with ExportFileReader(arrow) as r:
        recs = list(r)

    def convert_all():
        for rec in recs:
            cseg, _ = dvid_block_to_cseg(decompress_block(rec, "f"), rec.labels)
            deflate.gzip_compress(cseg, 6)

    assert overlap_fraction(convert_all, 10) > 0

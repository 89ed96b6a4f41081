"""Iterating a file keeps memory bounded by one record batch, not by the file size."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pyarrow as pa

from dvid2ng.dvidexport.reader import ExportFileReader
from dvid2ng.dvidexport.writer import write_export_file


def _records(n, block_bytes, seed=0):
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n ** (1 / 3)))
    block = rng.bytes(block_bytes)  # incompressible, so the file really is this big
    for i in range(n):
        x, y, z = i % side, (i // side) % side, i // side**2
        labels = np.arange(i % 30 + 2, dtype=np.uint64)
        # vary the first bytes so that blocks are distinct
        yield (x, y, z, labels, labels, i.to_bytes(4, "little") + block)


def _peak_while_iterating(path, csv):
    gc.collect()
    base_arrow = pa.total_allocated_bytes()
    arrow_peak = 0
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    n = 0
    with ExportFileReader(path, csv) as r:
        for rec in r:
            n += 1
            assert len(rec.block_zstd) > 0
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - base_arrow)
            del rec
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return n, arrow_peak, peak - before


def test_memory_bounded(tmp_path):
    # Load the bulk scan's Numba kernel first (a worker has it loaded before its first shard):
    # importing numba inside the measured loop would count its module objects as the reader's.
    warm, warm_csv = tmp_path / "warm.arrow", tmp_path / "warm.csv"
    write_export_file(warm, warm_csv, _records(4, 100), batch_size=1)
    _peak_while_iterating(warm, warm_csv)
    sizes = {}
    for n in (1500, 4500):
        path, csv = tmp_path / f"{n}.arrow", tmp_path / f"{n}.csv"
        write_export_file(path, csv, _records(n, 12_000), batch_size=1, zstd_level=1)
        file_size = path.stat().st_size
        count, arrow_peak, py_peak = _peak_while_iterating(path, csv)
        assert count == n
        sizes[n] = (file_size, arrow_peak, py_peak)
        # one record batch (~12 KB) at a time in Arrow memory
        assert arrow_peak < 256 * 1024, sizes
        # Python heap: the 1 MiB read buffer, the bulk scan's blocks (512 KiB, two while one
        # replaces the other), the CSV index and the set of seen chunks
        assert py_peak < 4 * 1024 * 1024, sizes
        assert file_size > 5 * py_peak
    # three times the file, about the same memory
    (small_file, small_arrow, small_py), (big_file, big_arrow, big_py) = sizes[1500], sizes[4500]
    assert big_file > 2.9 * small_file
    assert big_arrow < 2 * small_arrow + 64 * 1024
    # (what grows is ~230 B per record: the seen-chunk set and the CSV index)
    assert big_py < small_py + 1024 * 1024

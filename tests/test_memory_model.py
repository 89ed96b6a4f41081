"""The dispatcher's memory estimate (base + factor x gzipped shard) against a real worker's peak.

Each shard is converted in a fresh process with the fleet's client libraries loaded, as a
Cloud Run worker has them (bench/bench_memory.py's child, the same code the bench calibrates
with), and the peak is that child's own VmHWM: ru_maxrss of a child started by fork + exec
would carry the parent's (pytest's) RSS over.

Small shards are dominated by the base (a 1,024-chunk s0-like shard gzips to ~6 MiB against a
~255 MiB process), so the within-20 % check alone mostly holds WORKER_BASE_BYTES; the second
check holds the factor, by the growth of the peak from 1,024 to 8,192 chunks (~40 MiB more
gzipped bytes) against the growth the model predicts. The bench's 32,768-chunk shard (peak
~470 MiB) is where the factor dominates: docs/performance.md "Memory model".
"""

from __future__ import annotations

import pytest

from bench.bench_memory import run_child
from bench.bench_s0 import make_synthetic_shard
from dvid2ng.dispatcher.plan import MEMORY_PER_GZIP_BYTE, estimate_gzip_bytes

MIB = 2**20


@pytest.fixture(scope="module")
def peaks(tmp_path_factory) -> dict[int, dict]:
    root = tmp_path_factory.mktemp("memory")
    out = {}
    for chunks in (1024, 8192):
        src = make_synthetic_shard(chunks, 30, root=root)
        out[chunks] = run_child(src, src / "spec.json", 0, 2, True, dest=root / f"dest-{chunks}")
    return out


@pytest.mark.parametrize("chunks", [1024, 8192])
def test_estimate_is_within_20_percent_of_the_peak(peaks, chunks):
    r = peaks[chunks]
    assert r["chunks"] == chunks
    error = r["task_estimate"] / r["peak_rss"] - 1
    assert abs(error) <= 0.20, (
        f"estimate {r['task_estimate'] / MIB:.0f} MiB vs peak {r['peak_rss'] / MIB:.0f} MiB"
    )


def test_gzipped_size_is_estimated_from_the_export_file(peaks):
    """The planner sees only the Arrow file's size and its record count; what it derives from
    them must be the gzipped shard the worker then holds (within 15 %)."""
    for r in peaks.values():
        guess = estimate_gzip_bytes(r["chunks"], r["arrow_bytes"])
        assert abs(guess / r["gzip_bytes"] - 1) <= 0.15, (guess, r["gzip_bytes"])


def test_peak_grows_by_the_factor_times_the_gzipped_bytes(peaks):
    small, big = peaks[1024], peaks[8192]
    grown = big["peak_rss"] - small["peak_rss"]
    modelled = MEMORY_PER_GZIP_BYTE * (big["gzip_bytes"] - small["gzip_bytes"])
    assert 0.7 <= grown / modelled <= 1.3, (
        f"peak grew {grown / MIB:.1f} MiB, the model says {modelled / MIB:.1f} MiB"
    )


def test_plan_uses_the_model_for_the_tier(peaks):
    """The task's memory_bytes (what picks the tier) is the model's figure, not a constant."""
    small, big = peaks[1024], peaks[8192]
    assert big["task_estimate"] > small["task_estimate"]
    assert big["task_estimate"] == big["estimate"]

"""verify over a 26,000-shard listing (mCNS s0 has 21,994 files; the whole export 26,128)
finishes with memory that grows only by a few KB per shard: the shard results, never chunk
data. Time is not asserted (bench/bench_verify.py measures it for docs/performance.md)."""

from __future__ import annotations

import json

import pytest

from tests.many_shards import make_many_shards, run_measured

MIB = 1 << 20


@pytest.mark.slow
def test_verify_26000_shards_in_bounded_memory(tmp_path):
    peaks = {}
    for n in (2_000, 26_000):
        root = tmp_path / str(n)
        root.mkdir()
        source, dest, _ = make_many_shards(root, n)
        report = root / "report.json"
        got = run_measured(
            ["verify", str(source), str(dest), "--no-progress", "--json-report", str(report)],
            root / "measure.json",
        )
        assert got["code"] == 0, got["stderr"][-3000:]
        scale = json.loads(report.read_text())["scales"][0]
        assert scale["counts"]["present"] == n and scale["output_chunks"] == n
        # index reads only: 1 KiB shard index + one tiny minishard index per shard
        assert scale["requests"] == 2 * n
        assert scale["bytes_read"] < n * (1024 + 100)
        peaks[n] = got["peak_rss"]
    assert peaks[26_000] < 700 * MIB, peaks
    assert peaks[26_000] - peaks[2_000] < 150 * MIB, f"13x the shards: {peaks}"

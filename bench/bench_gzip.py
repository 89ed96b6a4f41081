"""gzip library and level, time against bytes stored, on real and generated cseg chunks.

    .venv/bin/python bench/bench_gzip.py                  # every case, table on stdout
    .venv/bin/python bench/bench_gzip.py --json bench/out/gzip.json

Cases: the real mCNS fixture shard (258 chunks, s1, labels mapped to bodies) and generated
s0-like chunks (bench_s0.py's synthetic shard: ~30 labels per chunk; 512 of them). Each
candidate compresses every chunk of a case, best of --repeat, CPU time of this process pinned
to one core (robust to a loaded machine), and must give a gzip member that zlib decodes to the
same bytes. "GIL" says whether the binding lets another thread run while it compresses
(the overlap probe of tests/test_gil.py). zlib-ng and isal are measured when installed
(`pip install zlib-ng isal`); they are not dependencies.

The last table puts the mCNS job beside it: 587 M chunks, ~2 TB stored at libdeflate 6; the
extra vCPU-hours of a level against the bytes it saves or adds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURE = REPO.parent / "shared/fixtures/mcns-s1-shard/30720_24576_28672.arrow"
MCNS_CHUNKS = 587_173_098
MCNS_STORED_TB = 2.0  # at libdeflate 6 (the figure)
BASELINE = "libdeflate 6"


def _zlib_like(mod, level):
    def f(b):
        c = mod.compressobj(level, 8, 31)
        return c.compress(b) + c.flush()

    return f


def candidates() -> dict:
    import deflate

    out = {f"zlib {lvl}": _zlib_like(zlib, lvl) for lvl in (1, 3, 6, 9)}
    out.update(
        {
            f"libdeflate {lvl}": (lambda b, lvl=lvl: deflate.gzip_compress(b, lvl))
            for lvl in range(1, 13)
        }
    )
    try:
        from zlib_ng import zlib_ng

        out.update({f"zlib-ng {lvl}": _zlib_like(zlib_ng, lvl) for lvl in (1, 3, 6, 9)})
    except ImportError:
        pass
    try:
        from isal import isal_zlib

        out.update({f"isal {lvl}": _zlib_like(isal_zlib, lvl) for lvl in (0, 1, 2, 3)})
    except ImportError:
        pass
    return out


def cseg_chunks(arrow: Path, limit: int) -> list[bytes]:
    from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
    from dvid2ng.kernels import dvid_block_to_cseg

    out = []
    with ExportFileReader(arrow, None) as r:
        for rec in r:
            cseg, nonzero = dvid_block_to_cseg(decompress_block(rec, str(arrow)), rec.labels)
            if nonzero:
                out.append(bytes(cseg))
            if len(out) >= limit:
                break
    return out


def releases_gil(fn, data: bytes, calls: int = 200) -> bool:
    """Does another thread run Python while `fn` runs? (no timing: see tests/test_gil.py)"""
    from tests.gil_probe import overlap_fraction

    return overlap_fraction(lambda: fn(data), calls) > 0.05


def measure(chunks: list[bytes], repeat: int) -> dict:
    raw = sum(map(len, chunks))
    rows = {}
    for name, f in candidates().items():
        best = float("inf")
        for _ in range(repeat):
            t = time.process_time()
            out = [f(b) for b in chunks]
            best = min(best, time.process_time() - t)
        assert all(zlib.decompress(bytes(o), 31) == b for o, b in zip(out, chunks, strict=True))
        size = sum(map(len, out))
        rows[name] = {
            "ms_per_chunk": best / len(chunks) * 1e3,
            "ratio": raw / size,
            "bytes": size,
            "gil_released": releases_gil(f, max(chunks, key=len)),
        }
    base = rows[BASELINE]
    for r in rows.values():
        r["bytes_vs_default"] = r["bytes"] / base["bytes"] - 1
        r["ms_vs_default"] = r["ms_per_chunk"] - base["ms_per_chunk"]
    return {"chunks": len(chunks), "raw_kb_per_chunk": raw / len(chunks) / 1e3, "rows": rows}


def print_case(name: str, case: dict) -> None:
    print(
        f"\n## {name}: {case['chunks']} cseg chunks, {case['raw_kb_per_chunk']:.1f} KB each "
        "before gzip"
    )
    print("| implementation | ms per chunk (CPU) | ratio | bytes vs libdeflate 6 | GIL released |")
    print("|---|---|---|---|---|")
    for impl, r in case["rows"].items():
        print(
            f"| {impl} | {r['ms_per_chunk']:.3f} | {r['ratio']:.2f} | "
            f"{100 * r['bytes_vs_default']:+.1f} % | {'yes' if r['gil_released'] else 'NO'} |"
        )


def print_cost(case: dict, title: str) -> None:
    print(f"\n## mCNS-size job ({MCNS_CHUNKS / 1e6:.0f} M chunks), gzip priced with {title}")
    print("| implementation | gzip vCPU-hours | vs libdeflate 6 | stored TB | vs libdeflate 6 |")
    print("|---|---|---|---|---|")
    for impl, r in case["rows"].items():
        hours = r["ms_per_chunk"] / 1e3 * MCNS_CHUNKS / 3600
        dh = r["ms_vs_default"] / 1e3 * MCNS_CHUNKS / 3600
        tb = MCNS_STORED_TB * (1 + r["bytes_vs_default"])
        print(
            f"| {impl} | {hours:,.0f} | {dh:+,.0f} | {tb:.2f} | "
            f"{1000 * (tb - MCNS_STORED_TB):+,.0f} GB |"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--synthetic-chunks", type=int, default=512)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from bench.bench_s0 import make_synthetic_shard

    cases = {}
    if FIXTURE.exists():
        cases["real mCNS fixture shard (s1)"] = cseg_chunks(FIXTURE, 10**9)
    src = make_synthetic_shard(32768, 30)
    cases["generated s0-like (30 labels per chunk)"] = cseg_chunks(
        src / "s0" / "0_0_0.arrow", a.synthetic_chunks
    )
    results = {}
    for name, chunks in cases.items():
        results[name] = measure(chunks, a.repeat)
        print_case(name, results[name])
    first = next(iter(results))
    print_cost(results[first], f"the {first} figures")
    print(f"\n(load average {os.getloadavg()[0]:.2f} at the end)")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

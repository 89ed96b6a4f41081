"""gzip implementations on real compressed_segmentation chunks (the mCNS fixture shard).

    .venv/bin/python bench/bench_gzip.py

Every candidate must produce a gzip member that zlib decodes to the same bytes. zlib-ng and
isal are measured only if installed (`pip install zlib-ng isal`); they are not dependencies.
"""

from __future__ import annotations

import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARROW = REPO.parent / "shared/fixtures/mcns-s1-shard/30720_24576_28672.arrow"


def _zlib_like(mod, level):
    def f(b):
        c = mod.compressobj(level, 8, 31)
        return c.compress(b) + c.flush()

    return f


def _libdeflate(deflate, level):
    return lambda b: deflate.gzip_compress(b, level)


def candidates():
    import deflate

    out = {f"zlib {lvl}": _zlib_like(zlib, lvl) for lvl in (1, 3, 6, 9)}
    out.update({f"libdeflate {lvl}": _libdeflate(deflate, lvl) for lvl in (1, 4, 6, 9)})
    try:
        from zlib_ng import zlib_ng

        out.update({f"zlib-ng {lvl}": _zlib_like(zlib_ng, lvl) for lvl in (1, 3, 6)})
    except ImportError:
        pass
    try:
        from isal import isal_zlib

        out.update({f"isal {lvl}": _zlib_like(isal_zlib, lvl) for lvl in (1, 2, 3)})
    except ImportError:
        pass
    return out


def main() -> None:
    import os

    from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
    from dvid2ng.kernels import dvid_block_to_cseg

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    csegs = []
    with ExportFileReader(ARROW, None) as r:
        for rec in r:
            c, _ = dvid_block_to_cseg(decompress_block(rec, str(ARROW)), rec.labels, None)
            csegs.append(bytes(c))
    raw = sum(map(len, csegs))
    print(
        f"mCNS fixture: {len(csegs)} cseg chunks, {raw / len(csegs) / 1e3:.1f} KB per chunk before gzip"
    )
    for name, f in candidates().items():
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            out = [f(b) for b in csegs]
            best = min(best, time.perf_counter() - t)
        assert all(zlib.decompress(bytes(o), 31) == b for o, b in zip(out, csegs, strict=True))
        size = sum(map(len, out))
        print(f"{name:>14}: {best / len(csegs) * 1e3:6.3f} ms/chunk   ratio {raw / size:5.2f}")


if __name__ == "__main__":
    main()

"""How long does `dvid2ng verify` take over a whole export's listing, and how much memory?

Generates N tiny export files and their N converted shards at mCNS s0 geometry
(tests/many_shards.py: each shard holds K chunks in K minishards, so verify reads 1 + K
ranges per shard), then runs verify in a fresh process and reports wall time (after imports),
peak RSS, requests and bytes read. With --gcs the volume is uploaded to the GCS emulator
(fake-gcs-server behind the counting proxy, loopback only) and verified as gs://.

    .venv/bin/python bench/bench_verify.py [--shards 26000] [--chunks-per-shard 1]
        [--values N] [--gcs] [--window 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.many_shards import make_many_shards, run_measured  # noqa: E402


def upload(dest: Path, url: str) -> int:
    import tensorstore as ts

    from dvid2ng.worker.output import kvstore_spec

    src = ts.KvStore.open({"driver": "file", "path": str(dest) + "/"}).result()
    dst = ts.KvStore.open(kvstore_spec(url)).result()
    keys = src.list().result()
    pending = []
    for k in keys:
        pending.append(dst.write(k, src.read(k).result().value))
        if len(pending) >= 64:
            for f in pending:
                f.result()
            pending.clear()
    for f in pending:
        f.result()
    return len(keys)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shards", type=int, default=26_000)
    p.add_argument("--chunks-per-shard", type=int, default=1)
    p.add_argument("--values", type=int, default=None)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--gcs", action="store_true", help="verify gs:// on the GCS emulator")
    p.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = p.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, root: Path) -> int:
    import time

    t = time.perf_counter()
    source, dest, _ = make_many_shards(root, args.shards, chunks_per_shard=args.chunks_per_shard)
    print(
        f"generated {args.shards:,} files + shards in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    env = dict(os.environ)
    emu = None
    target = str(dest)
    try:
        if args.gcs:
            from tests.gcs_emulator import GcsEmulator

            emu = GcsEmulator(root)
            emu.create_bucket("bench")
            env.update(emu.env())
            os.environ.update(emu.env())
            t = time.perf_counter()
            n = upload(dest, "gs://bench/volume")
            print(f"uploaded {n:,} objects in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            target = "gs://bench/volume"
            emu.proxy.reads.clear()
        report = root / "report.json"
        argv = ["verify", str(source), target, "--no-progress", "--json-report", str(report)]
        argv += ["--window", str(args.window)]
        if args.values:
            argv += ["--values", str(args.values)]
        got = run_measured(argv, root / "measure.json", env=env)
        if got["code"] != 0:
            print(got["stderr"][-3000:], file=sys.stderr)
            return 1
        scale = json.loads(report.read_text())["scales"][0]
        downloads = len(emu.proxy.reads) if emu else None
    finally:
        if emu:
            emu.stop()
    rows = [
        ("store", "gs:// (emulator)" if args.gcs else "local files"),
        ("shards", f"{args.shards:,}"),
        ("chunks per shard", args.chunks_per_shard),
        ("--values", args.values or "-"),
        ("wall time (s, after imports)", f"{got['seconds']:.1f}"),
        ("shards/s", f"{args.shards / got['seconds']:,.0f}"),
        ("peak RSS (MiB)", f"{got['peak_rss'] / 2**20:,.0f}"),
        ("range reads", f"{scale['requests']:,}"),
        ("bytes read", f"{scale['bytes_read']:,}"),
    ]
    if downloads is not None:
        rows.append(("downloads seen by the proxy", f"{downloads:,}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

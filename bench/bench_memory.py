"""Peak memory of a worker converting one shard, and the model the dispatcher's tiers use.

    .venv/bin/python bench/bench_memory.py                       # 1K, 8K and 32K chunks
    .venv/bin/python bench/bench_memory.py --chunks 1024 8192 --threads 1 2

Each shard is converted in a fresh process exactly as the worker does it (transcode_shard into
a local destination, one TensorStore transaction, one commit), with the fleet's queue and state
clients imported (google-cloud-pubsub, -firestore, -storage: ~40 MiB that an embedded worker
does not load; `--embedded` leaves them out). Peak RSS is the process's VmHWM, start to exit.

The model (dispatcher.plan.estimate_memory_bytes):

    peak ~= WORKER_BASE_BYTES + MEMORY_PER_GZIP_BYTE x gzipped shard
    gzipped shard ~= GZIP_PER_PAYLOAD_BYTE x (arrow bytes - IPC_BYTES_PER_RECORD x chunks)

(the gzipped chunks are held in the transaction until the commit, which then builds the shard
file; the Arrow file's per-record framing carries no voxels). The table shows the fit of
base + factor x gzipped bytes to the measured peaks and the dispatcher's estimate against each
peak; the estimate must be within 20 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out"
MIB = 2**20


def convert_in_this_process(source: Path, spec_path: Path, scale: int, dest: Path,
                            threads: int, fleet: bool) -> dict:  # fmt: skip
    """Convert the one shard of `source` at `scale`; the figures as a dict (used by the test)."""
    if fleet:  # what a fleet worker has loaded
        import importlib

        for name in ("google.cloud.pubsub_v1", "google.cloud.firestore", "google.cloud.storage"):
            importlib.import_module(name)
    from dvid2ng.dispatcher.plan import estimate_memory_bytes, plan_transcode
    from dvid2ng.kernels import warm_up_transcode
    from dvid2ng.schemas.spec import VolumeSpec
    from dvid2ng.worker.memory import peak_rss_bytes
    from dvid2ng.worker.output import ScaleStore, io_context, write_info
    from dvid2ng.worker.transcode import transcode_shard

    warm_up_transcode()
    spec = VolumeSpec.load(spec_path)
    (task,) = plan_transcode(source, str(dest), spec, scales=[scale]).tasks
    write_info(str(dest), spec.info())
    store = ScaleStore(str(dest), spec.scales[scale], io_context())
    t = time.perf_counter()
    out = transcode_shard(task, store, threads=threads)
    seconds = time.perf_counter() - t
    return {
        "chunks": out.chunks_read,
        "arrow_bytes": task.sources[0].size,
        "gzip_bytes": out.encoded_bytes,
        "shard_bytes": out.bytes_written,
        "peak_rss": peak_rss_bytes(),
        "estimate": estimate_memory_bytes(scale, task.chunks_expected, task.sources[0].size),
        "task_estimate": task.memory_bytes,
        "tier": task.tier,
        "seconds": seconds,
        "threads": threads,
    }


def run_child(
    source: Path,
    spec: Path,
    scale: int,
    threads: int,
    fleet: bool,
    dest: Path = OUT / "dest-memory",
) -> dict:
    """Convert in a fresh process; its figures (peak RSS = the child's own VmHWM)."""
    shutil.rmtree(dest, ignore_errors=True)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from bench.bench_memory import convert_in_this_process as c; "
        "print(json.dumps(c(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), "
        "Path(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == '1')))"
    )
    args = [str(REPO), str(source), str(spec), str(scale), str(dest), str(threads)]
    out = subprocess.run(
        [sys.executable, "-c", code, *args, "1" if fleet else "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    shutil.rmtree(dest, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(rows: list[dict]) -> tuple[float, float]:
    """Least squares peak = base + factor x gzip bytes."""
    n = len(rows)
    xs = [r["gzip_bytes"] for r in rows]
    ys = [r["peak_rss"] for r in rows]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    factor = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - factor * mx, factor


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--chunks", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--labels", type=int, default=30)
    p.add_argument("--embedded", action="store_true", help="without the fleet's client libraries")
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    from bench.bench_s0 import FIXTURE, fixture_source, make_synthetic_shard

    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    if FIXTURE.is_dir():
        cases.append(
            ("mCNS fixture (s1, real)", fixture_source(),
             FIXTURE / "volume-specs/mcns-export-specs.json", 1)
        )  # fmt: skip
    for n in a.chunks:
        src = make_synthetic_shard(n, a.labels)
        cases.append((f"s0-like {n:,} chunks", src, src / "spec.json", 0))
    load = os.getloadavg()[0]
    rows = []
    print(
        "| shard | threads | chunks | Arrow MiB | gzipped MiB | shard file MiB | peak RSS MiB "
        "| dispatcher estimate MiB | estimate vs peak | tier |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, src, spec, scale in cases:
        for threads in a.threads:
            runs = [run_child(src, spec, scale, threads, not a.embedded) for _ in range(a.repeat)]
            r = max(runs, key=lambda r: r["peak_rss"])
            r["name"] = name
            rows.append(r)
            err = r["task_estimate"] / r["peak_rss"] - 1
            print(
                f"| {name} | {threads} | {r['chunks']:,} | {r['arrow_bytes'] / MIB:,.1f} | "
                f"{r['gzip_bytes'] / MIB:,.1f} | {r['shard_bytes'] / MIB:,.1f} | "
                f"{r['peak_rss'] / MIB:,.0f} | {r['task_estimate'] / MIB:,.0f} | "
                f"{100 * err:+.0f} % | {r['tier']} |",
                flush=True,
            )
    base, factor = fit(rows)
    print(
        f"\nfit over these runs: peak = {base / MIB:.0f} MiB + {factor:.2f} x gzipped shard  "
        f"(load average {load:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )
    worst = max(abs(r["task_estimate"] / r["peak_rss"] - 1) for r in rows)
    print(f"largest estimate error: {100 * worst:.0f} % (target: within 20 %)")
    (OUT / "memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

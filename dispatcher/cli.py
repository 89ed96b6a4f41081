"""`dvid2ng`: convert DVID export-shards output into a neuroglancer precomputed volume."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
Convert a DVID `export-shards` export into a sharded neuroglancer precomputed segmentation
volume (compressed_segmentation, gzip), one output shard per work item.

On one machine the work runs through an embedded SQLite queue and state store; the same worker
runs in the cloud fleet behind Pub/Sub and Firestore.

exit codes: 0 all shards done (or empty), 1 some shard failed (see `dvid2ng status DEST`),
            2 bad arguments, spec or export (nothing started), 130 interrupted (re-run to resume)
"""

RUN_EPILOG = """\
examples:
  dvid2ng run /data/export /data/volume --spec mcns-specs.json
  dvid2ng run /data/export /data/volume --spec specs.json --scales 0 --supervoxels --workers 8

SOURCE holds s0/, s1/, ... each with X_Y_Z.arrow (+ X_Y_Z.csv) as written by DVID.
SPEC is the neuroglancer volume spec given to DVID export-shards; DEST/info is written from it
(compressed_segmentation, [8,8,8] blocks, gzip) and an existing different info is never overwritten.
Re-running the same command resumes: finished shards are skipped, failed ones retried.
Run state lives in DEST/.dvid2ng/ (state.sqlite, logs/worker-N.jsonl).
"""


def _scales(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales wants comma-separated integers like 0,1,2, got {text!r}"
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"--scales wants non-negative integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dvid2ng")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dvid2ng",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"dvid2ng {_version()}")
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="console log level (worker logs always go to DEST/.dvid2ng/logs)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="convert an export on this machine",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "source", type=Path, metavar="SOURCE", help="DVID export folder (s0/, s1/, ...)"
    )
    run.add_argument(
        "dest", metavar="DEST", help="output volume folder (or file://, gs://, memory:// URL)"
    )
    run.add_argument(
        "--spec",
        required=True,
        type=Path,
        metavar="SPEC.json",
        help="neuroglancer volume spec given to DVID",
    )
    run.add_argument(
        "--scales",
        type=_scales,
        default=None,
        metavar="0,1,2",
        help="scales to convert (default: every sN/ present in SOURCE)",
    )
    run.add_argument(
        "--supervoxels",
        action="store_true",
        help="keep raw supervoxel ids (default: agglomerated body ids from each record's labels)",
    )
    run.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="worker processes (default: CPU count)",
    )
    run.add_argument(
        "--gzip-level",
        type=int,
        default=6,
        choices=range(1, 13),
        metavar="1-12",
        help="libdeflate level of the gzipped chunk data (default 6; 1 is ~2x faster, ~15%% larger)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    from dvid2ng.dispatcher.pyramid_run import add_arguments as add_pyramid_arguments

    add_pyramid_arguments(run)  # --downres, --downsample-method, --only-missing

    demo = sub.add_parser(
        "demo", help="build a small synthetic DVID export, convert it, say how to view it"
    )
    demo.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=Path("dvid2ng-demo"),
        metavar="DIR",
        help="working folder (default ./dvid2ng-demo)",
    )
    demo.add_argument("--workers", type=_positive, default=2, metavar="N")

    st = sub.add_parser("status", help="shard counts, progress and failures of a conversion")
    st.add_argument("dest", metavar="DEST")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dvid2ng.dispatcher.logs import configure_logging

    configure_logging(level=args.log_level)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "demo":
        from dvid2ng.dispatcher.demo import run_demo

        return run_demo(args.dir, workers=args.workers)
    if args.command == "status":
        return cmd_status(args)
    return EXIT_USAGE


def cmd_run(args: argparse.Namespace) -> int:
    import os

    if args.downres is not None:
        from dvid2ng.dispatcher.pyramid_run import cmd_run_pyramid

        return cmd_run_pyramid(args)
    if args.only_missing:
        print("dvid2ng: error: --only-missing applies to --downres scales", file=sys.stderr)
        return EXIT_USAGE

    from dvid2ng.dispatcher.embedded import run_embedded
    from dvid2ng.dispatcher.plan import PlanError, check_spec, plan_transcode
    from dvid2ng.dispatcher.progress import RunProgress
    from dvid2ng.worker.output import OutputError

    try:
        spec = check_spec(args.spec)
        plan = plan_transcode(
            args.source,
            args.dest,
            spec,
            scales=args.scales,
            label_mode="supervoxels" if args.supervoxels else "labels",
        )
    except PlanError as e:
        print(f"dvid2ng: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    workers = args.workers or os.cpu_count() or 1
    print(
        f"dvid2ng: {len(plan.tasks)} shards, {plan.total_chunks:,} chunks in scales "
        f"{','.join(map(str, plan.scales))} -> {args.dest} ({workers} workers)",
        file=sys.stderr,
    )
    progress = RunProgress(len(plan.tasks), plan.total_chunks, enabled=not args.no_progress)
    try:
        summary = run_embedded(plan, workers=workers, gzip_level=args.gzip_level, progress=progress)
    except (PlanError, OutputError) as e:
        print(f"dvid2ng: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.close()
    print_summary(summary, workers)
    return summary.exit_code


def print_summary(s, workers: int) -> None:
    from dvid2ng.backends.base import ShardStatus

    c = s.counts
    rate = s.chunks / s.wall_seconds if s.wall_seconds else 0.0
    out = sys.stderr
    print(
        f"\ndvid2ng: run {s.run_id} {'interrupted' if s.interrupted else 'finished'} in {s.wall_seconds:.1f} s",
        file=out,
    )
    print(
        f"  shards: {c[ShardStatus.DONE]} done, {c[ShardStatus.EMPTY]} empty, {c[ShardStatus.FAILED]} failed, "
        f"{c[ShardStatus.QUEUED] + c[ShardStatus.RUNNING]} unfinished"
        + (
            f" ({s.skipped_finished} already finished before this run)"
            if s.skipped_finished
            else ""
        ),
        file=out,
    )
    print(
        f"  chunks: {s.chunks:,} converted, {s.chunks_written:,} stored; {s.bytes_written / 1e6:,.1f} MB written",
        file=out,
    )
    print(f"  throughput: {rate:,.0f} chunks/s with {workers} workers", file=out)
    for r in s.failed:
        err = r.error or {}
        where = ": ".join(
            str(p)
            for p in (err.get("file"), f"chunk {tuple(err['chunk'])}" if err.get("chunk") else None)
            if p
        )
        print(f"  FAILED {r.key}: {where}: {err.get('cause', '?')}", file=out)
    if not s.ok:
        print(f"  state: {s.state_dir} — re-run the same command to resume / retry", file=out)


def cmd_status(args: argparse.Namespace) -> int:
    from dvid2ng.backends import open_embedded
    from dvid2ng.backends.base import ShardStatus
    from dvid2ng.dispatcher.embedded import default_state_dir

    state_dir = default_state_dir(args.dest)
    marker = state_dir / "run.json"
    if not marker.exists():
        print(f"dvid2ng: error: no conversion state in {state_dir}", file=sys.stderr)
        return EXIT_USAGE
    run_id = json.loads(marker.read_text())["run_id"]
    _, state = open_embedded(state_dir)
    records = state.list(run_id)
    counts = state.counts(run_id)
    failed = [r for r in records if r.status == ShardStatus.FAILED]
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "counts": {k.value: v for k, v in counts.items()},
                    "chunks": sum(r.chunks_done for r in records),
                    "bytes_written": sum(r.bytes_written for r in records),
                    "failed": [{"key": r.key, "error": r.error} for r in failed],
                },
                indent=2,
            )
        )
    else:
        print(f"run {run_id}: " + ", ".join(f"{v} {k.value}" for k, v in counts.items()))
        for r in failed:
            print(f"  FAILED {r.key}: {(r.error or {}).get('cause')}")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""`dvid2ng`: convert DVID export-shards output into a neuroglancer precomputed volume."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
Convert a DVID `export-shards` export into a sharded neuroglancer precomputed segmentation
volume (compressed_segmentation, gzip), one output shard per work item.

On one machine the work runs through an embedded SQLite queue and state store; the same worker
runs in the cloud fleet behind Pub/Sub and Firestore.

exit codes: 0 all shards done (or empty), 1 some shard failed or unfinished (see
            `dvid2ng status DEST`), 2 bad arguments, spec, export or destination (nothing
            started), 130 / 143 interrupted by SIGINT / SIGTERM (re-run to resume)
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


class _VersionAction(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs ~0.1 s at start-up)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"dvid2ng {_version()}")
        parser.exit()


def build_parser(only_worker: bool = False) -> argparse.ArgumentParser:
    """The whole CLI; with only_worker, the top-level options and `worker` alone: what a
    worker process parses, ~15 ms of its start-up sooner (the other subcommands import their
    modules to describe themselves)."""
    p = argparse.ArgumentParser(
        prog="dvid2ng",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="console log level (worker logs always go to DEST/.dvid2ng/logs)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if only_worker:
        from dvid2ng.dispatcher.fleet import add_worker_parser

        add_worker_parser(sub)
        return p

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
        "dest", metavar="DEST", help="output volume folder (or a file:// or gs:// URL)"
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
        help="worker processes, one shard each at a time (default: the CPUs this process may "
        "use, at most one per shard)",
    )
    run.add_argument(
        "--threads",
        type=_positive,
        default=None,
        metavar="N",
        help="converter threads per worker (default: $DVID2NG_THREADS, else CPUs / workers, "
        "so that workers x threads ~= CPUs)",
    )
    run.add_argument(
        "--gzip-level",
        type=int,
        default=6,
        choices=range(1, 13),
        metavar="1-12",
        help="libdeflate level of the gzipped chunk data (default 6; 1 is ~2x faster, ~15%% larger)",
    )
    run.add_argument(
        "--z-compress",
        type=_z_compress,
        default=0,
        metavar="N",
        help="Z-doubled source: s0 keeps every (N+1)-th Z slice; SPEC is the native-Z destination "
        "spec, its s0 chunk 64x64x64/(N+1) (N in 0,1,3,7,15,31,63)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    from dvid2ng.dispatcher.pyramid_run import add_arguments as add_pyramid_arguments

    add_pyramid_arguments(run)  # --downres, --downsample-method, --only-missing

    demo = sub.add_parser(
        "demo", help="build a small synthetic DVID export, convert it, print how to view it"
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
    demo.add_argument("--view", action="store_true", help="then serve it (dvid2ng view)")
    demo.add_argument("--open", action="store_true", help="--view and open a web browser")

    st = sub.add_parser(
        "status",
        help="shard counts, progress and failures of a conversion",
        description="Where a conversion stands: shards per scale, tier and status, chunks done, "
        "throughput and ETA, shards in flight, failures. Exit code 0 when every shard is done "
        "or empty, 1 while any is failed or unfinished, 2 when there is no such state.",
    )
    st.add_argument(
        "dest",
        metavar="DEST",
        nargs="?",
        help="the volume given to `dvid2ng run` (its state is in DEST/.dvid2ng) or to "
        "`dvid2ng publish` (with --state)",
    )
    st.add_argument(
        "--state",
        metavar="URL",
        default=None,
        help="a fleet's state store: firestore://PROJECT[/DATABASE] or sqlite:///FOLDER "
        "(default: $DVID2NG_STATE when DEST has no local state)",
    )
    st.add_argument("--run", metavar="ID", help="run id (default: DEST's run, else the newest run)")
    st.add_argument("--watch", action="store_true", help="refresh every 5 s until finished")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    from dvid2ng.dispatcher import fleet, view_cli
    from dvid2ng.dispatcher.check_cli import COMMANDS

    fleet.add_parsers(sub)
    view_cli.add_parser(sub)
    for add_parser, _ in COMMANDS.values():  # validate-dvid, verify
        add_parser(sub)
    return p


def _z_compress(text: str) -> int:
    from dvid2ng.dispatcher.check_cli import z_compress_arg

    return z_compress_arg(text)


class RawHelp(argparse.RawDescriptionHelpFormatter):
    """Help text keeps its line breaks (examples) and still wraps descriptions sensibly."""


def main(argv: list[str] | None = None) -> int:
    program = argv is None  # the `dvid2ng` program itself, not a caller of main()
    given = sys.argv[1:] if program else argv
    command = _command_of(given)
    worker = command == "worker" and not {"-h", "--help"} & set(given)  # a worker starting up
    if worker:
        # no garbage collection during start-up (worker/startup_gc.py), and the worker's Numba
        # kernels start loading before anything else (kernels/cache_load.py)
        from dvid2ng.worker import startup_gc
        from dvid2ng.worker.warm import warm_in_background

        if program:  # a caller of main() keeps its own collector
            startup_gc.pause()
        warm_in_background()
    try:
        code = _main(argv, only_worker=worker)
    except BrokenPipeError:  # `dvid2ng status --json | head`: the reader left; not an error
        import os

        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if program and command in ("worker", "run"):
        # done with its queue and state: skip the interpreter's teardown of Numba and
        # TensorStore (0.2-0.4 s, worker/exit.py)
        from dvid2ng.worker.exit import exit_now

        exit_now(code)
    return code


def _command_of(args: list[str]) -> str | None:
    """The subcommand of a command line before argparse sees it: the first word that is not
    an option or the value of --log-level (the only top-level option that takes one)."""
    words = iter(args)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _main(argv: list[str] | None, only_worker: bool) -> int:
    args = build_parser(only_worker=only_worker).parse_args(argv)
    if args.command == "run":  # its worker processes start first, then logging (structlog)
        return cmd_run(args)
    _configure_logging(args)
    if args.command == "demo":
        from dvid2ng.dispatcher.demo import run_demo

        return run_demo(
            args.dir, workers=args.workers, view=args.view or args.open, open_browser=args.open
        )
    if args.command == "status":
        return cmd_status(args)
    if args.command == "view":
        from dvid2ng.dispatcher import view

        return view.run(args)
    if args.command in ("queues", "publish", "worker", "errors", "dlq"):
        from dvid2ng.dispatcher.fleet import run_command

        return run_command(args)
    from dvid2ng.dispatcher.check_cli import COMMANDS

    if args.command in COMMANDS:
        return COMMANDS[args.command][1](args)
    return EXIT_USAGE


def _configure_logging(args: argparse.Namespace) -> None:
    from dvid2ng.dispatcher.logs import configure_logging

    configure_logging(level=args.log_level)


def cmd_run(args: argparse.Namespace) -> int:
    if args.downres is not None:
        _configure_logging(args)
        from dvid2ng.dispatcher.pyramid_run import cmd_run_pyramid

        return cmd_run_pyramid(args)
    if args.only_missing:
        print("dvid2ng: error: --only-missing applies to --downres scales", file=sys.stderr)
        return EXIT_USAGE
    return _run_s0(args)


def _run_s0(args: argparse.Namespace) -> int:
    from dvid2ng.dispatcher.early_workers import EarlyWorkers
    from dvid2ng.worker.cpus import available_cpus, threads_from_env

    try:
        cpus, env_threads = available_cpus(), threads_from_env()
    except ValueError as e:
        print(f"dvid2ng: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    # Start the workers now: their start-up runs while this process plans (see early_workers).
    threads_hint = args.threads or env_threads
    count = args.workers or max(1, cpus // threads_hint if threads_hint else cpus)
    files = _local_export_files(args.source, args.scales)
    if files is not None and not args.workers:  # no more early workers than shards: a spare
        count = max(1, min(count, files))  # one would only take a core from the planner
    early = EarlyWorkers(count)
    _configure_logging(args)  # after the workers' start: structlog's import is ~0.1 s
    try:
        return _run_planned(args, early, cpus)
    finally:
        early.close()


def _local_export_files(source: str | Path, scales: list[int] | None) -> int | None:
    """How many `.arrow` files a local export has in the chosen scales (one shard each), from
    directory listings only (milliseconds); None for a remote source or an unreadable one (the
    planner then reports the problem)."""
    text = str(source)
    if "://" in text and not text.startswith("file://"):
        return None
    root = Path(text.removeprefix("file://"))
    try:
        folders = (
            [root / f"s{s}" for s in scales]
            if scales is not None
            else [p for p in root.iterdir() if p.is_dir() and p.name[:1] == "s"]
        )
        return sum(
            1 for f in folders if f.is_dir() for e in os.scandir(f) if e.name.endswith(".arrow")
        )
    except OSError:
        return None


def _run_planned(args: argparse.Namespace, early, cpus: int) -> int:
    from dvid2ng.dispatcher.embedded import embedded_parallelism, prepare_state_dir, run_embedded
    from dvid2ng.dispatcher.plan import PlanError, check_spec, plan_transcode
    from dvid2ng.dispatcher.progress import RunProgress

    try:
        spec = check_spec(args.spec)
        plan = plan_transcode(
            args.source,
            args.dest,
            spec,
            scales=args.scales,
            label_mode="supervoxels" if args.supervoxels else "labels",
            z_compress=args.z_compress,
        )
        state_dir = prepare_state_dir(plan.dest)
    except PlanError as e:
        print(f"dvid2ng: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    workers, threads = embedded_parallelism(args.workers, args.threads, len(plan.tasks), cpus)
    for note in plan.notes:
        print(f"dvid2ng: note: {note}", file=sys.stderr)
    print(
        f"dvid2ng: {len(plan.tasks)} shards, {plan.total_chunks:,} chunks in scales "
        f"{','.join(map(str, plan.scales))} -> {args.dest} ({workers} workers x {threads} "
        f"threads)",
        file=sys.stderr,
    )
    progress = RunProgress(len(plan.tasks), plan.total_chunks, enabled=not args.no_progress)
    try:
        summary = run_embedded(
            plan,
            workers=workers,
            threads=threads,
            state_dir=state_dir,
            gzip_level=args.gzip_level,
            progress=progress,
            early=early,
        )
    except PlanError as e:
        print(f"dvid2ng: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.close()
    print_summary(summary, workers)
    return summary.exit_code


def print_summary(s, workers: int) -> None:
    from dvid2ng.backends.base import ShardStatus
    from dvid2ng.dispatcher.status import describe_error

    c = s.counts
    rate = s.chunks / s.wall_seconds if s.wall_seconds else 0.0
    out = sys.stderr
    how = "finished"
    if s.interrupted:
        import signal

        how = f"interrupted ({signal.Signals(s.interrupted_by).name})"
    print(f"\ndvid2ng: run {s.run_id} {how} in {s.wall_seconds:.1f} s", file=out)
    print(
        f"  shards: {c[ShardStatus.DONE]} done, {c[ShardStatus.EMPTY]} empty, "
        f"{c[ShardStatus.FAILED]} failed, {c[ShardStatus.QUEUED] + c[ShardStatus.RUNNING]} unfinished"
        + (f" ({s.skipped_finished} finished before this run)" if s.skipped_finished else ""),
        file=out,
    )
    for line in s.reconverted:
        print(f"  converted again: {line}", file=out)
    print(
        f"  chunks: {s.chunks:,} converted by this run; {s.chunks_written:,} stored in all, "
        f"{s.bytes_written / 1e6:,.1f} MB",
        file=out,
    )
    print(f"  throughput: {rate:,.0f} chunks/s with {workers} workers", file=out)
    for r in s.failed:
        print(f"  FAILED {r.key}: {describe_error(r.error)}", file=out)
    for note in s.notes:
        print(f"  note: {note}", file=out)
    if not s.ok:
        print(f"  state: {s.state_dir} — re-run the same command to resume / retry", file=out)


def cmd_status(args: argparse.Namespace) -> int:
    from dvid2ng.dispatcher.embedded import EMBEDDED_TIMING, default_state_dir, read_run_id
    from dvid2ng.dispatcher.embedded import open_state as open_embedded_state
    from dvid2ng.dispatcher.fleet import UsageError, _env, _state, pick_run
    from dvid2ng.dispatcher.plan import PlanError
    from dvid2ng.dispatcher.status import show
    from dvid2ng.worker.policy import CLOUD_TIMING

    try:
        local = None
        if args.dest and not args.state:
            local = default_state_dir(args.dest)
            if not (local / "run.json").exists():
                if not _env("state"):
                    raise PlanError(
                        f"no conversion state in {local} (was DEST converted with dvid2ng run? "
                        "for a fleet run give --state URL)"
                    )
                local = None
        if local is not None:
            state, stale = open_embedded_state(local), EMBEDDED_TIMING.stale_after_s
            run_id = args.run or read_run_id(local)
            if state.get_run(run_id) is None:
                raise PlanError(f"no run {run_id} in {local}")
        else:
            state, stale = _state(args), CLOUD_TIMING.stale_after_s
            run_id = pick_run(state, args.run, args.dest)
    except (PlanError, UsageError) as e:
        print(f"dvid2ng status: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return show(state, run_id, as_json=args.json, watch=args.watch, stale_after_s=stale)


if __name__ == "__main__":
    sys.exit(main())

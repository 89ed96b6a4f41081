"""`dvid2ng run ... --downres 1,2,3`: build scales from the scale above, one after another.

Scales run in order. For each: plan from the parent's shard files in DEST, run the tasks on the
embedded default (`run_embedded`, the same queue, state, tiers and workers as the export), then
check that every expected output shard is present or recorded empty; the run stops at the
first scale that fails and ends with a per-scale table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

HELP = {
    "downres": (
        "scales to build by 2x2x2 downsampling of the scale above in DEST, in order, e.g. "
        "1,2,3 or 1-9 (with --scales, after those are exported; without it, nothing is exported)"
    ),
    "method": (
        "mode (default): TensorStore's rule, the most frequent value, 0 votes, ties to the "
        "smallest; dvid: DVID's rule, 0 does not vote unless all voxels are 0"
    ),
    "only_missing": (
        "--downres makes work only for output shards whose file does not exist yet "
        "(rebuilds deleted or never-built shards; existing ones are left as they are)"
    ),
}

EPILOG = """\
pyramid examples:
  dvid2ng run EXPORT VOL --spec spec.json --scales 0 --downres 1-9
  dvid2ng run EXPORT VOL --spec spec.json --downres 3 --only-missing   # rebuild what is missing of s3
"""


def add_arguments(run: argparse.ArgumentParser) -> None:
    from dvid2ng.schemas.task import DOWNSAMPLE_METHODS

    def downres(text: str) -> list[int]:
        from dvid2ng.dispatcher.pyramid import parse_downres  # numpy, TensorStore: not for --help

        try:
            return parse_downres(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    run.add_argument(
        "--downres", type=downres, default=None, metavar="1,2,3|1-9", help=HELP["downres"]
    )
    run.add_argument(
        "--downsample-method", choices=DOWNSAMPLE_METHODS, default="mode", help=HELP["method"]
    )
    run.add_argument("--only-missing", action="store_true", help=HELP["only_missing"])
    run.epilog = (run.epilog or "") + "\n" + EPILOG


@dataclass
class ScaleRow:
    scale: str
    kind: str
    shards: int = 0
    done: int = 0
    empty: int = 0
    failed: int = 0
    unfinished: int = 0
    chunks: int = 0
    stored: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0


def cmd_run_pyramid(args: argparse.Namespace) -> int:
    """`dvid2ng run` with --downres (and optionally --scales to export first)."""
    from dvid2ng.dispatcher.plan import Plan, PlanError, check_spec, normalized_dest, run_id_for
    from dvid2ng.dispatcher.pyramid import check_downres_scales
    from dvid2ng.worker.output import OutputError

    label_mode = "supervoxels" if args.supervoxels else "labels"
    workers = args.workers or os.cpu_count() or 1
    try:
        spec = check_spec(args.spec)
        if args.scales is not None and set(args.scales) & set(args.downres):
            both = sorted(set(args.scales) & set(args.downres))
            raise PlanError(
                f"scale(s) {both} are in both --scales (exported) and --downres (downsampled)"
            )
        check_downres_scales(spec, args.downres)
    except PlanError as e:
        print(f"dvid2ng: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    rows: list[ScaleRow] = []
    built: set[int] = set()
    code = EXIT_OK
    try:
        if args.scales is not None:
            code, plan, export_rows = _export(args, spec, label_mode, workers)
            rows += export_rows
            if code != EXIT_OK or plan is None:
                return code
            built.update(plan.scales)
        else:
            dest = normalized_dest(args.dest)
            z = getattr(args, "z_compress", 0)  # the run id of the export this pyramid extends
            plan = Plan(
                run_id_for(args.source, dest, spec, label_mode, z), args.source, dest, spec,
                label_mode, [], z_compress=z,
            )  # fmt: skip
        for s in args.downres:
            code, row = _downres_scale(args, plan, s, built, workers)
            if row is not None:
                rows.append(row)
            if code != EXIT_OK:
                break
            built.add(s)
    except (PlanError, OutputError) as e:
        print(f"dvid2ng: error: {e}", file=sys.stderr)
        code = EXIT_USAGE
    finally:
        print_table(rows)
    return code


def _export(args, spec, label_mode, workers):
    """Export --scales from SOURCE first (the ordinary run)."""
    from dvid2ng.dispatcher.cli import print_summary
    from dvid2ng.dispatcher.embedded import run_embedded
    from dvid2ng.dispatcher.plan import PlanError, plan_transcode
    from dvid2ng.dispatcher.progress import RunProgress

    try:
        plan = plan_transcode(
            args.source,
            args.dest,
            spec,
            scales=args.scales,
            label_mode=label_mode,
            z_compress=getattr(args, "z_compress", 0),
        )
    except PlanError as e:
        print(f"dvid2ng: error: {e}", file=sys.stderr)
        return EXIT_USAGE, None, []
    print(
        f"dvid2ng: export of scales {','.join(map(str, plan.scales))}: {len(plan.tasks)} shards, "
        f"{plan.total_chunks:,} chunks -> {args.dest} ({workers} workers)",
        file=sys.stderr,
    )
    progress = RunProgress(len(plan.tasks), plan.total_chunks, enabled=not args.no_progress)
    try:
        summary = run_embedded(plan, workers=workers, gzip_level=args.gzip_level, progress=progress)
    finally:
        progress.close()
    print_summary(summary, workers)
    row = _row(summary.state_dir, plan, "+".join(f"s{s}" for s in plan.scales), "export", summary)
    return summary.exit_code, plan, [row]


def _downres_scale(args, plan, s: int, built: set[int], workers: int):
    from dvid2ng.dispatcher.embedded import default_state_dir, run_embedded
    from dvid2ng.dispatcher.plan import PlanError
    from dvid2ng.dispatcher.progress import RunProgress
    from dvid2ng.dispatcher.pyramid import plan_downsample_scale, scale_plan_as_plan

    started = time.monotonic()
    sp = plan_downsample_scale(
        plan, s, method=args.downsample_method, only_missing=args.only_missing
    )
    parent_key = plan.spec.scales[s - 1].key
    if sp.parent_shards == 0:
        if s - 1 in built:  # the parent was built in this run and is all background
            print(
                f"dvid2ng: s{s}: s{s - 1} is all background, nothing to downsample", file=sys.stderr
            )
            return EXIT_OK, ScaleRow(f"s{s}", "downsample", note="parent empty")
        raise PlanError(
            f"cannot build s{s}: {plan.dest}/{parent_key}/ holds no shard files (build s{s - 1} "
            f"first: --scales {s - 1} to export it, or --downres {s - 1})"
        )
    state_dir = default_state_dir(plan.dest)
    _check_method(state_dir, s, args.downsample_method)
    skipped = f", {sp.existing_skipped} already present" if args.only_missing else ""
    print(
        f"dvid2ng: s{s} from s{s - 1} ({args.downsample_method}): {len(sp.tasks)} shards, "
        f"{sp.chunks:,} chunks, fed by {sp.parent_shards} parent shards{skipped} ({workers} workers)",
        file=sys.stderr,
    )
    if not sp.tasks:
        return EXIT_OK, ScaleRow(f"s{s}", "downsample", note="nothing missing")
    # A shard recorded done whose file is gone is rebuilt by run_embedded itself: it checks
    # every finished shard's file before it believes the state.
    sub = scale_plan_as_plan(plan, sp)
    progress = RunProgress(len(sub.tasks), sub.total_chunks, enabled=not args.no_progress)

    def this_scale(rows):  # the state holds the whole run; show this scale's shards
        progress([r for r in rows if r.scale == s])

    try:
        summary = run_embedded(
            sub, workers=workers, gzip_level=args.gzip_level, progress=this_scale
        )
    finally:
        progress.close()
    _record_method(state_dir, s, args.downsample_method)
    for line in summary.reconverted:
        print(f"  s{s}: built again: {line}", file=sys.stderr)
    row = _row(summary.state_dir, sub, f"s{s}", "downsample", summary)
    row.seconds = time.monotonic() - started
    if summary.interrupted:
        print("dvid2ng: interrupted; re-run the same command to resume", file=sys.stderr)
        return summary.exit_code, row
    problems = check_scale(summary.state_dir, sub)
    for p in problems[:20]:
        print(f"  s{s}: {p}", file=sys.stderr)
    if len(problems) > 20:
        print(f"  s{s}: ... and {len(problems) - 20} more", file=sys.stderr)
    if problems:
        print(
            f"dvid2ng: s{s} is incomplete ({len(problems)} shards); stopping before the next "
            f"scale. `dvid2ng status {plan.dest}` shows the causes; re-run to retry"
            + (
                ", or add --only-missing to rebuild shards whose file is gone"
                if not args.only_missing
                else ""
            ),
            file=sys.stderr,
        )
        return EXIT_FAILED, row
    return EXIT_OK, row


def check_scale(state_dir: Path, plan) -> list[str]:
    """Every planned output shard is done with its file present, or recorded empty."""
    from dvid2ng.backends import open_embedded
    from dvid2ng.backends.base import ShardStatus
    from dvid2ng.worker.output import ScaleStore, io_context

    _, state = open_embedded(state_dir)
    problems = []
    stores: dict[int, ScaleStore] = {}
    for t in plan.tasks:
        rec = state.get(plan.run_id, t.key)
        if rec is None or rec.status in (ShardStatus.QUEUED, ShardStatus.RUNNING):
            problems.append(f"{t.key}: not finished")
        elif rec.status == ShardStatus.FAILED:
            cause = (rec.error or {}).get("cause", "?")
            problems.append(f"{t.key}: FAILED: {cause}")
        elif rec.status == ShardStatus.DONE:
            store = stores.get(t.scale)
            if store is None:
                store = stores[t.scale] = ScaleStore(
                    plan.dest, plan.spec.scales[t.scale], io_context()
                )
            if store.shard_size(t.shard) is None:
                problems.append(
                    f"{t.key}: recorded done but {store.shard_file(t.shard)} is missing"
                )
    return problems


def _row(state_dir: Path, plan, name: str, kind: str, summary) -> ScaleRow:
    from dvid2ng.backends import open_embedded
    from dvid2ng.backends.base import ShardStatus

    _, state = open_embedded(state_dir)
    planned = {t.key for t in plan.tasks}
    recs = [r for s in plan.scales for r in state.list(plan.run_id, scale=s) if r.key in planned]
    row = ScaleRow(name, kind, shards=len(planned), seconds=summary.wall_seconds)
    for r in recs:
        if r.status == ShardStatus.DONE:
            row.done += 1
        elif r.status == ShardStatus.EMPTY:
            row.empty += 1
        elif r.status == ShardStatus.FAILED:
            row.failed += 1
        else:
            row.unfinished += 1
        if r.status.finished:
            row.chunks += r.chunks_done
            row.stored += r.chunks_written
    if summary.skipped_finished:
        row.note = f"{summary.skipped_finished} finished before"
    return row


def print_table(rows: list[ScaleRow]) -> None:
    if not rows:
        return
    out = sys.stderr
    head = f"{'scale':8} {'kind':10} {'shards':>7} {'done':>6} {'empty':>6} {'failed':>6} {'chunks':>10} {'stored':>10} {'wall s':>8} {'chunks/s':>9}  note"
    print("\n" + head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        failed = r.failed + r.unfinished
        print(
            f"{r.scale:8} {r.kind:10} {r.shards:7d} {r.done:6d} {r.empty:6d} {failed:6d} "
            f"{r.chunks:10,d} {r.stored:10,d} {r.seconds:8.1f} {r.rate:9,.0f}  {r.note}",
            file=out,
        )


# --- which rule built which scale (embedded state dir) ---------------------------------------

METHODS_FILE = "pyramid.json"


def _check_method(state_dir: Path, scale: int, method: str) -> None:
    """Resuming a scale with another rule would mix two rules in one scale: refuse."""
    from dvid2ng.dispatcher.plan import PlanError

    path = state_dir / METHODS_FILE
    if not path.exists():
        return
    used = json.loads(path.read_text()).get(f"s{scale}")
    if used and used != method:
        raise PlanError(
            f"s{scale} of this destination was built with --downsample-method {used}; resuming "
            f"it with {method} would mix two rules in one scale (delete its shard files and "
            f"{path} to rebuild it with {method})"
        )


def _record_method(state_dir: Path, scale: int, method: str) -> None:
    path = state_dir / METHODS_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data[f"s{scale}"] = method
    path.write_text(json.dumps(data, indent=2, sort_keys=True))

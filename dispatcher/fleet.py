"""The fleet commands: `queues`, `publish`, `worker`, `errors`, `dlq` (and `status --state`).

The same planner, worker and state as `dvid2ng run`, with the queue and state named by URL:
`--queue pubsub://PROJECT/PREFIX` (or $DVID2NG_QUEUE) and `--state firestore://PROJECT[/DB]`
(or $DVID2NG_STATE); `sqlite:///FOLDER` for both tries the fleet on one machine. The emulators'
variables (PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST, STORAGE_EMULATOR_HOST,
TENSORSTORE_GCS_HTTP_URL) are honoured by the client libraries.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _env(what: str) -> str | None:
    from dvid2ng.schemas.fleet import env_name

    return os.environ.get(env_name(what)) or None


def _add_queue(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queue",
        default=None,
        metavar="URL",
        help="pubsub://PROJECT/PREFIX or sqlite:///FOLDER (default: $DVID2NG_QUEUE)",
    )


def _add_state(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        default=None,
        metavar="URL",
        help="firestore://PROJECT[/DATABASE] or sqlite:///FOLDER (default: $DVID2NG_STATE)",
    )


def _downres(text: str) -> list[int]:
    from dvid2ng.dispatcher.pyramid import parse_downres

    try:
        return parse_downres(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parsers(sub: Any) -> None:
    from dvid2ng.dispatcher.cli import RawHelp, _positive, _scales, _z_compress

    q = sub.add_parser(
        "queues",
        help="create or check the tier topics and subscriptions",
        formatter_class=RawHelp,
        description="`create` makes the tier topics, their pull subscriptions with the dead-letter "
        "chain (each tier forwards to the next after its delivery attempts, the last to the "
        "terminal topic) and the terminal topic's subscription: for the emulators and dev "
        "projects (in production Terraform owns them). `check` says whether what exists matches "
        "the code's tier table (exit 1 if not).",
    )
    q.add_argument("action", choices=["create", "check"])
    _add_queue(q)

    pub = sub.add_parser(
        "publish",
        help="plan a conversion and publish one message per output shard to the fleet",
        formatter_class=RawHelp,
        description="Plan SOURCE (a folder or gs:// URL) with SPEC exactly as `dvid2ng run` does, "
        "write DEST/info, record every shard in the state and publish one message per shard "
        "that is not finished to its memory tier's topic. Idempotent: publishing again skips "
        "finished shards (after checking their files), shards in flight and shards an earlier "
        "publish queued; it publishes new shards and those whose file is missing or damaged.",
        epilog="examples:\n"
        "  dvid2ng publish gs://src/export gs://dst/vol --spec specs.json --dry-run\n"
        "  dvid2ng publish gs://src/export gs://dst/vol --spec specs.json \\\n"
        "      --queue pubsub://my-project/dvid2ng --state firestore://my-project",
    )
    pub.add_argument("source", metavar="SOURCE")
    pub.add_argument("dest", metavar="DEST")
    pub.add_argument("--spec", required=True, metavar="SPEC.json")
    pub.add_argument("--scales", type=_scales, default=None, metavar="0,1,2")
    pub.add_argument("--supervoxels", action="store_true")
    pub.add_argument(
        "--z-compress",
        type=_z_compress,
        default=0,
        metavar="N",
        help="Z-doubled source: s0 keeps every (N+1)-th Z slice (see dvid2ng run --help)",
    )
    pub.add_argument(
        "--dry-run", action="store_true", help="print the tier table and cost; publish nothing"
    )
    pub.add_argument(
        "--downres",
        type=_downres,
        default=None,
        metavar="1,2,3|1-9",
        help="then build these scales by downsampling, in order: each is published once the "
        "scale above is finished and checked (this command waits, showing progress)",
    )
    pub.add_argument("--downsample-method", choices=["mode", "dvid"], default="mode")
    pub.add_argument(
        "--poll-seconds", type=float, default=10.0, metavar="S", help="--downres: state polls"
    )
    pub.add_argument(
        "--republish",
        action="store_true",
        help="also publish unfinished shards an earlier publish queued (their messages were "
        "lost, e.g. a subscription was deleted); duplicates are harmless, just wasteful",
    )
    pub.add_argument(
        "--only-missing",
        action="store_true",
        help="publish only shards whose output file does not exist yet",
    )
    _add_queue(pub)
    _add_state(pub)

    add_worker_parser(sub)

    e = sub.add_parser("errors", help="failed shards of a run with file, chunk and cause")
    _add_state(e)
    e.add_argument("--run", metavar="ID")
    e.add_argument("--details", action="store_true", help="also tracebacks, workers, memory")
    e.add_argument("--json", action="store_true")

    d = sub.add_parser(
        "dlq",
        help="list, show or replay dead-lettered shards",
        formatter_class=RawHelp,
        description="`list` shows each message in the terminal topic with its shard, source file "
        "and the error the state recorded; `show KEY` one of them in full; `replay [KEY ...] "
        "[--all]` publishes them again (on --to-tier, default their first tier) after resetting "
        "the shard in the state.",
    )
    d.add_argument("action", choices=["list", "show", "replay"])
    d.add_argument("keys", nargs="*", metavar="KEY", help="shard keys (s0/061c5) or message ids")
    d.add_argument("--all", action="store_true", help="replay: every dead letter")
    d.add_argument("--to-tier", default=None, metavar="TIER")
    d.add_argument("--max", type=_positive, default=1000, help="dead letters to look at")
    d.add_argument("--json", action="store_true")
    _add_queue(d)
    _add_state(d)


def add_worker_parser(sub: Any) -> None:
    """`dvid2ng worker`: also the only subcommand a worker's own parser has (cli.build_parser)."""
    from dvid2ng.dispatcher.cli import RawHelp, _positive

    w = sub.add_parser(
        "worker",
        help="pull shard messages and convert them (a Cloud Run worker's command)",
        formatter_class=RawHelp,
        description="Pull from the tier's subscription, convert one shard at a time and record "
        "it in the state. SIGTERM stops it cleanly (the shard in hand is dropped before its "
        "commit and handed back; exit 0 within seconds). Memory budget: "
        "$DVID2NG_MEMORY_BUDGET_BYTES, else the container's cgroup limit.",
    )
    w.add_argument("--tier", default=None, metavar="TIER|all", help="default: $DVID2NG_TIER")
    w.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit once nothing was pulled for --idle-seconds and no shard of the runs served "
        "is left queued or running",
    )
    w.add_argument("--idle-seconds", type=float, default=60.0, metavar="S")
    w.add_argument("--gzip-level", type=int, default=6, choices=range(1, 13), metavar="1-12")
    w.add_argument(
        "--threads",
        type=_positive,
        default=None,
        metavar="N",
        help="converter threads for the shard in hand (default: $DVID2NG_THREADS, else the "
        "container's CPU quota, else the CPUs this process may run on)",
    )
    w.add_argument("--heartbeat-seconds", type=float, default=None, metavar="S")
    w.add_argument("--lease-seconds", type=float, default=None, metavar="S")
    w.add_argument(
        "--stale-after", type=float, default=None, metavar="S", help="a claim this old is dead"
    )
    w.add_argument("--worker-id", default=None, help="default: HOSTNAME-PID")
    _add_queue(w)
    _add_state(w)


class UsageError(ValueError):
    """Bad arguments or an unreachable backend: one line, exit 2."""


def _queue(args):
    from dvid2ng.backends import open_queue

    url = args.queue or _env("queue")
    if not url:
        raise UsageError("no queue: give --queue URL or set DVID2NG_QUEUE")
    try:
        return open_queue(url)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _state(args):
    from dvid2ng.backends import open_state

    url = args.state or _env("state")
    if not url:
        raise UsageError("no state store: give --state URL or set DVID2NG_STATE")
    try:
        return open_state(url)
    except ValueError as e:
        raise UsageError(str(e)) from None


def run_command(args: argparse.Namespace) -> int:
    handlers = {
        "queues": cmd_queues,
        "publish": cmd_publish,
        "worker": cmd_worker,
        "errors": cmd_errors,
        "dlq": cmd_dlq,
    }
    try:
        return handlers[args.command](args)
    except UsageError as e:
        print(f"dvid2ng {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


# -- queues ---------------------------------------------------------------------------------------


def cmd_queues(args) -> int:
    queue = _queue(args)
    if not hasattr(queue, "create"):
        print(f"dvid2ng queues: {queue!r} needs no set-up", file=sys.stderr)
        return EXIT_OK
    if args.action == "create":
        for line in queue.create():
            print(line)
        return EXIT_OK
    problems = queue.check()
    for p in problems:
        print(f"MISMATCH {p}")
    if not problems:
        print("queues match the tier table")
    return EXIT_FAILED if problems else EXIT_OK


# -- publish --------------------------------------------------------------------------------------


def tier_table(plan) -> list[dict[str, Any]]:
    """Shards, chunks and the largest memory estimate per tier of a plan."""
    from dvid2ng.schemas.tiers import TIERS

    rows = []
    for t in TIERS:
        tasks = [x for x in plan.tasks if x.tier == t.name]
        if tasks:
            rows.append(
                {
                    "tier": t.name,
                    "memory_gib": t.memory_gib,
                    "vcpu": t.vcpu,
                    "shards": len(tasks),
                    "chunks": sum(x.chunks_expected for x in tasks),
                    "max_estimate_gib": round(max(x.memory_bytes for x in tasks) / 2**30, 2),
                }
            )
    return rows


def print_dry_run(plan) -> None:
    rows = tier_table(plan)
    print(f"run {plan.run_id}: {len(plan.tasks)} shards, {plan.total_chunks:,} chunks")
    print(f"  {'tier':<6} {'memory':>7} {'vcpu':>4} {'shards':>8} {'chunks':>14} {'max est.':>9}")
    for r in rows:
        print(
            f"  {r['tier']:<6} {r['memory_gib']:>5} Gi {r['vcpu']:>4} {r['shards']:>8,} "
            f"{r['chunks']:>14,} {r['max_estimate_gib']:>6.2f} Gi"
        )
    from dvid2ng.dispatcher.cost import estimate_cost, format_estimate, summary_from_plan

    print(format_estimate(estimate_cost(summary_from_plan(plan))))


def cmd_publish(args) -> int:
    from dvid2ng.dispatcher.plan import (
        Plan,
        PlanError,
        check_spec,
        normalized_dest,
        plan_transcode,
        run_id_for,
    )
    from dvid2ng.dispatcher.pyramid import check_downres_scales

    label_mode = "supervoxels" if args.supervoxels else "labels"
    try:
        spec = check_spec(args.spec)
        if args.downres:
            check_downres_scales(spec, args.downres)
            both = set(args.downres) & set(args.scales or [])
            if both:
                raise PlanError(f"scale(s) {sorted(both)} are in both --scales and --downres")
        if args.downres and args.scales is None:  # only the pyramid: nothing to export
            dest = normalized_dest(args.dest)
            run_id = run_id_for(args.source, dest, spec, label_mode, args.z_compress)
            plan = Plan(run_id, args.source, dest, spec, label_mode, [], z_compress=args.z_compress)
        else:
            plan = plan_transcode(
                args.source,
                args.dest,
                spec,
                scales=args.scales,
                label_mode=label_mode,
                z_compress=args.z_compress,
            )
    except PlanError as e:
        raise UsageError(str(e)) from None
    for note in plan.notes:
        print(f"dvid2ng publish: note: {note}", file=sys.stderr)
    if args.dry_run:
        print_dry_run(plan)
        if args.downres:
            print(f"  then scales {args.downres} by downsampling, each planned once its parent is")
        return EXIT_OK
    queue, state = _queue(args), _state(args)
    _start_run(plan, state)
    if plan.tasks:
        _publish_plan(args, plan, queue, state, "")
    print(plan.run_id)  # for scripts: `RUN=$(dvid2ng publish ...)`
    sys.stdout.flush()
    for s in args.downres or []:
        code = _publish_downres_scale(args, plan, s, queue, state)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def _start_run(plan, state) -> None:
    from dvid2ng.worker.output import OutputError, write_info

    try:
        write_info(plan.dest, plan.spec.info())
    except (OutputError, ValueError) as e:
        raise UsageError(f"cannot write {plan.dest}/info: {e}") from None
    state.put_run(plan.run_id, plan.run_config())


def _publish_plan(args, plan, queue, state, what: str) -> None:
    from dvid2ng.dispatcher.resume import plan_publish
    from dvid2ng.worker.policy import CLOUD_TIMING

    todo = plan_publish(
        plan,
        state,
        queue.tiers,
        stale_after_s=CLOUD_TIMING.stale_after_s,
        only_missing=args.only_missing,
        republish=args.republish,
    )
    for line in todo.reconverted:
        print(f"  publishing again: {line}", file=sys.stderr)
    for tier, messages in todo.by_tier.items():
        queue.publish_many(tier, messages)
    per_tier = ", ".join(f"{len(m)} on {t}" for t, m in todo.by_tier.items()) or "none"
    print(
        f"run {plan.run_id}{what}: published {todo.messages} shard messages ({per_tier}); "
        f"{todo.kept} finished earlier (files checked), {todo.in_flight} in flight, "
        f"{todo.queued_before} queued by an earlier publish"
        + (f", {todo.present} already present (--only-missing)" if args.only_missing else ""),
        file=sys.stderr,
    )
    note = plan.missing_scales_note()
    if note and not args.downres:
        print(f"  note: {note}", file=sys.stderr)


def wait_for_scale(state, run_id: str, scale: int, poll_seconds: float) -> dict:
    """Poll the state until no shard of `scale` is queued or running; returns the counts."""
    import time

    from dvid2ng.backends.base import ShardStatus

    last = ""
    while True:
        rows = [r for r in state.summary(run_id) if r.scale == scale]
        n = {st: sum(r.shards for r in rows if r.status is st) for st in ShardStatus}
        line = (
            f"  s{scale}: {n[ShardStatus.DONE] + n[ShardStatus.EMPTY]} finished, "
            f"{n[ShardStatus.RUNNING]} running, {n[ShardStatus.QUEUED]} queued, "
            f"{n[ShardStatus.FAILED]} failed"
        )
        if line != last:
            print(line, file=sys.stderr, flush=True)
            last = line
        if n[ShardStatus.QUEUED] == 0 and n[ShardStatus.RUNNING] == 0:
            return n
        time.sleep(poll_seconds)


def _publish_downres_scale(args, plan, s: int, queue, state) -> int:
    """Wait for scale s-1, check it, plan scale s from its shard files and publish it."""
    from dvid2ng.backends.base import ShardStatus
    from dvid2ng.dispatcher.pyramid import plan_downsample_scale, scale_plan_as_plan

    counts = wait_for_scale(state, plan.run_id, s - 1, args.poll_seconds)
    if counts[ShardStatus.FAILED]:
        print(
            f"dvid2ng publish: s{s - 1} has {counts[ShardStatus.FAILED]} failed shards; not "
            f"building s{s} on it (see `dvid2ng errors --run {plan.run_id}`)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    sp = plan_downsample_scale(
        plan, s, method=args.downsample_method, only_missing=args.only_missing
    )
    if sp.parent_shards == 0:
        print(f"dvid2ng publish: s{s - 1} holds no shard files: s{s} stays empty", file=sys.stderr)
        return EXIT_OK
    sub = scale_plan_as_plan(plan, sp)
    _publish_plan(args, sub, queue, state, f" s{s}")
    if s == max(args.downres):
        counts = wait_for_scale(state, plan.run_id, s, args.poll_seconds)
        if counts[ShardStatus.FAILED]:
            return EXIT_FAILED
    return EXIT_OK


# -- worker ---------------------------------------------------------------------------------------


def cmd_worker(args) -> int:
    import dataclasses

    from dvid2ng.worker.warm import warm_in_background

    warm_in_background()  # Numba's set-up overlaps the imports and the first pull and claim
    from dvid2ng.dispatcher.logs import configure_logging
    from dvid2ng.worker.cpus import default_threads
    from dvid2ng.worker.loop import CLOUD_TIMING, Worker, default_worker_id, tiers_from
    from dvid2ng.worker.memory import memory_budget_bytes

    tier = args.tier or _env("tier")
    if not tier:
        raise UsageError("no tier: give --tier TIER|all or set DVID2NG_TIER")
    timing = CLOUD_TIMING
    changes = {
        "heartbeat_seconds": args.heartbeat_seconds,
        "lease_seconds": args.lease_seconds,
        "stale_after_s": args.stale_after,
    }
    try:
        timing = dataclasses.replace(timing, **{k: v for k, v in changes.items() if v})
        budget = memory_budget_bytes()
        threads = args.threads or default_threads()
    except ValueError as e:
        raise UsageError(str(e)) from None
    queue, state = _queue(args), _state(args)
    try:
        tiers = tiers_from(tier, queue.tiers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    configure_logging(level=args.log_level if args.log_level != "warning" else "info")
    stopping = {"signal": 0}

    def on_signal(signum, frame) -> None:  # Cloud Run: SIGTERM, then SIGKILL 10 s later
        stopping["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = Worker(
        queue,
        state,
        worker_id=args.worker_id or default_worker_id(),
        gzip_level=args.gzip_level,
        threads=threads,
        timing=timing,
        memory_budget=budget,
        should_stop=lambda: bool(stopping["signal"]),
    )
    import structlog

    log = structlog.get_logger("dvid2ng.worker")
    log.info(
        "worker_started",
        worker=worker.worker_id,
        tiers=tiers,
        memory_budget=budget,
        threads=threads,
    )
    handled = worker.run(tiers, exit_when_idle=args.exit_when_idle, idle_seconds=args.idle_seconds)
    log.info(
        "worker_stopped",
        worker=worker.worker_id,
        handled=handled,
        signal=signal.Signals(stopping["signal"]).name if stopping["signal"] else None,
    )
    getattr(queue, "close", lambda: None)()
    getattr(state, "close", lambda: None)()
    return EXIT_OK


# -- errors / dlq ---------------------------------------------------------------------------------


def pick_run(state, run: str | None, dest: str | None = None) -> str:
    """--run, else the newest run (whose destination is DEST, when given)."""
    if run:
        if state.get_run(run) is None:
            raise UsageError(f"no run {run} in the state store")
        return run
    from dvid2ng.dispatcher.plan import normalized_dest

    want = None if dest is None else normalized_dest(dest)
    for run_id, config in state.runs():
        if want is None or str(config.get("dest", "")) == want:
            return run_id
    raise UsageError("no run in the state store" + (f" for {dest}" if dest else ""))


def cmd_errors(args) -> int:
    from dvid2ng.backends.base import ShardStatus
    from dvid2ng.dispatcher.status import describe_error

    state = _state(args)
    run_id = pick_run(state, args.run)
    failed = state.list(run_id, status=ShardStatus.FAILED)
    if args.json:
        print(
            json.dumps([{"key": r.key, "tier": r.tier, "error": r.error} for r in failed], indent=2)
        )
    else:
        print(f"run {run_id}: {len(failed)} failed shards")
        for r in failed:
            print(f"  {r.key} ({r.tier}, attempt {r.attempts}): {describe_error(r.error)}")
            if args.details:
                err = r.error or {}
                print(f"    worker {r.worker}, peak RSS {r.peak_rss_bytes / 2**20:,.0f} MiB")
                for line in str(err.get("traceback", "")).rstrip().splitlines():
                    print(f"    {line}")
    return EXIT_FAILED if failed else EXIT_OK


def _letter_task(letter):
    from dvid2ng.schemas.task import ShardTask, TaskError

    try:
        return ShardTask.from_json(letter.body)
    except TaskError:
        return None


def _letter_json(letter, state) -> dict[str, Any]:
    task = _letter_task(letter)
    rec = state.get(task.run_id, task.key) if task is not None else None
    return {
        "message_id": letter.message_id,
        "key": task.key if task else letter.attributes.get("key", ""),
        "run": task.run_id if task else letter.attributes.get("run", ""),
        "from_tier": letter.from_tier,
        "reason": letter.reason,
        "source": task.sources[0].arrow if task and task.sources else "",
        "status": rec.status.value if rec else None,
        "error": rec.error if rec else None,
        "body": None if task else letter.body.decode("utf-8", "replace")[:500],
    }


def refreshed_sources(task):
    """The task with its sources' size and generation as they are now: a dead letter is replayed
    because its input was fixed (re-exported in place), so the planned generation is stale."""
    import dataclasses

    from dvid2ng.worker.sources import stat_source

    sources = []
    for src in task.sources:
        size, generation = stat_source(src.arrow)
        sources.append(dataclasses.replace(src, size=size, generation=generation))
    return dataclasses.replace(task, sources=tuple(sources))


def cmd_dlq(args) -> int:
    queue, state = _queue(args), _state(args)
    try:
        return _dlq(args, queue, state)
    finally:
        # Pub/Sub: `dead_letters()` leases what it lists to this queue object; give them back
        # now, not at process exit, or a second `dlq` call in the same process (a script, a
        # notebook, the tests) finds the dead-letter queue empty for the next 120 s.
        queue.close()


def _dlq(args, queue, state) -> int:
    from dvid2ng.dispatcher.status import describe_error

    letters = queue.dead_letters(args.max)
    info = [(letter, _letter_json(letter, state)) for letter in letters]
    wanted = set(args.keys)

    def selected(j: dict[str, Any]) -> bool:
        return bool(args.all) or j["key"] in wanted or j["message_id"] in wanted

    if args.action == "list":
        if args.json:
            print(json.dumps([j for _, j in info], indent=2, default=str))
        else:
            print(f"{len(info)} dead-lettered messages")
            for _, j in info:
                cause = describe_error(j["error"]) if j["error"] else j["reason"]
                print(f"  {j['key'] or j['message_id']} from {j['from_tier']}: {j['source']}")
                print(f"      {cause}")
        return EXIT_OK
    if not wanted and not args.all:
        raise UsageError(f"dlq {args.action}: name shard keys or message ids (or --all)")
    chosen = [(letter, j) for letter, j in info if selected(j)]
    if not chosen:
        raise UsageError(f"none of {sorted(wanted)} is in the dead-letter queue")
    if args.action == "show":
        print(json.dumps([j for _, j in chosen], indent=2, default=str))
        return EXIT_OK
    for letter, j in chosen:
        task = _letter_task(letter)
        if task is None:
            print(f"  skipped {j['message_id']}: not a task message (poison)", file=sys.stderr)
            continue
        to = args.to_tier or task.tier
        if to not in queue.tiers:
            raise UsageError(f"unknown tier {to!r}; choose one of {', '.join(queue.tiers)}")
        try:
            fresh = refreshed_sources(task)
        except OSError as e:
            print(f"  skipped {task.key}: its source cannot be read ({e})", file=sys.stderr)
            continue
        state.reset(task.run_id, task.key, f"replayed from the dead-letter queue to {to}")
        queue.replay(letter, to, fresh.to_json())
        print(f"  replayed {task.key} on {to}")
    return EXIT_OK

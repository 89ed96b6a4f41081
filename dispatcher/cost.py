"""What a fleet conversion will cost, from the plan alone (printed by `dvid2ng publish --dry-run`).

A pure function of a plan summary (shards and chunks per scale and tier, source bytes,
estimated output bytes), list prices (Rates) and the measured conversion speed. The model and
its assumptions are written out in docs/cost.md; every constant below names its source.

    estimate = estimate_cost(summary)          # or summary_from_plan(plan)
    print(format_estimate(estimate))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from dvid2ng.schemas.tiers import TIERS, Tier, tier_by_name

# Measured conversion speed, chunks per second per core: bench/bench_s0.py --repeat 3 on this
# project's 2-core machines, one process pinned to one core, one full 32,768-chunk s0-like
# shard (~30 labels per chunk): 1,652 chunks/s (docs/performance.md, 2026-11-23). It includes
# reading the Arrow file, zstd, the DVID->cseg transcode, gzip and the TensorStore commit.
CHUNKS_PER_CORE_SECOND_S0 = 1650
# Denser chunks are slower: the same benchmark with ~300 labels per chunk (`--chunks 4096
# --labels 300`) gave 644 chunks/s. Scales 2 and up are that dense or denser (formats.md §16.1:
# ~1,300 labels per block at s3, ~19,000 at s5), so they use it; it is optimistic for s3+,
# which hold about 0.25% of an mCNS-size job's chunks.
CHUNKS_PER_CORE_SECOND_DENSE = 644
# The mCNS export's neuroglancer volume was 3.52 TiB live (formats.md §16.3) from 4.30 TB of
# Arrow files (§16.1): output bytes ~ 0.9 x source bytes.
OUTPUT_BYTES_PER_SOURCE_BYTE = 0.9

GIB = 2**30
TIB = 2**40


@dataclass(frozen=True)
class Rates:
    """List prices in USD for a Tier 1 region (us-central1), checked 2026-11 on the pages
    named. Override any of them for another region or a negotiated price."""

    # cloud.google.com/run/pricing, Tier 1: instance-based billing (services with CPU always
    # allocated, jobs, worker pools), no free tier assumed (it is tiny at this scale).
    vcpu_second: float = 0.000018
    gib_second: float = 0.000002
    # cloud.google.com/pubsub/pricing: $40 per TiB of message throughput (publish and each
    # delivery), every request billed as at least 1,000 bytes; first 10 GiB a month free (ignored).
    pubsub_per_tib: float = 40.0
    pubsub_min_request_bytes: int = 1000
    # cloud.google.com/firestore/pricing, regional location (us-central1), Standard edition.
    firestore_reads_per_100k: float = 0.03
    firestore_writes_per_100k: float = 0.09
    # cloud.google.com/storage/pricing, Standard storage in a region (us-central1): class A
    # $0.005 per 1,000, class B $0.0004 per 1,000 (formats.md §16.3 quotes the same class A),
    # $0.020 per GiB-month. Same-region traffic between Cloud Run and Cloud Storage is free.
    gcs_class_a_per_1000: float = 0.005
    gcs_class_b_per_1000: float = 0.0004
    gcs_storage_gib_month: float = 0.020


@dataclass(frozen=True)
class Assumptions:
    """How the fleet behaves, where nothing was measured yet (docs/cost.md explains each)."""

    # Cores a worker keeps busy converting one shard; None = all its vCPUs (DVID2NG_THREADS is
    # set to the tier's vCPU count). 1 = one core per shard, the rest of the vCPUs idle.
    worker_threads: int | None = None
    # Source reads and the shard upload, per instance, not overlapped with conversion.
    io_bytes_per_second: float = 100 * 2**20
    # Claim, heartbeat, finish, ack, lease extensions: round trips per shard.
    overhead_seconds_per_shard: float = 1.0
    # Each instance's start (image pull, imports, cached kernels) and the autoscaler's tail
    # while it sits idle at the end (5 min scale-down stabilization, then halving every 2 min:
    # terraform/autoscaler.tf).
    instance_start_seconds: float = 30.0
    instance_tail_seconds: float = 600.0
    max_instances_per_tier: int = 100  # terraform var default_max_instances
    # Firestore: heartbeat period, and `dvid2ng status --watch` polls during the run.
    heartbeat_seconds: float = 30.0
    status_polls: int = 120
    # Pub/Sub: message size; extra deliveries (retries, escalations) as a fraction of shards.
    message_bytes: int = 1500
    redelivery_fraction: float = 0.05
    # Cloud Storage: bytes per ranged GET of the source; months the volume is kept.
    source_read_request_bytes: int = 16 * 2**20
    storage_months: float = 1.0


@dataclass(frozen=True)
class Load:
    """The part of a plan that runs on one tier at one scale."""

    scale: int
    tier: str
    shards: int
    chunks: int
    source_bytes: int = 0  # Arrow + CSV bytes of these shards, when known per load

    def __post_init__(self) -> None:
        if min(self.shards, self.chunks, self.source_bytes, self.scale) < 0:
            raise ValueError(f"negative count in {self}")


@dataclass(frozen=True)
class PlanSummary:
    loads: tuple[Load, ...]
    source_bytes: int
    output_bytes: int  # estimated size of the finished volume
    source_files: int = 0  # objects listed by publish (0: two per shard, Arrow + CSV)

    @property
    def shards(self) -> int:
        return sum(ld.shards for ld in self.loads)

    @property
    def chunks(self) -> int:
        return sum(ld.chunks for ld in self.loads)


@dataclass(frozen=True)
class TierCost:
    tier: str
    shards: int
    chunks: int
    instance_hours: float
    vcpu_hours: float
    gib_hours: float
    busy_core_hours: float
    usd: float


@dataclass(frozen=True)
class CostEstimate:
    tiers: tuple[TierCost, ...]
    vcpu_hours: float
    gib_hours: float
    compute_usd: float
    pubsub_bytes: int
    pubsub_usd: float
    firestore_reads: int
    firestore_writes: int
    firestore_usd: float
    gcs_class_a: int
    gcs_class_b: int
    gcs_operations_usd: float
    storage_gib: float
    storage_usd: float
    total_usd: float
    assumptions: Assumptions = field(default_factory=Assumptions)
    rates: Rates = field(default_factory=Rates)


def chunks_per_core_second(scale: int) -> float:
    return CHUNKS_PER_CORE_SECOND_S0 if scale <= 1 else CHUNKS_PER_CORE_SECOND_DENSE


def _shard_seconds(load: Load, tier: Tier, bytes_per_chunk: float, a: Assumptions) -> float:
    """Instance seconds spent on all shards of `load` (conversion + I/O + round trips)."""
    cores = tier.vcpu if a.worker_threads is None else min(a.worker_threads, tier.vcpu)
    convert = load.chunks / (chunks_per_core_second(load.scale) * cores)
    source = load.source_bytes or load.chunks * bytes_per_chunk
    io = source * (1 + OUTPUT_BYTES_PER_SOURCE_BYTE) / a.io_bytes_per_second
    return convert + io + load.shards * a.overhead_seconds_per_shard


def estimate_cost(
    summary: PlanSummary, rates: Rates | None = None, assumptions: Assumptions | None = None
) -> CostEstimate:
    """Cost of converting `summary` on the Cloud Run fleet (see docs/cost.md)."""
    r, a = rates or Rates(), assumptions or Assumptions()
    chunks = max(1, summary.chunks)
    bytes_per_chunk = summary.source_bytes / chunks  # for loads without their own byte count
    by_tier: dict[str, list[Load]] = {}
    for load in summary.loads:
        tier_by_name(load.tier)  # unknown tier: KeyError naming the known ones
        by_tier.setdefault(load.tier, []).append(load)

    tiers, busy_seconds_total = [], 0.0
    for tier in TIERS:
        loads = by_tier.get(tier.name, [])
        if not loads:
            continue
        work = sum(_shard_seconds(ld, tier, bytes_per_chunk, a) for ld in loads)
        shards = sum(ld.shards for ld in loads)
        instances = min(shards, a.max_instances_per_tier)
        seconds = work + instances * (a.instance_start_seconds + a.instance_tail_seconds)
        busy = sum(ld.chunks / chunks_per_core_second(ld.scale) for ld in loads)
        busy_seconds_total += seconds
        vcpu_s, gib_s = seconds * tier.vcpu, seconds * tier.memory_gib
        tiers.append(
            TierCost(
                tier=tier.name,
                shards=shards,
                chunks=sum(ld.chunks for ld in loads),
                instance_hours=seconds / 3600,
                vcpu_hours=vcpu_s / 3600,
                gib_hours=gib_s / 3600,
                busy_core_hours=busy / 3600,
                usd=vcpu_s * r.vcpu_second + gib_s * r.gib_second,
            )
        )
    compute_usd = sum(t.usd for t in tiers)

    shards = summary.shards
    deliveries = shards * (1 + a.redelivery_fraction)
    request_bytes = max(a.message_bytes, r.pubsub_min_request_bytes)
    pubsub_bytes = int((shards + deliveries) * request_bytes)  # publish + deliveries
    pubsub_usd = pubsub_bytes / TIB * r.pubsub_per_tib

    # Firestore: publish creates each shard document (read to stay idempotent, then write); a
    # delivery claims it in a transaction (read + write) and finishes it (read + write);
    # heartbeats write every heartbeat_seconds while a shard runs; status polls aggregate
    # (one read per 1,000 index entries, per status-by-scale-and-tier group).
    shard_seconds = sum(
        _shard_seconds(ld, tier_by_name(ld.tier), bytes_per_chunk, a) for ld in summary.loads
    )
    heartbeats = int(shard_seconds / a.heartbeat_seconds)
    groups = max(1, len(summary.loads))
    poll_reads = a.status_polls * groups * (math.ceil(shards / 1000) + 1)
    reads = int(shards + 2 * deliveries) + poll_reads
    writes = int(shards + 2 * deliveries) + heartbeats
    firestore_usd = (
        reads / 1e5 * r.firestore_reads_per_100k + writes / 1e5 * r.firestore_writes_per_100k
    )

    # Cloud Storage: class A = writes and listings (one upload per output shard, the info,
    # listings of the source by publish and of the volume by verify, 1,000 names a page);
    # class B = reads (ranged GETs of each Arrow file, the CSV, generation checks, info reads).
    files = summary.source_files or 2 * shards
    class_a = shards + 1 + 2 * (math.ceil(files / 1000) + math.ceil(shards / 1000))
    ranged = sum(
        math.ceil(ld.source_bytes / a.source_read_request_bytes) if ld.source_bytes else 0
        for ld in summary.loads
    ) or math.ceil(summary.source_bytes / a.source_read_request_bytes)
    class_b = int(ranged + deliveries * 4)  # CSV, source generation, info, shard probe
    gcs_ops_usd = class_a / 1000 * r.gcs_class_a_per_1000 + class_b / 1000 * r.gcs_class_b_per_1000
    storage_gib = summary.output_bytes / GIB
    storage_usd = storage_gib * r.gcs_storage_gib_month * a.storage_months

    return CostEstimate(
        tiers=tuple(tiers),
        vcpu_hours=sum(t.vcpu_hours for t in tiers),
        gib_hours=sum(t.gib_hours for t in tiers),
        compute_usd=compute_usd,
        pubsub_bytes=pubsub_bytes,
        pubsub_usd=pubsub_usd,
        firestore_reads=reads,
        firestore_writes=writes,
        firestore_usd=firestore_usd,
        gcs_class_a=class_a,
        gcs_class_b=class_b,
        gcs_operations_usd=gcs_ops_usd,
        storage_gib=storage_gib,
        storage_usd=storage_usd,
        total_usd=compute_usd + pubsub_usd + firestore_usd + gcs_ops_usd + storage_usd,
        assumptions=a,
        rates=r,
    )


def summary_from_plan(plan) -> PlanSummary:
    """A PlanSummary from a dispatcher Plan (tasks carry scale, tier, chunks and source sizes)."""
    loads: dict[tuple[int, str], list[int]] = {}
    source_files = 0
    for task in plan.tasks:
        entry = loads.setdefault((task.scale, task.tier), [0, 0, 0])
        entry[0] += 1
        entry[1] += task.chunks_expected
        entry[2] += sum(s.size for s in task.sources)
        source_files += sum(1 + bool(s.csv) for s in task.sources)
    source_bytes = sum(e[2] for e in loads.values())
    return PlanSummary(
        loads=tuple(Load(s, t, *e) for (s, t), e in sorted(loads.items())),
        source_bytes=source_bytes,
        output_bytes=int(source_bytes * OUTPUT_BYTES_PER_SOURCE_BYTE),
        source_files=source_files,
    )


def format_estimate(e: CostEstimate) -> str:
    """The estimate as a short table (what `publish --dry-run` prints)."""
    lines = [
        "cost estimate (list prices, Tier 1 region; model and assumptions: docs/cost.md)",
        f"  {'tier':<6} {'shards':>7} {'chunks':>13} {'inst-h':>8} {'vCPU-h':>8} {'GiB-h':>9} {'USD':>9}",
    ]
    for t in e.tiers:
        lines.append(
            f"  {t.tier:<6} {t.shards:>7,} {t.chunks:>13,} {t.instance_hours:>8.1f} "
            f"{t.vcpu_hours:>8.1f} {t.gib_hours:>9.1f} {t.usd:>9.2f}"
        )
    lines += [
        f"  compute   {e.vcpu_hours:,.1f} vCPU-hours, {e.gib_hours:,.1f} GiB-hours: ${e.compute_usd:,.2f}",
        f"  Pub/Sub   {e.pubsub_bytes / 2**20:,.1f} MiB: ${e.pubsub_usd:,.2f}",
        f"  Firestore {e.firestore_reads:,} reads, {e.firestore_writes:,} writes: ${e.firestore_usd:,.2f}",
        f"  GCS ops   {e.gcs_class_a:,} class A, {e.gcs_class_b:,} class B: ${e.gcs_operations_usd:,.2f}",
        f"  storage   {e.storage_gib:,.0f} GiB for {e.assumptions.storage_months:g} month(s): ${e.storage_usd:,.2f}",
        f"  total     ${e.total_usd:,.2f}",
    ]
    return "\n".join(lines)


def loads_from_counts(
    chunks_by_scale: Mapping[int, int],
    shards_by_scale: Mapping[int, int],
    tier_of_scale: Mapping[int, str],
    source_bytes_by_scale: Mapping[int, int] | None = None,
) -> tuple[Load, ...]:
    """Loads for a job known only by its per-scale totals (e.g. formats.md §16.1)."""
    sizes = source_bytes_by_scale or {}
    return tuple(
        Load(s, tier_of_scale[s], shards_by_scale[s], chunks_by_scale[s], sizes.get(s, 0))
        for s in sorted(chunks_by_scale)
    )


# The mCNS v0.11 export (formats.md §16.1): per scale chunks, Arrow files and Arrow bytes.
MCNS_V011 = {
    0: (510_500_000, 21_994, 2_840 * 10**9),
    1: (66_600_000, 3_364, 1_030 * 10**9),
    2: (8_800_000, 606, 298 * 10**9),
    3: (1_200_000, 123, 96 * 10**9),
    4: (157_000, 25, 36 * 10**9),
    5: (22_000, 8, 12 * 10**9),
    6: (3_300, 2, 2_900 * 10**6),
    7: (828, 2, 600 * 10**6),
    8: (143, 2, 113 * 10**6),
    9: (29, 2, 18 * 10**6),
}
PREDECESSOR_MCNS_VCPU_HOURS = 7800  # shared/reference/performance.md: allocated, 4-32 GiB tiers


def mcns_summary() -> PlanSummary:
    """An mCNS-size job as dvid2ng's planner would tier it: each scale's shards get the tier of
    its mean shard (dispatcher.plan.estimate_memory_bytes, schemas.tiers.pick_tier)."""
    from dvid2ng.dispatcher.plan import estimate_memory_bytes
    from dvid2ng.schemas.tiers import pick_tier

    loads = []
    for scale, (chunks, files, arrow_bytes) in MCNS_V011.items():
        tier = pick_tier(estimate_memory_bytes(scale, chunks // files, arrow_bytes // files))
        loads.append(Load(scale, tier, files, chunks, arrow_bytes))
    source = sum(b for _, _, b in MCNS_V011.values())
    return PlanSummary(
        tuple(loads),
        source,
        int(source * OUTPUT_BYTES_PER_SOURCE_BYTE),
        2 * sum(f for _, f, _ in MCNS_V011.values()),
    )


def main() -> None:
    """`python -m dvid2ng.dispatcher.cost`: the mCNS-size example of docs/cost.md."""
    summary = mcns_summary()
    print(
        f"mCNS-size job (formats.md §16.1): {summary.shards:,} shards, {summary.chunks:,} chunks, "
        f"{summary.source_bytes / 1e12:.2f} TB of Arrow files\n"
    )
    for label, a in (
        ("workers keep all their vCPUs busy (DVID2NG_THREADS = vCPU)", Assumptions()),
        ("one core per shard, other vCPUs idle", Assumptions(worker_threads=1)),
    ):
        e = estimate_cost(summary, assumptions=a)
        print(f"== {label}")
        print(format_estimate(e))
        print(
            f"  vs the predecessor's ~{PREDECESSOR_MCNS_VCPU_HOURS:,} allocated vCPU-hours: "
            f"{PREDECESSOR_MCNS_VCPU_HOURS / e.vcpu_hours:.0f}x fewer\n"
        )


if __name__ == "__main__":
    main()

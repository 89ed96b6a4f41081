"""The fleet cost model (dispatcher/cost.py): its arithmetic, its inputs from a real plan, and
the mCNS figure docs/cost.md quotes."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvid2ng.dispatcher.cost import (
    CHUNKS_PER_CORE_SECOND_DENSE,
    CHUNKS_PER_CORE_SECOND_S0,
    PREDECESSOR_MCNS_VCPU_HOURS,
    Assumptions,
    Load,
    PlanSummary,
    Rates,
    estimate_cost,
    format_estimate,
    mcns_summary,
    summary_from_plan,
)
from dvid2ng.schemas.tiers import TIERS, tier_by_name

REPO = Path(__file__).resolve().parents[1]
# Only the conversion itself: no I/O, no round trips, no instance start or tail.
BARE = Assumptions(
    io_bytes_per_second=float("inf"),
    overhead_seconds_per_shard=0,
    instance_start_seconds=0,
    instance_tail_seconds=0,
)


def summary(*loads: Load, source_bytes: int = 0, output_bytes: int = 0) -> PlanSummary:
    return PlanSummary(tuple(loads), source_bytes, output_bytes)


def test_busy_vcpu_hours_follow_the_measured_per_core_throughput():
    e = estimate_cost(summary(Load(0, "t2gi", 10, 1_650_000)), assumptions=BARE)
    assert e.vcpu_hours == pytest.approx(1_650_000 / CHUNKS_PER_CORE_SECOND_S0 / 3600)
    assert e.tiers[0].busy_core_hours == pytest.approx(e.vcpu_hours)
    dense = estimate_cost(summary(Load(3, "t2gi", 10, 644_000)), assumptions=BARE)
    assert dense.vcpu_hours == pytest.approx(644_000 / CHUNKS_PER_CORE_SECOND_DENSE / 3600)


def test_all_vcpus_busy_costs_the_same_vcpu_hours_on_any_tier_but_more_memory():
    load = dict(scale=0, shards=4, chunks=10_000_000)
    small = estimate_cost(summary(Load(tier="t2gi", **load)), assumptions=BARE)
    big = estimate_cost(summary(Load(tier="t32gi", **load)), assumptions=BARE)
    assert big.vcpu_hours == pytest.approx(small.vcpu_hours)
    t2, t32 = tier_by_name("t2gi"), tier_by_name("t32gi")
    ratio = (t32.memory_gib / t32.vcpu) / (t2.memory_gib / t2.vcpu)
    assert big.gib_hours == pytest.approx(small.gib_hours * ratio)


def test_one_core_per_shard_bills_the_idle_vcpus():
    load = Load(0, "t16gi", 4, 10_000_000)  # 4 vCPU
    busy = estimate_cost(summary(load), assumptions=BARE)
    one = estimate_cost(summary(load), assumptions=dataclasses.replace(BARE, worker_threads=1))
    assert one.vcpu_hours == pytest.approx(busy.vcpu_hours * tier_by_name("t16gi").vcpu)


def test_io_overhead_start_and_tail_add_instance_time():
    load = Load(0, "t4gi", 100, 1_000_000, source_bytes=10 * 2**30)
    base = estimate_cost(summary(load, source_bytes=10 * 2**30), assumptions=BARE)
    io = dataclasses.replace(BARE, io_bytes_per_second=2**20)
    with_io = estimate_cost(summary(load, source_bytes=10 * 2**30), assumptions=io)
    # 10 GiB read + 9 GiB written at 1 MiB/s, on a 2-vCPU instance
    extra = (10 * 2**30 * 1.9 / 2**20) * 2 / 3600
    assert with_io.vcpu_hours - base.vcpu_hours == pytest.approx(extra)
    tail = dataclasses.replace(BARE, instance_tail_seconds=600, max_instances_per_tier=10)
    with_tail = estimate_cost(summary(load), assumptions=tail)
    assert with_tail.vcpu_hours - base.vcpu_hours == pytest.approx(10 * 600 * 2 / 3600)


def test_dollars_are_the_documented_rates_times_the_quantities():
    r = Rates()
    e = estimate_cost(
        summary(
            Load(0, "t4gi", 1000, 20_000_000),
            Load(2, "t8gi", 10, 100_000),
            source_bytes=2 * 2**40,
            output_bytes=2**40,
        )
    )
    assert e.compute_usd == pytest.approx(
        e.vcpu_hours * 3600 * r.vcpu_second + e.gib_hours * 3600 * r.gib_second
    )
    assert e.pubsub_usd == pytest.approx(e.pubsub_bytes / 2**40 * r.pubsub_per_tib)
    assert e.firestore_usd == pytest.approx(
        e.firestore_reads / 1e5 * r.firestore_reads_per_100k
        + e.firestore_writes / 1e5 * r.firestore_writes_per_100k
    )
    assert e.gcs_operations_usd == pytest.approx(
        e.gcs_class_a / 1000 * r.gcs_class_a_per_1000
        + e.gcs_class_b / 1000 * r.gcs_class_b_per_1000
    )
    assert e.storage_gib == pytest.approx(1024)
    assert e.storage_usd == pytest.approx(1024 * r.gcs_storage_gib_month)
    assert e.total_usd == pytest.approx(
        e.compute_usd + e.pubsub_usd + e.firestore_usd + e.gcs_operations_usd + e.storage_usd
    )
    assert e.gcs_class_a >= 1010  # one upload per output shard at least
    # a region with other prices
    dear = estimate_cost(
        summary(Load(0, "t4gi", 1000, 20_000_000)), rates=dataclasses.replace(r, vcpu_second=1.0)
    )
    assert dear.compute_usd > 1000 * e.compute_usd


def test_pubsub_bills_at_least_a_kilobyte_per_request():
    tiny = Assumptions(message_bytes=10, redelivery_fraction=0)
    e = estimate_cost(summary(Load(0, "t2gi", 1000, 1000)), assumptions=tiny)
    assert e.pubsub_bytes == 2 * 1000 * Rates().pubsub_min_request_bytes  # publish + delivery


def test_bad_loads_are_refused_with_the_reason():
    with pytest.raises(KeyError, match="t3gi"):
        estimate_cost(summary(Load(0, "t3gi", 1, 1)))
    with pytest.raises(ValueError, match="negative"):
        Load(0, "t2gi", -1, 10)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 9),
            st.sampled_from([t.name for t in TIERS]),
            st.integers(1, 30_000),
            st.integers(0, 10**9),
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 10**13),
)
def test_estimates_are_positive_and_grow_with_the_work(raw, source_bytes):
    loads = [Load(s, t, n, c) for s, t, n, c in raw]
    e = estimate_cost(summary(*loads, source_bytes=source_bytes, output_bytes=source_bytes))
    parts = [e.compute_usd, e.pubsub_usd, e.firestore_usd, e.gcs_operations_usd, e.storage_usd]
    assert all(p >= 0 for p in parts) and e.total_usd == pytest.approx(sum(parts))
    assert e.vcpu_hours > 0 and e.gib_hours >= e.vcpu_hours
    bigger = [dataclasses.replace(ld, chunks=ld.chunks * 2 + 1) for ld in loads]
    e2 = estimate_cost(summary(*bigger, source_bytes=source_bytes, output_bytes=source_bytes))
    assert e2.vcpu_hours > e.vcpu_hours and e2.total_usd >= e.total_usd
    assert {t.tier for t in e.tiers} == {ld.tier for ld in loads}


def test_summary_from_a_real_plan(tmp_path):
    from dvid2ng.dispatcher.plan import check_spec, plan_transcode
    from tests.exports import make_export

    export = make_export(tmp_path)
    plan = plan_transcode(export.source, str(tmp_path / "out"), check_spec(export.spec_path))
    s = summary_from_plan(plan)
    assert s.shards == len(plan.tasks)
    assert s.chunks == plan.total_chunks > 0
    arrow = sum(p.stat().st_size for p in export.source.rglob("*.arrow"))
    assert s.source_bytes == arrow
    assert s.source_files == len(list(export.source.rglob("*.arrow"))) + len(
        list(export.source.rglob("*.csv"))
    )
    assert {(ld.scale, ld.tier) for ld in s.loads} == {(t.scale, t.tier) for t in plan.tasks}
    text = format_estimate(estimate_cost(s))
    assert "total" in text and "vCPU-hours" in text


def test_mcns_figure_in_docs_is_what_the_model_computes():
    e = estimate_cost(mcns_summary())
    s = mcns_summary()
    assert s.shards == 26_128 and abs(s.chunks - 587_173_098) / 587_173_098 < 0.001
    assert PREDECESSOR_MCNS_VCPU_HOURS / e.vcpu_hours > 10  # the point of the project
    doc = (REPO / "docs" / "cost.md").read_text()
    m = re.search(r"mCNS-size job: about \*\*([\d,.]+) vCPU-hours\*\*", doc)
    assert m, "docs/cost.md must quote the mCNS estimate"
    assert float(m.group(1).replace(",", "")) == pytest.approx(e.vcpu_hours, rel=0.05)
    m = re.search(r"\*\*\$([\d,.]+) in all\*\*", doc)
    assert m and float(m.group(1).replace(",", "")) == pytest.approx(e.total_usd, rel=0.05)


def test_the_example_command_prints_both_variants():
    done = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cost"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("total") == 2 and "predecessor" in done.stdout

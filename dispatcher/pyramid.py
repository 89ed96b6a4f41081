"""Planning the pyramid: the downsample tasks of one scale, from what the scale above holds.

Scale N is made from scale N-1 of DEST. Targets are sparse: only the parent's existing shard
files make work (listed through a TensorStore kvstore, so local and gs:// alike). For each
parent shard its chunk bbox is halved and the child shards it covers collected (formats.md
§9.1). `only_missing` drops targets whose shard file already exists.

This module only makes `ShardTask`s (and a `Plan` for `run_embedded`); running them and
checking a scale are in `dispatcher.pyramid_run`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorstore as ts

from dvid2ng.dispatcher.plan import Plan, PlanError
from dvid2ng.schemas.sharding import (
    num_shards,
    shard_bounds,
    shard_chunk_count,
    shard_name,
    shard_of_chunk,
    shard_shape,
)
from dvid2ng.schemas.spec import Scale, VolumeSpec
from dvid2ng.schemas.task import DOWNSAMPLE_METHODS, ShardTask
from dvid2ng.schemas.tiers import pick_tier
from dvid2ng.worker.downsample import downres_geometry_problem
from dvid2ng.worker.output import OutputError, ScaleStore, io_context, kvstore_spec

# --- memory model of a downsample task (calibrated in docs/pyramid.md) ----------------------
# peak RSS = base + HELD_FACTOR x (gzipped output chunks of the shard). The transaction holds
# every gzipped chunk until the commit; TensorStore writes the shard file from those buffers
# without a second full copy. Measured (bench/bench_pyramid.py, one full 32^3-chunk s1 shard
# from 8 full s0 shards, both inputs in one run): dense 1,019 MiB peak with 753 MiB of gzipped
# output (24 KB per chunk), mCNS-density 473 MiB with 170 MiB (5.4 KB per chunk), i.e. a base
# of 265-303 MiB (imports and Numba ~215, parent index and bricks ~20, TensorStore's
# transaction ~0.65-0.93 KB per chunk on top of its data, which weighs more with small
# chunks) + 1.0 x output. The constants keep ~10-15% margin on both. Output bytes are
# predicted from the parent shard files that feed the shard times the child/parent byte ratio
# seen in production (formats.md §11.3; 0.30-0.35 measured on the bench data), or from the
# chunk count when parent sizes are unknown.
DOWNSAMPLE_BASE_BYTES = 330 * 2**20
HELD_FACTOR = 1.15
CHILD_PARENT_BYTE_RATIO = {1: 0.379, 2: 0.259, 3: 0.257, 4: 0.266, 5: 0.244}
DEFAULT_BYTE_RATIO = 0.38  # the largest seen: conservative for scales not in the table
BYTES_PER_CHUNK_FALLBACK = {1: 27919, 2: 44482, 3: 78376, 4: 130244, 5: 199396, 6: 258999}


def estimate_downsample_bytes(scale: int, chunks: int, parent_bytes: float | None) -> int:
    """Peak RSS predicted for building one output shard of `scale` with `chunks` chunks."""
    if parent_bytes is not None:
        output = parent_bytes * CHILD_PARENT_BYTE_RATIO.get(scale, DEFAULT_BYTE_RATIO)
    else:
        output = chunks * BYTES_PER_CHUNK_FALLBACK.get(scale, 260_000)
    return int(DOWNSAMPLE_BASE_BYTES + HELD_FACTOR * output)


@dataclass
class ScalePlan:
    """The downsample work of one scale."""

    scale: int
    parent_shards: int  # shard files found in the parent scale
    targets: int  # output shards the parents feed
    existing_skipped: int = 0  # targets dropped by only_missing (file present)
    tasks: list[ShardTask] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        return sum(t.chunks_expected for t in self.tasks)


def parse_downres(text: str) -> list[int]:
    """'1,2,3', '1-9', '1-3,5' -> sorted distinct scales (ValueError with a clear message)."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(
                f"--downres wants scales like 1,2,3 or a range like 1-9, got {text!r}"
            ) from None
        if a < 1 or b < a:
            raise ValueError(
                f"--downres scales must be >= 1 and ranges ascending (scale 0 is exported, "
                f"never downsampled), got {part!r}"
            )
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(f"--downres wants at least one scale, got {text!r}")
    return sorted(out)


def check_downres_scales(spec: VolumeSpec, scales: Sequence[int]) -> None:
    for s in scales:
        if s >= len(spec.scales):
            raise PlanError(
                f"--downres asks for s{s}, but the spec has only {len(spec.scales)} scales "
                f"(s0..s{len(spec.scales) - 1})"
            )
        problem = downres_geometry_problem(spec.scales[s - 1], spec.scales[s])
        if problem:
            raise PlanError(f"cannot downsample into scale {s}: {problem}")


def list_shard_files(dest: str, scale: Scale, context: ts.Context | None = None) -> dict[int, str]:
    """{shard number: file name} of DEST/<scale key>/*.shard. Names that are not a shard of
    this scale (temp files, foreign files) are ignored."""
    spec = kvstore_spec(dest)
    spec["path"] = spec["path"] + scale.key + "/"
    try:
        kv = ts.KvStore.open(spec, context=context or io_context()).result()
        keys = kv.list().result()
    except ValueError as e:
        raise OutputError(f"cannot list {dest}/{scale.key}/: {e}") from None
    total = num_shards(scale)
    found = {}
    for key in keys:
        name = bytes(key).decode(errors="replace")
        stem, _, ext = name.partition(".")
        if ext != "shard" or "/" in stem or not stem:
            continue
        try:
            n = int(stem, 16)
        except ValueError:
            continue
        if n < total and shard_name(scale, n) == stem:
            found[n] = name
    return found


def child_shards_of(parent: Scale, child: Scale, parent_shard: int) -> list[int]:
    """Output shards of `child` that parent shard `parent_shard` feeds: its chunk bbox in
    voxels, halved, to child chunks (clamped to the child grid), stepped at child-shard
    granularity."""
    plo, phi = shard_bounds(parent, parent_shard)
    if any(h <= low for low, h in zip(plo, phi, strict=True)):
        return []  # a shard number past the grid edge holds no chunk
    lo, hi = [], []
    for d in range(3):
        vlo = plo[d] * parent.chunk_size[d] // 2
        vhi = min(math.ceil(min(phi[d] * parent.chunk_size[d], parent.size[d]) / 2), child.size[d])
        lo.append(min(vlo // child.chunk_size[d], child.grid[d]))
        hi.append(min(-(-vhi // child.chunk_size[d]), child.grid[d]))
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return []
    step = shard_shape(child)
    found = set()
    for z in range(lo[2] - lo[2] % step[2], hi[2], step[2]):
        for y in range(lo[1] - lo[1] % step[1], hi[1], step[1]):
            for x in range(lo[0] - lo[0] % step[0], hi[0], step[0]):
                found.add(shard_of_chunk(child, (max(x, lo[0]), max(y, lo[1]), max(z, lo[2]))))
    return sorted(found)


def _parent_sizes(dest: str, parent: Scale, shards: Sequence[int]) -> dict[int, int]:
    """File size of each parent shard (from its shard index: one small read per shard, all in
    flight at once)."""
    store = ScaleStore(dest, parent, io_context(threads=8))
    index_len = 16 << parent.sharding.minishard_bits
    futures = {
        s: store.base.read(store.shard_file(s).encode(), byte_range=slice(0, index_len))
        for s in shards
    }
    sizes = {}
    for s, f in futures.items():
        got = f.result()
        if got.state == "value":
            entries = np.frombuffer(bytes(got.value), dtype="<u8")
            sizes[s] = index_len + int(entries[1::2].max(initial=0))
    return sizes


def plan_downsample_scale(
    plan: Plan,
    scale: int,
    *,
    method: str = "mode",
    only_missing: bool = False,
) -> ScalePlan:
    """The downsample tasks of `scale` (targets from the parent's shard files in DEST)."""
    if method not in DOWNSAMPLE_METHODS:
        raise PlanError(f"--downsample-method must be one of {DOWNSAMPLE_METHODS}, got {method!r}")
    check_downres_scales(plan.spec, [scale])
    parent, child = plan.spec.scales[scale - 1], plan.spec.scales[scale]
    try:
        parents = list_shard_files(plan.dest, parent)
    except OutputError as e:
        raise PlanError(str(e)) from None
    feeds: dict[int, list[int]] = {}  # child shard -> parent shards
    fan_out: dict[int, int] = {}  # parent shard -> number of child shards it feeds
    for ps in sorted(parents):
        children = child_shards_of(parent, child, ps)
        fan_out[ps] = len(children)
        for cs in children:
            feeds.setdefault(cs, []).append(ps)
    out = ScalePlan(scale=scale, parent_shards=len(parents), targets=len(feeds))
    targets = sorted(feeds)
    if only_missing and targets:
        existing = list_shard_files(plan.dest, child)
        out.existing_skipped = sum(1 for t in targets if t in existing)
        targets = [t for t in targets if t not in existing]
    sizes = _parent_sizes(plan.dest, parent, sorted({p for t in targets for p in feeds[t]}))
    for cs in targets:
        chunks = shard_chunk_count(child, cs)
        known = [sizes[p] / fan_out[p] for p in feeds[cs] if p in sizes]
        parent_bytes = sum(known) if len(known) == len(feeds[cs]) else None
        out.tasks.append(
            ShardTask(
                run_id=plan.run_id,
                scale=scale,
                shard=cs,
                shard_name=shard_name(child, cs),
                kind="downsample",
                sources=(),
                dest=plan.dest,
                label_mode=plan.label_mode,
                tier=pick_tier(estimate_downsample_bytes(scale, chunks, parent_bytes)),
                chunks_expected=chunks,
                downsample_method=method,
            )
        )
    return out


def scale_plan_as_plan(plan: Plan, scale_plan: ScalePlan) -> Plan:
    """A `Plan` of one scale's downsample tasks, for `run_embedded`."""
    return Plan(
        run_id=plan.run_id,
        source=Path(plan.source),
        dest=plan.dest,
        spec=plan.spec,
        label_mode=plan.label_mode,
        scales=[scale_plan.scale],
        tasks=list(scale_plan.tasks),
    )

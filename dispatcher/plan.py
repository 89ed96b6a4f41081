"""Planning: scan a DVID export + spec into one task per output shard (task creation only;
publishing and execution live elsewhere)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dvid2ng.backends.base import ShardRecord
from dvid2ng.dvidexport.reader import ExportFile, list_export
from dvid2ng.schemas.sharding import shard_name, shard_of_dvid_file
from dvid2ng.schemas.spec import SpecError, VolumeSpec
from dvid2ng.schemas.task import ShardTask, SourceObject
from dvid2ng.schemas.tiers import pick_tier

# Stored bytes per chunk seen in production (formats.md §11.2), used for the memory estimate:
# the worker holds every encoded chunk of its shard until the one commit, then the shard file.
BYTES_PER_CHUNK = {0: 13932, 1: 27919, 2: 44482, 3: 78376, 4: 130244, 5: 199396, 6: 258999}
WORKER_BASE_BYTES = 400 * 2**20  # interpreter, numba, tensorstore, one record batch


class PlanError(ValueError):
    """The export cannot be converted with this spec; nothing was started."""


@dataclass
class Plan:
    run_id: str
    source: Path
    dest: str
    spec: VolumeSpec
    label_mode: str
    scales: list[int]
    tasks: list[ShardTask] = field(default_factory=list)

    @property
    def total_chunks(self) -> int:
        return sum(t.chunks_expected for t in self.tasks)

    def records(self) -> list[ShardRecord]:
        return [
            ShardRecord(
                run_id=self.run_id,
                key=t.key,
                scale=t.scale,
                shard=t.shard,
                tier=t.tier,
                chunks_expected=t.chunks_expected,
            )
            for t in self.tasks
        ]


def run_id_for(source: Path, dest: str, spec: VolumeSpec, label_mode: str) -> str:
    """Stable id of a conversion: the same inputs resume the same run."""
    ident = {
        "source": str(source.resolve()),
        "dest": dest,
        "info": spec.info(),
        "labels": label_mode,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def count_csv_chunks(csv: Path | None) -> int:
    """Rows of a chunk-index CSV (comment and header lines excluded); 0 when there is none."""
    if csv is None:
        return 0
    with open(csv, "rb") as f:
        lines = [ln for ln in f.read().split(b"\n") if ln.strip()]
    return max(0, sum(1 for ln in lines if not ln.startswith(b"#")) - 1)


def estimate_memory_bytes(scale: int, chunks: int, arrow_bytes: int) -> int:
    per_chunk = BYTES_PER_CHUNK.get(scale, 260_000)
    if chunks == 0:  # no CSV: assume the file is mostly chunk payload of the usual size
        chunks = max(1, arrow_bytes // max(1, per_chunk // 3))
    return WORKER_BASE_BYTES + int(2.5 * chunks * per_chunk)


def plan_transcode(
    source: Path,
    dest: str,
    spec: VolumeSpec,
    *,
    scales: Sequence[int] | None = None,
    label_mode: str = "labels",
) -> Plan:
    if not source.is_dir():
        raise PlanError(
            f"SOURCE {source} is not a directory (expected a DVID export with s0/, s1/, ...)"
        )
    try:
        export = list_export(source)
    except ValueError as e:
        raise PlanError(str(e)) from None
    if not export:
        raise PlanError(f"SOURCE {source} holds no s<N>/ folders with .arrow files")
    chosen = sorted(export) if scales is None else sorted(set(scales))
    for s in chosen:
        if s >= len(spec.scales):
            raise PlanError(
                f"scale {s} requested/present in the export, but the spec has only {len(spec.scales)} scales"
            )
        if s not in export:
            raise PlanError(f"--scales asks for s{s}, but {source}/s{s}/ holds no .arrow files")
    plan = Plan(run_id_for(source, dest, spec, label_mode), source, dest, spec, label_mode, chosen)
    for s in chosen:
        plan.tasks.extend(_scale_tasks(plan, s, export[s]))
    return plan


def _scale_tasks(plan: Plan, s: int, files: list[ExportFile]) -> list[ShardTask]:
    scale = plan.spec.scales[s]
    by_shard: dict[int, ExportFile] = {}
    tasks = []
    for f in sorted(files, key=lambda f: f.stem):
        try:
            shard = shard_of_dvid_file(scale, f.stem)
        except ValueError as e:
            raise PlanError(f"{f.arrow}: {e}") from None
        if shard in by_shard:
            raise PlanError(
                f"{f.arrow} and {by_shard[shard].arrow} both map to output shard "
                f"{shard_name(scale, shard)} of scale {s}: the export's file naming does not match this "
                "spec's sharding (wrong spec, or non-cubic shards, formats.md §2.7.2)"
            )
        by_shard[shard] = f
        chunks = count_csv_chunks(f.csv)
        tasks.append(
            ShardTask(
                run_id=plan.run_id,
                scale=s,
                shard=shard,
                shard_name=shard_name(scale, shard),
                kind="transcode",
                sources=(
                    SourceObject(
                        arrow=str(f.arrow),
                        csv=str(f.csv) if f.csv else "",
                        size=f.size,
                        generation=str(f.mtime_ns),
                    ),
                ),
                dest=plan.dest,
                label_mode=plan.label_mode,
                tier=pick_tier(estimate_memory_bytes(s, chunks, f.size)),
                chunks_expected=chunks,
            )
        )
    return tasks


def check_spec(path: str | os.PathLike) -> VolumeSpec:
    try:
        return VolumeSpec.load(path)
    except SpecError as e:
        raise PlanError(str(e)) from None

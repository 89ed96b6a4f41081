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
from dvid2ng.dvidexport.storage import is_gcs, source_file
from dvid2ng.schemas.dvid import ExportFormatError
from dvid2ng.schemas.sharding import (
    dvid_name_collision,
    dvid_shard_dim_voxels,
    shard_name,
    shard_of_dvid_file,
    shard_shape,
)
from dvid2ng.schemas.spec import (
    Scale,
    Sharding,
    SpecError,
    VolumeSpec,
    dvid_chunk_size_problem,
    scale_z_compress,
)
from dvid2ng.schemas.task import ShardTask, SourceObject
from dvid2ng.schemas.tiers import pick_tier
from dvid2ng.worker.sources import task_fingerprint

# The worker's memory, measured (bench/bench_memory.py, docs/performance.md "Memory model"):
# the process with its libraries, plus the gzipped chunks of its shard, which the one
# TensorStore transaction holds until the commit and then writes out as the shard file.
# Fit over shards of 258 (real mCNS), 1K, 8K and 32K chunks, 1 and 2 threads, with the fleet's
# clients loaded: peak = 254 MiB + 1.18 x gzipped shard. Rounded up so that the estimate errs
# high (+1-3 % on s0-like shards, +10 % on a dense one): a low estimate is an OOM kill and a
# retry one tier up, a high one only a little unused memory.
WORKER_BASE_BYTES = 260 * 2**20  # interpreter, NumPy, Numba + kernels, TensorStore, pyarrow,
# the fleet's Pub/Sub, Firestore and Storage clients, the reader's blocks and threads
MEMORY_PER_GZIP_BYTE = 1.2  # peak bytes per gzipped byte of the shard
# The gzipped shard from the source: a DVID export record is its zstd block and label lists
# (about as many bytes as the gzipped compressed_segmentation chunk they become: 0.95 on the
# real mCNS shard, 1.01 on the generated s0-like ones, 0.82 on a dense one) plus ~600 bytes of
# Arrow framing.
GZIP_PER_PAYLOAD_BYTE = 1.0
IPC_BYTES_PER_RECORD = 600


class PlanError(ValueError):
    """The export cannot be converted with this spec; nothing was started."""


@dataclass
class Plan:
    run_id: str
    source: Path | str  # a local folder, or a gs:// URL
    dest: str
    spec: VolumeSpec
    label_mode: str
    scales: list[int]
    tasks: list[ShardTask] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said before the run starts
    unplanned_scales: list[int] = field(default_factory=list)  # in the spec, no data, no plan
    z_compress: int = 0  # s0 keeps every (N+1)-th Z slice (formats.md §8)

    @property
    def total_chunks(self) -> int:
        return sum(t.chunks_expected for t in self.tasks)

    def run_config(self) -> dict[str, object]:
        """What the state records of the run (status and operators read it)."""
        return {
            "source": source_name(self.source),
            "dest": self.dest,
            "label_mode": self.label_mode,
            "scales": self.scales,
            "unplanned_scales": self.unplanned_scales,
            "z_compress": self.z_compress,
        }

    def missing_scales_note(self) -> str | None:
        """The line that says which scales of the spec this run leaves without data."""
        if not self.unplanned_scales:
            return None
        return (
            f"scales {format_ranges(self.unplanned_scales)} of the spec have no data yet: "
            f"SOURCE has no s<N>/ folder for them; build them by downsampling "
            f"(--downres {format_ranges(self.unplanned_scales)}) or export them from DVID"
        )

    def records(self) -> list[ShardRecord]:
        return [
            ShardRecord(
                run_id=self.run_id,
                key=t.key,
                scale=t.scale,
                shard=t.shard,
                tier=t.tier,
                chunks_expected=t.chunks_expected,
                source=task_fingerprint(t),
            )
            for t in self.tasks
        ]


def format_ranges(values: Sequence[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> "1-3,5,7-8"."""
    out: list[str] = []
    vals = sorted(set(values))
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out)


def run_id_for(
    source: Path | str, dest: str, spec: VolumeSpec, label_mode: str, z_compress: int = 0
) -> str:
    """Stable id of a conversion: the same inputs resume the same run."""
    ident = {
        "source": source_name(source) if is_gcs(source) else str(Path(source).resolve()),
        "dest": dest,
        "info": spec.info(),
        "labels": label_mode,
    }
    if z_compress:  # absent when 0, so runs planned before --z-compress keep their id
        ident["z_compress"] = z_compress
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def count_csv_chunks(csv: Path | str | None) -> int:
    """Rows of a chunk-index CSV (comment and header lines excluded); 0 when there is none."""
    if csv is None or csv == "":
        return 0
    lines = [ln for ln in source_file(csv).read_all().split(b"\n") if ln.strip()]
    return max(0, sum(1 for ln in lines if not ln.startswith(b"#")) - 1)


def count_csv_rows(csvs: Sequence[str], threads: int = 16) -> dict[str, int]:
    """count_csv_chunks of many CSVs; on GCS in parallel (26,000 small GETs at mCNS scale)."""
    if not csvs:
        return {}
    if not any(is_gcs(c) for c in csvs):
        return {c: count_csv_chunks(c) for c in csvs}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(csvs, pool.map(count_csv_chunks, csvs), strict=True))


def estimate_gzip_bytes(chunks: int, arrow_bytes: int) -> int:
    """The gzipped size of the shard converted from an export file of `arrow_bytes` holding
    `chunks` records (0: unknown, no CSV; then the framing is counted as payload)."""
    payload = max(0, arrow_bytes - IPC_BYTES_PER_RECORD * max(0, chunks))
    return int(GZIP_PER_PAYLOAD_BYTE * payload)


def estimate_memory_bytes(scale: int, chunks: int, arrow_bytes: int) -> int:
    """Peak memory of a worker converting the shard (`scale` is kept for the callers: the
    measured model does not depend on it beyond what the file size says)."""
    return WORKER_BASE_BYTES + int(MEMORY_PER_GZIP_BYTE * estimate_gzip_bytes(chunks, arrow_bytes))


def plan_transcode(
    source: Path,
    dest: str,
    spec: VolumeSpec,
    *,
    scales: Sequence[int] | None = None,
    label_mode: str = "labels",
    z_compress: int = 0,
) -> Plan:
    """One task per DVID export file of the chosen scales. Raises PlanError, naming the file or
    scale and a fix, for everything that would otherwise lose data silently."""
    if not is_gcs(source):
        source = Path(source)
        if not source.is_dir():
            what = "does not exist" if not source.exists() else "is not a directory"
            raise PlanError(
                f"SOURCE {source.absolute()} {what} (expected a DVID export with s0/, s1/, ...)"
            )
    try:
        export = list_export(source)
    except (ExportFormatError, OSError) as e:
        raise PlanError(str(e)) from None
    if not export:
        raise PlanError(
            f"SOURCE {source_name(source)} holds no s<N>/ folders (a DVID export has s0/, s1/, ...)"
        )
    present = sorted(export)
    chosen = present if scales is None else sorted(set(scales))
    for s in chosen:
        if s >= len(spec.scales):
            raise PlanError(
                f"scale {s} is {'present in the export' if scales is None else 'asked for'}, "
                f"but the spec has only {len(spec.scales)} scales (0-{len(spec.scales) - 1}); "
                f"choose --scales {format_ranges([x for x in chosen if x < len(spec.scales)]) or 0}"
            )
        folder = f"{source_name(source)}/s{s}"
        if s not in export:
            raise PlanError(
                f"--scales asks for s{s}, but {folder} does not exist; the export has "
                f"{', '.join(f's{x}' for x in present)}"
            )
        if not export[s]:
            others = [x for x in chosen if x != s and export.get(x)]
            raise PlanError(
                f"{folder} holds no .arrow files (an interrupted or failed export?); "
                + (
                    f"leave it out with --scales {format_ranges(others)}"
                    if others
                    else "re-export it"
                )
            )
        check_dvid_scale(spec.scales[s], chosen, z_compress)
    dest = normalized_dest(dest)
    plan = Plan(
        run_id_for(source, dest, spec, label_mode, z_compress),
        source,
        dest,
        spec,
        label_mode,
        chosen,
        z_compress=z_compress,
    )
    plan.notes.extend(spec.notes)
    for s in chosen:
        plan.tasks.extend(_scale_tasks(plan, s, export[s]))
    plan.unplanned_scales = [i for i in range(len(spec.scales)) if i not in chosen]
    return plan


def normalized_dest(dest: str) -> str:
    """DEST as every worker must read it: a local folder as an absolute path (a worker's
    current folder is not the dispatcher's), URLs as given."""
    if "://" in dest and not dest.startswith("file://"):
        return dest.rstrip("/")
    return str(Path(dest.removeprefix("file://")).absolute())


def source_name(source: Path | str) -> str:
    """SOURCE as messages and run ids name it: an absolute path or the gs:// URL."""
    return str(source).rstrip("/") if is_gcs(source) else str(Path(source).absolute())


def check_dvid_scale(scale: Scale, chosen: Sequence[int], z_compress: int = 0) -> None:
    """A scale converted from DVID export files must have DVID's block as its chunk (s0 of a
    Z-compressed run: 64x64x64/(N+1)), and shards DVID's cubic file naming can tell apart
    (formats.md §2.2, §2.7.2, §8)."""
    where = f"scale {scale.index} ({scale.key})"
    try:
        problem = dvid_chunk_size_problem(scale, z_compress)
    except SpecError as e:
        raise PlanError(str(e)) from None
    if problem:
        raise PlanError(f"{where}: {problem}")
    collision = dvid_name_collision(scale)
    if collision is None:
        return
    a, b, stem = collision
    others = [x for x in chosen if x != scale.index]
    fix = _cubic_minishard_bits(scale)
    raise PlanError(
        f"{where}: DVID names export files after cubes of {dvid_shard_dim_voxels(scale)} voxels, "
        f"but this scale's shards are {list(shard_shape(scale))} chunks, so shards "
        f"{shard_name(scale, a)} and {shard_name(scale, b)} (and others) would both be written "
        f"into the one file s{scale.index}/{stem}.arrow and cannot be told apart (formats.md "
        f"§2.7.2). Leave this scale out"
        + (f" with --scales {format_ranges(others)}" if others else "")
        + f" and build it by downsampling (--downres {scale.index})"
        + (
            f", or export it from DVID with minishard_bits {fix[0]} and shard_bits {fix[1]} "
            "(cubic shards)"
            if fix
            else ""
        )
    )


def _cubic_minishard_bits(scale: Scale) -> tuple[int, int] | None:
    """(minishard_bits, shard_bits) near the spec's whose shards DVID can name, if any."""
    sh = scale.sharding
    for m in (*range(sh.minishard_bits + 1, sh.minishard_bits + 3), *range(sh.minishard_bits)):
        shard_bits = max(0, scale.total_bits - sh.preshift_bits - m)
        candidate = Sharding(sh.preshift_bits, m, shard_bits)
        trial = Scale(
            scale.index, scale.key, scale.size, scale.chunk_size, scale.resolution,
            scale.voxel_offset, candidate,
        )  # fmt: skip
        if dvid_name_collision(trial) is None:
            return m, shard_bits
    return None


def _scale_tasks(plan: Plan, s: int, files: list[ExportFile]) -> list[ShardTask]:
    scale = plan.spec.scales[s]
    z_compress = scale_z_compress(s, plan.z_compress)
    csv_rows = count_csv_rows([f.csv_url for f in files if f.csv is not None])
    by_shard: dict[int, ExportFile] = {}
    tasks = []
    for f in sorted(files, key=lambda f: f.stem):
        try:
            shard = shard_of_dvid_file(scale, f.stem, z_compress)
        except ValueError as e:
            raise PlanError(f"{f.url}: {e}") from None
        if shard in by_shard:
            raise PlanError(
                f"{f.url} and {by_shard[shard].url} both map to output "
                f"shard {shard_name(scale, shard)} of scale {s}: the export's file naming does not "
                "match this spec's sharding (the spec given to DVID was another one?)"
            )
        by_shard[shard] = f
        chunks = csv_rows.get(f.csv_url, 0)
        memory = estimate_memory_bytes(s, chunks, f.size)
        tasks.append(
            ShardTask(
                run_id=plan.run_id,
                scale=s,
                shard=shard,
                shard_name=shard_name(scale, shard),
                kind="transcode",
                sources=(
                    SourceObject(
                        arrow=f.url,
                        csv=f.csv_url,
                        size=f.size,
                        generation=f.generation,
                    ),
                ),
                dest=plan.dest,
                label_mode=plan.label_mode,
                z_compress=z_compress,
                tier=pick_tier(memory),
                chunks_expected=chunks,
                memory_bytes=memory,
            )
        )
    return tasks


def check_spec(path: str | os.PathLike) -> VolumeSpec:
    """The spec, parsed, with the `info` it gives checked by TensorStore itself: a volume that
    TensorStore cannot open is refused before anything is written."""
    from dvid2ng.worker.output import info_problem

    try:
        spec = VolumeSpec.load(path)
    except SpecError as e:
        raise PlanError(str(e)) from None
    problem = info_problem(spec.info())
    if problem:
        raise PlanError(f"{Path(path).absolute()}: {problem}")
    return spec

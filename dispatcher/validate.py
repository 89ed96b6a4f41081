"""`dvid2ng validate-dvid`: check a DVID export before converting it.

Per file, in one streaming pass (memory stays flat: one record batch at a time, plus the CSV
index): every record's chunk lies in the output shard the file name stands for (DVID's cubic
names collide for non-cubic shards, formats.md §2.7.2), the CSV index agrees with the Arrow
records (rows, offsets, batch rows), no chunk appears twice, and the label lists have equal
lengths. Blocks are zstd-decompressed and fully decoded (all, or a uniform sample of N per file
with --sample N), and each block's label table must match its `labels` / `supervoxels` lists.
Across files: no two files may stand for the same output shard.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dvid2ng.dvidexport.reader import ExportFile, ExportFileReader, decompress_block, list_export
from dvid2ng.schemas.dvid import ExportFormatError
from dvid2ng.schemas.placement import INSIDE, OUTSIDE_VOLUME, naming_collision_risk, place_dvid_file
from dvid2ng.schemas.sharding import shard_name
from dvid2ng.schemas.spec import (
    Scale,
    SpecError,
    VolumeSpec,
    check_dvid_chunk_sizes,
    scale_z_compress,
)

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXAMPLES_PER_KIND = 5  # problems of one kind kept per file (all are counted)
PARALLEL_ABOVE_RECORDS = 50_000  # smaller exports are checked in this process

# --- results ------------------------------------------------------------------------------------


@dataclass
class Problem:
    kind: str  # name, collision, misplaced, duplicate-shard, format, decode, table, unreadable
    file: str
    message: str
    chunk: tuple[int, int, int] | None = None

    def __str__(self) -> str:
        where = f"chunk {self.chunk}: " if self.chunk else ""
        return f"{self.file}: {where}{self.message}"


@dataclass
class FileReport:
    scale: int
    stem: str
    file: str  # display name, s<N>/<stem>.arrow
    shard: int | None = None
    shard_name: str = ""
    has_csv: bool = False
    records: int = 0
    decoded: int = 0
    outside: int = 0  # past the volume edge inside the file's region (clipped, as DVID intends)
    zero_labels: int = 0  # records whose labels are all 0 (DVID before 2026-03-27 exported them)
    complete: bool = False  # the whole file was read
    problems: list[Problem] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, message: str, chunk: tuple[int, int, int] | None = None) -> None:
        n = self.problem_counts.get(kind, 0)
        self.problem_counts[kind] = n + 1
        if n < EXAMPLES_PER_KIND:
            self.problems.append(Problem(kind, self.file, message, chunk))

    @property
    def problem_total(self) -> int:
        return sum(self.problem_counts.values())


@dataclass
class ScaleReport:
    scale: int
    key: str
    files: list[FileReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # across files

    @property
    def problem_total(self) -> int:
        return len(self.problems) + sum(f.problem_total for f in self.files)

    def totals(self) -> dict[str, int]:
        return {
            "files": len(self.files),
            "records": sum(f.records for f in self.files),
            "decoded": sum(f.decoded for f in self.files),
            "outside": sum(f.outside for f in self.files),
            "zero_labels": sum(f.zero_labels for f in self.files),
            "problems": self.problem_total,
        }


# --- one file -------------------------------------------------------------------------------------


@dataclass
class _Sampled:
    chunk: tuple[int, int, int]
    labels: np.ndarray
    supervoxels: np.ndarray
    block_zstd: bytes
    uncompressed_size: int


def validate_file(
    f: ExportFile,
    scale: Scale,
    z_compress: int,
    sample: int | None,
    seed: int,
    on_record=None,
) -> FileReport:
    """Check one export file; never raises for bad input (everything goes into the report)."""
    from dvid2ng.dvidexport.reader import display_name

    rep = FileReport(f.scale, f.stem, display_name(f.arrow), has_csv=f.csv is not None)
    try:
        placement = place_dvid_file(scale, f.stem, z_compress)
        rep.shard, rep.shard_name = placement.shard, placement.shard_name
    except ValueError as e:
        placement = None
        rep.add("name", f"file name does not map to an output shard: {e}")
    other_shards: Counter[int | None] = Counter()
    first_misplaced: dict[int | None, tuple[int, int, int]] = {}
    rng = random.Random(f"{seed}:{f.scale}:{f.stem}")
    reservoir: list[_Sampled] = []
    try:
        from dvid2ng.dvidexport.storage import source_file

        arrow = source_file(f.arrow, f.gcs_generation, f.size)  # gs://: the listed generation
        with ExportFileReader(arrow, f.csv, name=rep.file) as reader:
            for rec in reader:
                rep.records += 1
                chunk = rec.chunk
                if placement is not None:
                    where = placement.where(chunk)
                    if where == OUTSIDE_VOLUME:
                        rep.outside += 1
                    elif where != INSIDE:
                        other = placement.shard_of(chunk)
                        other_shards[other] += 1
                        first_misplaced.setdefault(other, chunk)
                if not rec.labels.any():
                    rep.zero_labels += 1
                if sample is None:
                    _check_block(rep, rec.chunk, rec.labels, rec.supervoxels, rec)
                else:
                    _reservoir_add(reservoir, rec, sample, rep.records, rng)
                if on_record is not None:
                    on_record()
        rep.complete = True
    except ExportFormatError as e:
        where = ""
        if e.file and e.file != rep.file:  # the CSV index
            where = f"{e.file}" + (f" line {e.line}" if e.line else "") + ": "
        rep.add("format", where + e.cause, e.chunk)
    except OSError as e:
        rep.add("unreadable", f"cannot read: {e}")
    for s in reservoir:
        _check_block(rep, s.chunk, s.labels, s.supervoxels, s)
    if other_shards and placement is not None:
        _report_misplaced(rep, scale, placement.shard, other_shards, first_misplaced)
    return rep


def _reservoir_add(reservoir: list[_Sampled], rec, k: int, seen: int, rng: random.Random) -> None:
    """Uniform sample of k records (Algorithm R); copies, so record batches are not kept."""
    item = None
    if len(reservoir) < k:
        item = len(reservoir)
        reservoir.append(None)  # type: ignore[arg-type]
    else:
        j = rng.randrange(seen)
        if j < k:
            item = j
    if item is not None:
        reservoir[item] = _Sampled(
            rec.chunk,
            np.array(rec.labels),
            np.array(rec.supervoxels),
            bytes(rec.block_zstd),
            int(rec.uncompressed_size),
        )


def _check_block(rep: FileReport, chunk, labels, supervoxels, rec) -> None:
    from dvid2ng.kernels import KernelError, dvid_block_table, dvid_block_to_cseg

    rep.decoded += 1
    try:
        block = decompress_block(rec, rep.file)
    except ExportFormatError as e:
        rep.add("decode", e.cause, chunk)
        return
    try:
        table = dvid_block_table(block)
        dvid_block_to_cseg(block)  # decodes every sub-block and range-checks every value
    except KernelError as e:
        rep.add("decode", f"corrupt DVID block: {e}", chunk)
        return
    if len(table) != len(labels):
        rep.add(
            "table",
            f"the block's label table has {len(table)} entries but labels has {len(labels)} "
            "(they must match by position)",
            chunk,
        )
    elif not np.array_equal(table, supervoxels):
        diff = int(np.flatnonzero(table != supervoxels)[0])
        rep.add(
            "table",
            f"supervoxels differs from the block's label table at entry {diff} "
            f"({int(supervoxels[diff])} vs {int(table[diff])})",
            chunk,
        )


def _report_misplaced(rep, scale, shard, other_shards, first) -> None:
    named = shard_name(scale, shard)
    parts = []
    for other, n in sorted(other_shards.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        where = "outside the chunk grid" if other is None else f"shard {shard_name(scale, other)}"
        parts.append(f"{n} of {where} (first {first[other]})")
    collide = naming_collision_risk(scale)
    why = (
        f"DVID's file names collided: {collide}"
        if collide
        else "the file does not belong to this spec's sharding (wrong spec or scale?)"
    )
    rep.add(
        "collision" if collide else "misplaced",
        f"the file name stands for output shard {named}, but it also holds chunks "
        + "; ".join(parts)
        + f". {why}. Converting it would fail this shard.",
    )


# --- the whole export ---------------------------------------------------------------------------


class UsageError(Exception):
    pass


def validate_export(
    source: Path | str,
    spec: VolumeSpec,
    *,
    scales: list[int] | None = None,
    z_compress: int = 0,
    sample: int | None = None,
    seed: int = 0,
    jobs: int | None = 1,
    progress: bool = True,
) -> list[ScaleReport]:
    """Check the chosen scales of an export; `jobs` None picks one process for small exports
    (starting a process costs seconds) and one per CPU otherwise."""
    from dvid2ng.dispatcher.plan import count_csv_chunks
    from dvid2ng.dispatcher.scan_progress import ScanProgress

    try:
        export = list_export(source)
    except (OSError, ExportFormatError) as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # gs://: bucket missing, no credentials, ...
        raise UsageError(f"cannot list SOURCE {source}: {e}") from None
    if not export:
        raise UsageError(f"{source} holds no s<N>/ folders with .arrow files")
    chosen = sorted(export) if scales is None else sorted(set(scales))
    for s in chosen:
        if s not in export:
            raise UsageError(f"--scales asks for s{s}, but {source}/s{s}/ holds no .arrow files")
        if s >= len(spec.scales):
            raise UsageError(f"s{s} is in the export but the spec has {len(spec.scales)} scales")
    try:
        check_dvid_chunk_sizes(spec, chosen, z_compress)
    except SpecError as e:
        raise UsageError(str(e)) from None
    reports = {s: ScaleReport(s, spec.scales[s].key) for s in chosen}
    for s in chosen:
        risk = naming_collision_risk(spec.scales[s])
        if risk:
            reports[s].warnings.append(f"file-name collisions possible: {risk}")
    if not _has_export_log(source):
        reports[chosen[0]].warnings.append(
            "no export.log in SOURCE: DVID writes it when the export has finished"
        )
    files = [(s, f) for s in chosen for f in export[s]]
    total = sum(count_csv_chunks(f.csv) for _, f in files)
    if jobs is None:
        jobs = (os.cpu_count() or 1) if total >= PARALLEL_ABOVE_RECORDS else 1
    bar = ScanProgress(total or None, unit="chunk", desc="validating", enabled=progress)
    try:
        for rep in _run_files(files, spec, z_compress, sample, seed, jobs, bar):
            reports[rep.scale].files.append(rep)
    finally:
        bar.close()
    for s in chosen:
        _cross_file_checks(reports[s], spec.scales[s])
        reports[s].files.sort(key=lambda r: r.stem)
    return [reports[s] for s in chosen]


def _has_export_log(source: Path | str) -> bool:
    from dvid2ng.dvidexport.storage import source_file

    try:
        source_file(f"{str(source).rstrip('/')}/export.log").size()
        return True
    except Exception:  # missing (FileNotFoundError, or the GCS client's own errors)
        return False


def _run_files(files, spec, z_compress, sample, seed, jobs, bar):
    if jobs <= 1 or len(files) <= 1:
        for s, f in files:
            yield validate_file(
                f,
                spec.scales[s],
                scale_z_compress(s, z_compress),
                sample,
                seed,
                on_record=lambda: bar.update(1),
            )
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = [
            pool.submit(
                validate_file, f, spec.scales[s], scale_z_compress(s, z_compress), sample, seed
            )
            for s, f in files
        ]
        try:
            for fut in as_completed(futs):
                rep = fut.result()
                bar.update(rep.records, note=rep.file)
                yield rep
        except BaseException:
            for fut in futs:
                fut.cancel()
            raise


def _cross_file_checks(rep: ScaleReport, scale: Scale) -> None:
    by_shard: dict[int, list[str]] = {}
    for f in rep.files:
        if f.shard is not None:
            by_shard.setdefault(f.shard, []).append(f.file)
    for shard, names in sorted(by_shard.items()):
        if len(names) > 1:
            rep.problems.append(
                Problem(
                    "duplicate-shard",
                    ", ".join(sorted(names)),
                    f"{len(names)} files stand for the same output shard "
                    f"{shard_name(scale, shard)}: the export does not match this spec's "
                    "sharding (wrong spec, or non-cubic shard names, formats.md §2.7.2)",
                )
            )


# --- reporting ----------------------------------------------------------------------------------


def report_json(
    reports: list[ScaleReport], source: Path | str, spec_path: Path, args
) -> dict[str, Any]:
    return {
        "command": "validate-dvid",
        "ok": all(r.problem_total == 0 for r in reports),
        "source": str(source),
        "spec": str(spec_path),
        "z_compress": args.z_compress,
        "sample": args.sample,
        "scales": [
            {
                "scale": r.scale,
                "key": r.key,
                **r.totals(),
                "warnings": r.warnings,
                "problems": [_problem_json(p) for p in r.problems]
                + [_problem_json(p) for f in r.files for p in f.problems],
                "file_reports": [
                    {k: v for k, v in asdict(f).items() if k not in ("problems", "scale", "stem")}
                    | {"problems": [_problem_json(p) for p in f.problems]}
                    for f in r.files
                ],
            }
            for r in reports
        ],
    }


def _problem_json(p: Problem) -> dict[str, Any]:
    return {
        "kind": p.kind,
        "file": p.file,
        "chunk": list(p.chunk) if p.chunk else None,
        "message": p.message,
    }


def print_report(reports: list[ScaleReport], out=None) -> None:
    out = out or sys.stdout
    header = f"{'scale':<7}{'key':<18}{'files':>7}{'records':>13}{'decoded':>13}{'outside':>9}{'problems':>10}"
    print(header, file=out)
    for r in reports:
        t = r.totals()
        print(
            f"s{r.scale:<6}{r.key:<18}{t['files']:>7,}{t['records']:>13,}{t['decoded']:>13,}"
            f"{t['outside']:>9,}{t['problems']:>10,}",
            file=out,
        )
    for r in reports:
        for w in r.warnings:
            print(f"  note s{r.scale}: {w}", file=out)
        zero = sum(f.zero_labels for f in r.files)
        if zero:
            print(
                f"  note s{r.scale}: {zero:,} records have only background labels (DVID before "
                "2026-03-27 exported them; they produce no output)",
                file=out,
            )
        for p in r.problems:
            print(f"  PROBLEM s{r.scale} {p.kind}: {p}", file=out)
        for f in r.files:
            for p in f.problems:
                print(f"  PROBLEM {p.kind}: {p}", file=out)
            hidden = f.problem_total - len(f.problems)
            if hidden:
                print(
                    f"  ... {hidden:,} more problems in {f.file} "
                    f"({', '.join(f'{n:,} {k}' for k, n in f.problem_counts.items())})",
                    file=out,
                )


def run(args: argparse.Namespace) -> int:
    try:
        spec = VolumeSpec.load(args.spec)
    except SpecError as e:
        print(f"dvid2ng validate-dvid: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    jobs = args.jobs
    source = args.source if str(args.source).startswith("gs://") else Path(args.source)
    try:
        reports = validate_export(
            source,
            spec,
            scales=args.scales,
            z_compress=args.z_compress,
            sample=args.sample,
            seed=args.seed,
            jobs=jobs,
            progress=not args.no_progress,
        )
    except UsageError as e:
        print(f"dvid2ng validate-dvid: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ndvid2ng validate-dvid: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_report(reports)
    if args.json_report:
        args.json_report.write_text(
            json.dumps(report_json(reports, source, args.spec, args), indent=2)
        )
    bad = sum(r.problem_total for r in reports)
    if bad:
        print(f"dvid2ng validate-dvid: {bad:,} problems found", file=sys.stderr)
        return EXIT_PROBLEMS
    print("dvid2ng validate-dvid: no problems found", file=sys.stderr)
    return EXIT_OK

"""`dvid2ng verify SOURCE DEST`: prove a conversion complete from the files themselves.

For every scale of DEST/info:
* a scale with DVID export files (SOURCE/s<N>/): each source file stands for one output shard.
  Every shard is classified present, missing (the source has data, the output shard is absent),
  empty-source (absent, and rightly so: every source chunk is background), unexpected (an output
  shard no source file stands for) or corrupt (shard index or a minishard index unreadable,
  truncated or malformed). For present shards the chunk ids in the minishard indices are
  compared with the source's chunks: none may be foreign, and every source chunk the output
  lacks must be all background (see `verify_source` for what that costs).
* a scale without export files (built by downsampling its parent scale): every parent shard
  with data has its child shard, and the child holds no chunk without parent data.
* --values N: N random chunks per shard decoded on both sides and compared voxel by voxel
  (downsampled scales: recomputed from the parent with TensorStore's `mode` downsampling).

Output shards are read with byte ranges only (shard index, then minishard indices; chunks only
for --values), through TensorStore kvstores: local paths, file:// and gs:// alike.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dvid2ng.dispatcher.scan_progress import ScanProgress
from dvid2ng.dispatcher.verify_source import SourceChunks, SourceError, check_absent
from dvid2ng.dvidexport.reader import ExportFile, display_name, list_export
from dvid2ng.dvidexport.storage import is_gcs
from dvid2ng.kernels import CsegDecodeError, compressed_morton_codes, decode_cseg
from dvid2ng.kernels.morton_decode import decode_morton_codes
from dvid2ng.schemas.dvid import ExportFormatError
from dvid2ng.schemas.placement import FilePlacement, fast_shard_bounds, place_dvid_file
from dvid2ng.schemas.shard_format import split_chunk_ids
from dvid2ng.schemas.sharding import shard_name, shard_shape
from dvid2ng.schemas.spec import (
    Scale,
    SpecError,
    VolumeSpec,
    check_dvid_chunk_sizes,
    scale_z_compress,
)
from dvid2ng.worker.output import OutputError, read_info
from dvid2ng.worker.shard_reader import DEFAULT_WINDOW, Encodings, ShardContents, ShardReader

EXIT_OK, EXIT_GAPS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PRESENT, MISSING, EMPTY_SOURCE, UNEXPECTED, CORRUPT = (
    "present",
    "missing",
    "empty-source",
    "unexpected",
    "corrupt",
)
STATUSES = (PRESENT, MISSING, EMPTY_SOURCE, UNEXPECTED, CORRUPT)
PRINT_LIMIT = 100  # bad shards listed per scale in the table (all are in --json-report)

# --- results ------------------------------------------------------------------------------------


@dataclass
class ShardResult:
    shard: int
    name: str  # "<hex>.shard"
    status: str = PRESENT
    source: str = ""  # display name of the export file (transcode scales)
    source_records: int = 0
    source_chunks: int = 0  # records inside the shard and the volume
    zero_chunks: int = 0  # source chunks found all background (and rightly absent)
    output_chunks: int = 0
    output_bytes: int = 0
    values_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        return self.status in (MISSING, UNEXPECTED, CORRUPT) or bool(self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "name": self.name,
            "status": self.status,
            "ok": not self.bad,
            "source": self.source or None,
            "source_records": self.source_records,
            "source_chunks": self.source_chunks,
            "zero_chunks": self.zero_chunks,
            "output_chunks": self.output_chunks,
            "output_bytes": self.output_bytes,
            "values_checked": self.values_checked,
            "problems": self.problems,
        }


@dataclass
class ScaleResult:
    scale: int
    key: str
    kind: str  # "transcode" (from export files) or "downsample" (from the parent scale)
    shards: list[ShardResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # not tied to one shard
    notes: list[str] = field(default_factory=list)
    requests: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.shards:
            out[r.status] += 1
        return out

    @property
    def bad_shards(self) -> list[ShardResult]:
        return [r for r in self.shards if r.bad]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_shards

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "key": self.key,
            "kind": self.kind,
            "ok": self.ok,
            "counts": self.counts(),
            "bad_shards": len(self.bad_shards),
            "source_chunks": sum(r.source_chunks for r in self.shards),
            "zero_chunks": sum(r.zero_chunks for r in self.shards),
            "output_chunks": sum(r.output_chunks for r in self.shards),
            "output_bytes": sum(r.output_bytes for r in self.shards),
            "values_checked": sum(r.values_checked for r in self.shards),
            "requests": self.requests,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "problems": self.problems,
            "notes": self.notes,
            "shards": [r.to_json() for r in self.shards],
        }


class UsageError(Exception):
    pass


def _context(window: int):
    """TensorStore I/O for many small range reads at once: `window` shards in flight, each with
    its minishard index reads; no chunk cache (nothing is read twice). GCS keeps TensorStore's
    default of 32 concurrent requests."""
    import tensorstore as ts

    return ts.Context(
        {
            "data_copy_concurrency": {"limit": 4},
            "file_io_concurrency": {"limit": max(8, window)},
            "cache_pool": {"total_bytes_limit": 0},
        }
    )


@dataclass
class VerifyOptions:
    scales: list[int] | None = None
    values: int | None = None
    z_compress: int = 0
    label_mode: str = "labels"
    downsample_method: str | None = None  # None: from the pyramid record, else mode
    seed: int = 0
    window: int = DEFAULT_WINDOW
    progress: bool = True


# --- the volume -----------------------------------------------------------------------------------


def verify_volume(source: Path | str, dest: str, opts: VerifyOptions) -> list[ScaleResult]:
    """Check every chosen scale; raises UsageError for bad input (nothing checked)."""
    context = _context(opts.window)
    try:
        info = read_info(dest, context)
        spec = VolumeSpec.from_json(info, source=f"{dest}/info")
    except (OutputError, SpecError, ValueError) as e:
        raise UsageError(str(e)) from None
    try:
        export = list_export(source)
    except (OSError, ExportFormatError) as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # gs://: bucket missing, no credentials, ...
        raise UsageError(f"cannot list SOURCE {source}: {e}") from None
    extra = [s for s in export if s >= len(spec.scales)]
    if extra:
        raise UsageError(
            f"SOURCE has s{extra[0]}/ but {dest}/info has only {len(spec.scales)} scales "
            "(wrong SOURCE or DEST?)"
        )
    chosen = list(range(len(spec.scales))) if opts.scales is None else sorted(set(opts.scales))
    for s in chosen:
        if s >= len(spec.scales):
            raise UsageError(f"--scales asks for s{s}, but {dest}/info has {len(spec.scales)}")
        if s == 0 and 0 not in export:
            raise UsageError(f"{source}/s0/ holds no .arrow files: scale 0 has no source")
    try:
        check_dvid_chunk_sizes(
            spec, [s for s in chosen if s in export], opts.z_compress, f"{dest}/info"
        )
    except SpecError as e:
        raise UsageError(str(e)) from None
    results = []
    for s in chosen:
        enc = Encodings.from_info_scale(info["scales"][s])
        started = time.monotonic()
        if s in export:
            res = _verify_transcode_scale(spec.scales[s], export[s], dest, enc, context, opts)
        else:
            parent_enc = Encodings.from_info_scale(info["scales"][s - 1])
            res = _verify_downsample_scale(
                spec.scales[s - 1], spec.scales[s], dest, parent_enc, enc, context, opts
            )
        res.seconds = time.monotonic() - started
        results.append(res)
    return results


# --- scales converted from export files -------------------------------------------------------------


def _verify_transcode_scale(
    scale: Scale,
    files: list[ExportFile],
    dest: str,
    enc: Encodings,
    context,
    opts: VerifyOptions,
) -> ScaleResult:
    res = ScaleResult(scale.index, scale.key, "transcode")
    reader = ShardReader(dest, scale, enc, context)
    present, others = reader.list_shards()
    if others:
        res.notes.append(
            f"{len(others)} other files in {scale.key}/ (not shard names): "
            + ", ".join(others[:5])
            + (" ..." if len(others) > 5 else "")
        )
    z = scale_z_compress(scale.index, opts.z_compress)
    by_shard: dict[int, ExportFile] = {}
    placements: dict[int, FilePlacement] = {}
    for f in files:
        try:
            placement = place_dvid_file(scale, f.stem, z)
            shard = placement.shard
        except ValueError as e:
            res.problems.append(f"{display_name(f.arrow)}: {e}")
            continue
        if shard in by_shard:
            res.problems.append(
                f"{display_name(f.arrow)} and {display_name(by_shard[shard].arrow)} both stand "
                f"for output shard {shard_name(scale, shard)} (run validate-dvid)"
            )
            continue
        by_shard[shard] = f
        placements[shard] = placement
    shards = sorted(set(by_shard) | set(present))
    contents = reader.iter_contents([s for s in shards if s in present], window=opts.window)
    bar = ScanProgress(
        len(shards), unit="shard", desc=f"verify s{scale.index}", enabled=opts.progress
    )
    bad = 0
    try:
        for shard in shards:
            got = next(contents) if shard in present else None
            r = ShardResult(shard, reader.file_name(shard))
            if got is not None:
                r.output_bytes = got.file_size
            f = by_shard.get(shard)
            if f is None:
                _classify_unexpected(r, got)
            else:
                _check_against_source(r, got, f, placements[shard], z, reader, opts)
            if got is not None:  # after --values, whose chunk reads count too
                res.requests += got.requests
                res.bytes_read += got.bytes_read
            res.shards.append(r)
            bad += r.bad
            bar.update(1, note=f"{bad} bad")
    finally:
        bar.close()
    return res


def _classify_unexpected(r: ShardResult, got: ShardContents | None) -> None:
    assert got is not None
    r.status = UNEXPECTED  # even if unreadable: no file should be here at all
    r.output_chunks = got.chunk_count
    what = f"it holds {got.chunk_count} chunks" if got.ok else f"a file is there ({got.error})"
    r.problems.append(
        f"no source file stands for this shard, yet {what}: left from another conversion, or "
        "a wrong SOURCE or spec?"
    )


def _check_against_source(
    r: ShardResult,
    got: ShardContents | None,
    f: ExportFile,
    placement: FilePlacement,
    z: int,
    reader: ShardReader,
    opts: VerifyOptions,
) -> None:
    r.source = display_name(f.arrow)
    try:
        src = SourceChunks.load(f, r.source, placement, z + 1, opts.label_mode == "supervoxels")
    except SourceError as e:
        r.problems.append(f"source unreadable: {e}")
        if got is None:
            r.status = MISSING
        elif not got.ok:
            r.status = CORRUPT
            r.problems.append(got.error)
        return
    r.source_records = src.records
    r.source_chunks = len(src.inside_ids)
    if src.misplaced:
        r.problems.append(
            f"the source file holds {src.misplaced} chunks of other shards (first "
            f"{src.first_misplaced}): DVID file names collided (run validate-dvid)"
        )
    if got is not None and not got.ok:
        r.status = CORRUPT
        r.problems.append(got.error)
        return
    try:
        if got is None:
            _missing_or_empty(r, src)
        else:
            _compare_present(r, got, src)
            if opts.values:
                _compare_values(r, got, src, reader, opts)
    except SourceError as e:
        r.problems.append(f"source unreadable: {e}")


def _missing_or_empty(r: ShardResult, src: SourceChunks) -> None:
    chunks = [tuple(int(v) for v in c) for c in src.inside]
    check = check_absent(src, chunks, stop_at_first=True)
    if check.with_data:
        r.status = MISSING
        r.problems.append(
            f"output shard missing: source {src.name} ({src.records:,} records) has data, "
            f"e.g. chunk {check.first_with_data}"
        )
    else:
        r.status = EMPTY_SOURCE
        r.zero_chunks = check.zero


def _compare_present(r: ShardResult, got: ShardContents, src: SourceChunks) -> None:
    r.output_chunks = got.chunk_count
    if np.array_equal(got.chunk_ids, src.inside_ids):
        return  # the common case: every source chunk stored, nothing else
    foreign = np.setdiff1d(got.chunk_ids, src.inside_ids, assume_unique=True)
    if len(foreign):
        coords = decode_morton_codes(foreign[:1], src.scale.bits)[0]
        r.problems.append(
            f"{len(foreign)} output chunks have no source record (first chunk "
            f"{tuple(int(v) for v in coords)}, id {int(foreign[0])})"
        )
    absent = np.setdiff1d(src.inside_ids, got.chunk_ids, assume_unique=True)
    if len(absent):
        check = check_absent(src, src.coords_of_ids(absent), stop_at_first=False)
        r.zero_chunks = check.zero
        if check.with_data:
            r.problems.append(
                f"{check.with_data} source chunks with data are missing from the output shard "
                f"(first {check.first_with_data}); {r.output_chunks} stored, "
                f"{r.source_chunks} in the source, {check.zero} of them background"
            )


def _compare_values(
    r: ShardResult, got: ShardContents, src: SourceChunks, reader: ShardReader, opts
) -> None:
    n = len(src.inside)
    if not n:
        return
    rng = random.Random(f"{opts.seed}:{src.scale.index}:{r.shard}")
    rows = sorted(rng.sample(range(n), min(opts.values, n)))
    chunks = [tuple(int(v) for v in src.inside[i]) for i in rows]
    ids = compressed_morton_codes(np.array(chunks, np.int64), src.scale.bits)
    futures = {c: reader.read_chunk_async(got, int(i)) for c, i in zip(chunks, ids, strict=True)}
    for rec in src.iter_records(chunks):
        want = src.volume(rec)
        fut = futures[rec.chunk]
        if fut is None:
            have = np.zeros_like(want)
        else:
            try:
                raw = bytes(fut.result().value)
                have = decode_cseg(reader.decode_chunk_bytes(raw), want.shape)
            except (CsegDecodeError, OSError, ValueError) as e:
                r.problems.append(f"output chunk {rec.chunk} cannot be decoded: {e}")
                continue
        r.values_checked += 1
        _report_difference(r, rec.chunk, want, have, "source")


def _report_difference(r: ShardResult, chunk, want, have, what: str) -> None:
    if np.array_equal(want, have):
        return
    diff = np.argwhere(want != have)
    z, y, x = (int(v) for v in diff[0])
    r.problems.append(
        f"values differ in chunk {chunk}: {len(diff):,} of {want.size:,} voxels, first at "
        f"(x={x}, y={y}, z={z}) within the chunk: {what} {int(want[z, y, x])}, output "
        f"{int(have[z, y, x])}"
    )


# --- scales built by downsampling ---------------------------------------------------------------------


def downsample_factors(parent: Scale, child: Scale) -> tuple[int, int, int]:
    """Per-axis factor between two scales, from their resolutions (must be whole numbers)."""
    out = []
    for d in range(3):
        f = child.resolution[d] / parent.resolution[d]
        if f < 1 or abs(f - round(f)) > 1e-6:
            raise UsageError(
                f"scale {child.index} ({child.key}) has no export files, so it should be a "
                f"downsampling of scale {parent.index}, but its resolution "
                f"{list(child.resolution)} is not a whole multiple of {list(parent.resolution)}"
            )
        out.append(round(f))
    return tuple(out)  # type: ignore[return-value]


def _child_chunk_ranges(parent: Scale, child: Scale, f, coords: np.ndarray):
    """Child chunk range [lo, hi] (inclusive) each parent chunk's voxels fall into."""
    cp = np.asarray(parent.chunk_size)
    cc = np.asarray(child.chunk_size)
    size = np.asarray(parent.size)
    f = np.asarray(f)
    v0 = coords * cp
    v1 = np.minimum((coords + 1) * cp, size)  # exclusive
    lo = (v0 // f) // cc
    hi = ((v1 - 1) // f) // cc
    return lo, np.minimum(hi, np.asarray(child.grid) - 1)


def _child_chunks_of(parent: Scale, child: Scale, f, parent_ids: np.ndarray) -> np.ndarray:
    """(n, 3) distinct child chunks fed by parent chunks `parent_ids`."""
    coords = decode_morton_codes(parent_ids, parent.bits)
    lo, hi = _child_chunk_ranges(parent, child, f, coords)
    span = (hi - lo).max(axis=0, initial=0) if len(lo) else np.zeros(3, np.int64)
    parts = []
    for dx in range(int(span[0]) + 1):
        for dy in range(int(span[1]) + 1):
            for dz in range(int(span[2]) + 1):
                c = lo + np.array([dx, dy, dz])
                parts.append(c[(c <= hi).all(axis=1)])
    allc = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    return np.unique(allc, axis=0)


def _shards_in_box(scale: Scale, lo, hi) -> list[int]:
    """Shards overlapping the chunk box [lo, hi) (shards are aligned boxes of shard_shape)."""
    shape = shard_shape(scale)
    ranges = [
        range(lo[d] - lo[d] % shape[d], min(hi[d], scale.grid[d]), shape[d]) for d in range(3)
    ]
    from dvid2ng.schemas.sharding import shard_of_chunk

    return sorted(
        {shard_of_chunk(scale, (x, y, z)) for x in ranges[0] for y in ranges[1] for z in ranges[2]}
    )


def _box_to_child(parent: Scale, child: Scale, f, lo, hi):
    """Child chunk box [lo, hi) covering the parent chunk box [lo, hi)."""
    out_lo, out_hi = [], []
    for d in range(3):
        v0 = lo[d] * parent.chunk_size[d]
        v1 = min(hi[d] * parent.chunk_size[d], parent.size[d])
        out_lo.append((v0 // f[d]) // child.chunk_size[d])
        out_hi.append(min(child.grid[d], math.ceil(math.ceil(v1 / f[d]) / child.chunk_size[d])))
    return out_lo, out_hi


def _box_to_parent(parent: Scale, child: Scale, f, lo, hi):
    """Parent chunk box [lo, hi) whose voxels downsample into the child chunk box [lo, hi)."""
    out_lo, out_hi = [], []
    for d in range(3):
        v0 = lo[d] * child.chunk_size[d] * f[d]
        v1 = min(hi[d] * child.chunk_size[d], child.size[d]) * f[d]
        out_lo.append(v0 // parent.chunk_size[d])
        out_hi.append(min(parent.grid[d], math.ceil(v1 / parent.chunk_size[d])))
    return out_lo, out_hi


def _verify_downsample_scale(
    parent: Scale,
    child: Scale,
    dest: str,
    parent_enc: Encodings,
    enc: Encodings,
    context,
    opts: VerifyOptions,
) -> ScaleResult:
    res = ScaleResult(child.index, child.key, "downsample")
    f = downsample_factors(parent, child)
    res.notes.append(
        f"no export files: checked against scale {parent.index} ({parent.key}), factors {list(f)}"
    )
    preader = ShardReader(dest, parent, parent_enc, context)
    creader = ShardReader(dest, child, enc, context)
    parents_present, _ = preader.list_shards()
    present, others = creader.list_shards()
    if others:
        res.notes.append(f"{len(others)} other files in {child.key}/: " + ", ".join(others[:5]))
    if not parents_present and not present:
        res.problems.append(
            f"neither scale {parent.index} nor scale {child.index} has any shard file"
        )
        return res
    candidates: set[int] = set(present)
    for p in parents_present:
        lo, hi = fast_shard_bounds(parent, p)
        clo, chi = _box_to_child(parent, child, f, lo, hi)
        candidates.update(_shards_in_box(child, clo, chi))
    shards = sorted(candidates)
    # the parent shards feeding each child shard, read in one pipelined stream
    feeds: list[list[int]] = []
    for c in shards:
        lo, hi = fast_shard_bounds(child, c)
        plo, phi = _box_to_parent(parent, child, f, lo, hi)
        feeds.append([p for p in _shards_in_box(parent, plo, phi) if p in parents_present])
    parent_stream = preader.iter_contents([p for fl in feeds for p in fl], window=opts.window)
    child_stream = creader.iter_contents([c for c in shards if c in present], window=opts.window)
    vote = None
    if opts.values:
        method, origin = downsample_method_of(dest, child.index, opts.downsample_method)
        vote = ParentVote(dest, parent, f, method, context)
        res.notes.append(f"--values recomputes chunks with the {method} rule ({origin})")
    bar = ScanProgress(
        len(shards), unit="shard", desc=f"verify s{child.index}", enabled=opts.progress
    )
    sh = child.sharding
    bad = 0
    try:
        for c, fed_by in zip(shards, feeds, strict=True):
            r = ShardResult(c, creader.file_name(c))
            expected: list[np.ndarray] = []
            parent_problem = ""
            for _ in fed_by:
                pc = next(parent_stream)
                res.requests += pc.requests
                res.bytes_read += pc.bytes_read
                if not pc.ok:
                    parent_problem = f"parent shard {pc.name} is corrupt: {pc.error}"
                    continue
                kids = _child_chunks_of(parent, child, f, pc.chunk_ids)
                if len(kids):
                    ids = compressed_morton_codes(kids, child.bits)
                    shard_of, _ = split_chunk_ids(
                        ids, sh.preshift_bits, sh.minishard_bits, sh.shard_bits
                    )
                    expected.append(ids[shard_of == np.uint64(c)])
            want_ids = np.unique(np.concatenate(expected)) if expected else np.zeros(0, np.uint64)
            r.source = ", ".join(preader.file_name(p) for p in fed_by)
            r.source_chunks = len(want_ids)
            got = next(child_stream) if c in present else None
            if got is not None:
                r.output_bytes = got.file_size
            if parent_problem:
                r.problems.append(parent_problem)
            _classify_child(r, got, want_ids, parent.index)
            if opts.values and got is not None and got.ok and len(want_ids):
                _compare_downsampled(r, got, want_ids, child, creader, vote, opts)
            if got is not None:
                res.requests += got.requests
                res.bytes_read += got.bytes_read
            if got is not None or len(want_ids) or parent_problem:
                res.shards.append(r)  # else: a shard the parent's box touches without data
            bad += r.bad
            bar.update(1, note=f"{bad} bad")
    finally:
        bar.close()
    return res


def _classify_child(r: ShardResult, got, want_ids: np.ndarray, parent_index: int) -> None:
    if got is None:
        r.status = MISSING
        r.problems.append(
            f"output shard missing: parent shard(s) {r.source} at scale {parent_index} hold "
            f"data for {len(want_ids)} of its chunks"
        )
        return
    if not got.ok:
        r.status = CORRUPT
        r.problems.append(got.error)
        return
    r.output_chunks = got.chunk_count
    if not len(want_ids):
        r.status = UNEXPECTED
        r.problems.append(
            f"no parent shard at scale {parent_index} has data here, yet it holds "
            f"{got.chunk_count} chunks"
        )
        return
    foreign = np.setdiff1d(got.chunk_ids, want_ids, assume_unique=True)
    if len(foreign):
        r.problems.append(
            f"{len(foreign)} chunks have no parent data at scale {parent_index} (first id "
            f"{int(foreign[0])})"
        )
    # Chunks the parent feeds but the child lacks are not errors by themselves: the mode of
    # sparse labels can be 0. --values samples them as well.
    r.zero_chunks = len(np.setdiff1d(want_ids, got.chunk_ids, assume_unique=True))


class ParentVote:
    """The expected voxels of a downsampled chunk, recomputed from the parent scale as read by
    TensorStore: `mode` is TensorStore's own `ts.downsample(..., "mode")`; `dvid` (DVID's rule,
    background does not vote) votes the parent region with kernels.downsample_labels."""

    def __init__(self, dest: str, parent: Scale, factors, method: str, context) -> None:
        import tensorstore as ts

        from dvid2ng.worker.output import kvstore_spec

        if method == "dvid" and tuple(factors) != (2, 2, 2):
            raise UsageError(
                f"--downsample-method dvid recomputes 2x2x2 windows, but scale {parent.index + 1} "
                f"is {list(factors)} of scale {parent.index}"
            )
        vol = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": kvstore_spec(dest),
                "scale_index": parent.index,
            },
            read=True,
            context=context,
        ).result()
        self.parent = vol[ts.d[:].translate_to[0]]
        self.parent_size = parent.size
        self.factors = tuple(factors)
        self.method = method
        if method == "mode":
            self.view = ts.downsample(self.parent, [*self.factors, 1], method="mode")

    def chunk(self, origin, extent) -> np.ndarray:
        """ZYX voxels of the child region [origin, origin + extent) (x, y, z)."""
        (x0, y0, z0), (nx, ny, nz) = origin, extent
        if self.method == "mode":
            region = self.view[x0 : x0 + nx, y0 : y0 + ny, z0 : z0 + nz, 0]
            return np.asarray(region.read().result()).transpose(2, 1, 0)
        from dvid2ng.kernels.downsample import downsample_labels

        lo = [2 * v for v in (x0, y0, z0)]
        hi = [
            min(2 * (v + n), s)
            for v, n, s in zip((x0, y0, z0), extent, self.parent_size, strict=True)
        ]
        parent = self.parent[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2], 0].read().result()
        voted = downsample_labels(
            np.ascontiguousarray(np.asarray(parent).transpose(2, 1, 0)), "dvid"
        )
        return voted[:nz, :ny, :nx]


def _compare_downsampled(r, got, want_ids, child: Scale, creader, vote: ParentVote, opts) -> None:
    rng = random.Random(f"{opts.seed}:{child.index}:{r.shard}")
    picks = sorted(rng.sample(range(len(want_ids)), min(opts.values, len(want_ids))))
    ids = want_ids[picks]
    coords = decode_morton_codes(ids, child.bits)
    futures = [creader.read_chunk_async(got, int(i)) for i in ids]
    for cid, chunk, fut in zip(ids, coords, futures, strict=True):
        chunk = tuple(int(v) for v in chunk)
        origin = tuple(c * s for c, s in zip(chunk, child.chunk_size, strict=True))
        want = vote.chunk(origin, child.chunk_extent(chunk))
        if fut is None:
            have = np.zeros_like(want)
        else:
            try:
                have = decode_cseg(
                    creader.decode_chunk_bytes(bytes(fut.result().value)), want.shape
                )
            except (CsegDecodeError, OSError, ValueError) as e:
                r.problems.append(f"output chunk {chunk} (id {int(cid)}) cannot be decoded: {e}")
                continue
        r.values_checked += 1
        _report_difference(r, chunk, want, have, f"{vote.method} vote of the parent")


def downsample_method_of(dest: str, scale: int, given: str | None) -> tuple[str, str]:
    """(rule that built `scale`, where that came from): the flag, else the pyramid record in
    the local run state (DEST/.dvid2ng/pyramid.json), else TensorStore's mode."""
    if given:
        return given, "given"
    try:
        from dvid2ng.dispatcher.embedded import default_state_dir
        from dvid2ng.dispatcher.pyramid_run import METHODS_FILE

        path = default_state_dir(dest) / METHODS_FILE
        if path.exists():
            used = json.loads(path.read_text()).get(f"s{scale}")
            if used in ("mode", "dvid"):
                return used, f"from {path}"
    except (OSError, ValueError):
        pass
    return "mode", "default"


# --- reporting ----------------------------------------------------------------------------------


def report_json(results: list[ScaleResult], source: Path, dest: str, opts) -> dict[str, Any]:
    return {
        "command": "verify",
        "ok": all(r.ok for r in results),
        "source": str(source),
        "dest": dest,
        "z_compress": opts.z_compress,
        "label_mode": opts.label_mode,
        "values": opts.values,
        "scales": [r.to_json() for r in results],
    }


def print_report(results: list[ScaleResult], out=None) -> None:
    out = out or sys.stdout
    cols = ["shards", *STATUSES, "bad", "src chunks", "out chunks", "MB"]
    widths = [8, 9, 9, 14, 12, 9, 6, 14, 14, 12]
    print(
        f"{'scale':<7}{'key':<20}{'kind':<12}"
        + "".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True)),
        file=out,
    )
    for r in results:
        c = r.counts()
        vals = [
            len(r.shards),
            *(c[s] for s in STATUSES),
            len(r.bad_shards),
            sum(s.source_chunks for s in r.shards),
            sum(s.output_chunks for s in r.shards),
        ]
        mb = sum(s.output_bytes for s in r.shards) / 1e6
        print(
            f"s{r.scale:<6}{r.key:<20}{r.kind:<12}"
            + "".join(f"{v:>{w},}" for v, w in zip(vals, widths, strict=False))
            + f"{mb:>{widths[-1]},.1f}",
            file=out,
        )
    for r in results:
        for note in r.notes:
            print(f"  note s{r.scale}: {note}", file=out)
        for p in r.problems:
            print(f"  PROBLEM s{r.scale}: {p}", file=out)
        bad = r.bad_shards
        for s in bad[:PRINT_LIMIT]:
            print(
                f"  s{r.scale}/{s.name:<14} {s.status.upper():<13} {'; '.join(s.problems)}",
                file=out,
            )
        if len(bad) > PRINT_LIMIT:
            print(
                f"  ... {len(bad) - PRINT_LIMIT:,} more bad shards at s{r.scale} (see --json-report)",
                file=out,
            )


def _run_state(dest: str) -> tuple[dict[str, Any], str]:
    """(DEST's local run record, its path) or ({}, "") when there is none."""
    try:
        from dvid2ng.dispatcher.embedded import default_state_dir

        marker = default_state_dir(dest) / "run.json"
        if marker.exists():
            data = json.loads(marker.read_text())
            if isinstance(data, dict):
                return data, str(marker)
    except (OSError, ValueError):
        pass
    return {}, ""


def _label_mode_of(dest: str, given: str | None) -> tuple[str, str]:
    """(label mode, where it came from): the flag, else the local run state, else bodies."""
    if given:
        return given, "given"
    state, path = _run_state(dest)
    if state.get("label_mode") in ("labels", "supervoxels"):
        return state["label_mode"], f"from {path}"
    return "labels", "default"


def _z_compress_of(dest: str, given: int | None) -> tuple[int, str]:
    """(z_compress, where it came from): the flag, else the local run state, else 0."""
    if given is not None:
        return given, "given"
    state, path = _run_state(dest)
    if state.get("z_compress") in (1, 3, 7, 15, 31, 63):
        return state["z_compress"], f"from {path}"
    return 0, "default"


def run(args: argparse.Namespace) -> int:
    mode, origin = _label_mode_of(args.dest, args.label_mode)
    z_compress, z_origin = _z_compress_of(args.dest, args.z_compress)
    if z_origin.startswith("from"):
        print(f"dvid2ng verify: --z-compress {z_compress} ({z_origin})", file=sys.stderr)
    opts = VerifyOptions(
        scales=args.scales,
        values=args.values,
        z_compress=z_compress,
        label_mode=mode,
        downsample_method=args.downsample_method,
        seed=args.seed,
        window=args.window,
        progress=not args.no_progress,
    )
    if origin != "given":
        print(f"dvid2ng verify: label mode {mode} ({origin})", file=sys.stderr)
    source = args.source if is_gcs(args.source) else Path(args.source)
    try:
        results = verify_volume(source, args.dest, opts)
    except UsageError as e:
        print(f"dvid2ng verify: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ndvid2ng verify: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_report(results)
    if args.json_report:
        args.json_report.write_text(
            json.dumps(report_json(results, args.source, args.dest, opts), indent=1)
        )
    bad = sum(len(r.bad_shards) + len(r.problems) for r in results)
    if bad:
        print(
            f"dvid2ng verify: NOT complete: {bad:,} problems (shards listed above)", file=sys.stderr
        )
        return EXIT_GAPS
    print("dvid2ng verify: complete: every shard accounted for", file=sys.stderr)
    return EXIT_OK

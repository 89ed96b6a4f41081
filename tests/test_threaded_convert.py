"""One shard on several converter threads gives the same shard file, byte for byte, as on one,
and bad input is reported for the first bad record in file order, with nothing written.

The pool converts groups of 16 records out of order; only the ordered, bounded window between
it and the one TensorStore transaction makes the output and the error deterministic, so these
tests use a shard with many groups (1,024 records = 64 groups, 3 threads = 12 in flight) and
bad records far apart, in groups that are converting at the same time as others.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from bench.bench_s0 import make_synthetic_shard
from dvid2ng.dispatcher.plan import plan_transcode
from dvid2ng.dvidexport.reader import ExportFileReader, decompress_block
from dvid2ng.dvidexport.writer import write_export_file
from dvid2ng.schemas.spec import VolumeSpec
from dvid2ng.worker.errors import InputError
from dvid2ng.worker.outcome import DEFAULT_GZIP_LEVEL
from dvid2ng.worker.output import ScaleStore, io_context, write_info
from dvid2ng.worker.transcode import GROUP_RECORDS, transcode_shard

CHUNKS = 1024


@pytest.fixture(scope="module")
def shard_source(tmp_path_factory) -> Path:
    return make_synthetic_shard(CHUNKS, 30, root=tmp_path_factory.mktemp("threads"))


def _convert(source: Path, dest: Path, threads: int):
    spec = VolumeSpec.load(source / "spec.json")
    (task,) = plan_transcode(source, str(dest), spec, scales=[0]).tasks
    write_info(str(dest), spec.info())
    store = ScaleStore(str(dest), spec.scales[0], io_context())
    return transcode_shard(task, store, threads=threads), store, task


def _shard_file(dest: Path) -> bytes:
    (path,) = (dest / "s0").glob("*.shard")
    return path.read_bytes()


def test_threads_write_the_same_shard_as_one(shard_source, tmp_path):
    one, _, _ = _convert(shard_source, tmp_path / "one", 1)
    three, _, _ = _convert(shard_source, tmp_path / "three", 3)
    assert one.chunks_written == three.chunks_written == CHUNKS
    assert (one.encoded_bytes, one.bytes_written) == (three.encoded_bytes, three.bytes_written)
    assert three.threads == 3
    assert _shard_file(tmp_path / "one") == _shard_file(tmp_path / "three")


def _damaged_copy(
    source: Path, root: Path, bad: list[int], truncate: bool = False
) -> tuple[Path, list[tuple[int, int, int]]]:
    """A copy of the export with the DVID blocks of records `bad` cut in half (and, with
    truncate, the Arrow file cut short so that the reader itself fails near the end)."""
    copy = root / "export"
    shutil.copytree(source, copy)
    arrow = copy / "s0" / "0_0_0.arrow"
    with ExportFileReader(arrow, None) as r:
        recs = [
            (rec.x, rec.y, rec.z, rec.labels, rec.supervoxels, bytes(decompress_block(rec, "")))
            for rec in r
        ]
    for i in bad:
        x, y, z, labels, svs, block = recs[i]
        recs[i] = (x, y, z, labels, svs, block[: len(block) // 2])
    write_export_file(arrow, arrow.with_suffix(".csv"), recs, csv_layout="batch")
    if truncate:
        data = arrow.read_bytes()
        arrow.write_bytes(data[: len(data) - len(data) // 20])
    return copy, [recs[i][:3] for i in bad]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_first_bad_record_in_file_order_is_reported(shard_source, tmp_path, threads):
    """Two bad records in different groups: the later one may well be converted first on the
    pool, the error must still name the earlier one; and no shard file is written."""
    first, later = 5 * GROUP_RECORDS + 3, 9 * GROUP_RECORDS + 1  # both inside the window
    source, chunks = _damaged_copy(shard_source, tmp_path, [first, later])
    dest = tmp_path / "vol"
    with pytest.raises(InputError) as e:
        _convert(source, dest, threads)
    assert e.value.chunk == chunks[0]
    assert "truncated" in e.value.cause
    assert not any(dest.rglob("*.shard"))  # nothing of the shard was written


@pytest.mark.parametrize("threads", [2, 3])
def test_a_group_converted_ahead_by_the_reading_thread_reports_in_order(
    shard_source, tmp_path, threads
):
    """The reading thread converts the newest queued group while it waits for the oldest, so
    its error comes early: with a bad record in group 5 and in every group after it, whatever
    group that thread converts ahead is bad, and the error must still be group 5's."""
    first = 5 * GROUP_RECORDS + 3
    bad = [first] + [g * GROUP_RECORDS + 7 for g in range(6, CHUNKS // GROUP_RECORDS)]
    source, chunks = _damaged_copy(shard_source, tmp_path, bad)
    dest = tmp_path / "vol"
    with pytest.raises(InputError) as e:
        _convert(source, dest, threads)
    assert e.value.chunk == chunks[0]
    assert not any(dest.rglob("*.shard"))


def test_bad_record_before_a_reader_failure_wins(shard_source, tmp_path):
    """A corrupt block early in the file and a file cut short near its end: the reader's error
    arrives while earlier groups are still converting; the block's error is the one raised."""
    source, chunks = _damaged_copy(shard_source, tmp_path, [2 * GROUP_RECORDS], truncate=True)
    with pytest.raises(InputError) as e:
        _convert(source, tmp_path / "vol", 3)
    assert e.value.chunk == chunks[0], e.value


def test_a_cut_file_alone_fails_on_threads_too(shard_source, tmp_path):
    """The control for the test above: the cut file by itself is an error (so the test above
    really had two errors to order), and it names the file."""
    source, _ = _damaged_copy(shard_source, tmp_path, [], truncate=True)
    with pytest.raises(InputError) as e:
        _convert(source, tmp_path / "vol", 3)
    assert "0_0_0.arrow" in str(e.value)


def test_the_reading_thread_converts_the_oldest_group_when_the_pool_is_busy(shard_source):
    """With the one pool thread held by other work, the oldest group is converted by the
    reading thread itself: `oldest()` returns while the pool is still held, with the same
    results a plain conversion gives (before, it waited for the pool to come free)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event

    from dvid2ng.worker.transcode import ShardContext, _convert_group, _Window

    spec = VolumeSpec.load(shard_source / "spec.json")
    (task,) = plan_transcode(shard_source, "memory://w", spec, scales=[0]).tasks
    store = ScaleStore("memory://w", spec.scales[0], io_context())
    ctx = ShardContext.for_task(task, store, DEFAULT_GZIP_LEVEL)
    src = task.sources[0]
    with ExportFileReader(src.arrow, src.csv) as reader:
        records = list(itertools.islice(reader, 2 * GROUP_RECORDS))
    groups = [records[:GROUP_RECORDS], records[GROUP_RECORDS:]]
    release = Event()
    pool = ThreadPoolExecutor(1)
    try:
        held = pool.submit(release.wait, 10)
        window = _Window(pool, ctx)
        for group in groups:
            window.submit(group)
        got = [window.oldest(), window.oldest()]
        assert not held.done(), "oldest() waited for the held pool thread"
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert got == [_convert_group(group, ctx) for group in groups]
    assert all(data is not None for group in got for _, data in group)

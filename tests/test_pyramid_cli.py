"""The pyramid end to end through `dvid2ng run ... --downres` on the embedded default (real
worker processes, SQLite queue and state): a generated DVID export of s0 -> s1..s3, every
scale read back by TensorStore and cloud-volume and compared with a numpy reference computed
here; odd sizes with clipped edge chunks at every scale; `--only-missing`; the dvid rule; the
GCS emulator with every upload counted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dvid2ng.dispatcher.cli import main
from dvid2ng.dvidexport.synthetic import synthetic_agglomeration, synthetic_volume
from dvid2ng.dvidexport.writer import write_export
from dvid2ng.schemas.sharding import num_shards
from dvid2ng.schemas.spec import VolumeSpec
from tests.exports import read_scale_cloudvolume, read_scale_tensorstore
from tests.pyramid_helpers import pyramid_spec, reference_pyramid


def make_s0_export(root: Path, size, chunks, seed=3):
    """A DVID export of s0 only (ids mapped to bodies) and its spec; returns (export dir,
    spec path, spec, the body volume of s0 as ZYX)."""
    sj = pyramid_spec(size, chunks)
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(sj))
    spec = VolumeSpec.from_json(sj)
    big = synthetic_volume((size[2] + 1, size[1] + 1, size[0] + 1), n_labels=60, seed=seed)
    s0 = np.ascontiguousarray(big[1:, 1:, 1:])  # boundaries off the even grid
    to_body = synthetic_agglomeration(np.unique(s0), seed=seed)
    write_export(root / "export", spec, {0: s0}, labels_of=to_body, scales=[0], seed=seed)
    return root / "export", spec_path, spec, to_body(s0)


def run(*argv: str) -> int:
    return main(["run", *argv, "--workers", "2", "--no-progress"])


def shard_files(dest: Path, scales) -> dict[str, tuple[int, int, int]]:
    out = {}
    for s in scales:
        for f in sorted((dest / f"s{s}").glob("*.shard")):
            st = f.stat()
            out[f"s{s}/{f.name}"] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyramid")
    source, spec_path, spec, bodies = make_s0_export(root, (301, 259, 199), [64, 32, 32, 16])
    dest = root / "vol"
    code = run(
        str(source), str(dest), "--spec", str(spec_path), "--scales", "0", "--downres", "1-3"
    )
    return source, spec_path, spec, dest, reference_pyramid(bodies, 4), code


def test_geometry_is_what_the_test_claims(pyramid):
    _, _, spec, _, want, _ = pyramid
    for s, scale in enumerate(spec.scales):
        assert any(n % c for n, c in zip(scale.size, scale.chunk_size, strict=True)), "clipped"
        assert num_shards(scale) > 1, "several shards per scale"
        assert want[s].shape == (scale.size[2], scale.size[1], scale.size[0])
        assert len(np.unique(want[s])) > 20


def test_pyramid_reads_back_equal_to_reference(pyramid, capsys):
    _, _, _, dest, want, code = pyramid
    assert code == 0
    for s in range(4):
        got_ts = read_scale_tensorstore(str(dest), s)
        np.testing.assert_array_equal(got_ts, want[s], err_msg=f"TensorStore read of s{s}")
        got_cv = read_scale_cloudvolume(dest, s)
        np.testing.assert_array_equal(got_cv, want[s], err_msg=f"cloud-volume read of s{s}")


def test_rerun_does_nothing_and_prints_the_table(pyramid, capsys):
    source, spec_path, _, dest, _, _ = pyramid
    before = shard_files(dest, range(4))
    assert (
        run(str(source), str(dest), "--spec", str(spec_path), "--scales", "0", "--downres", "1-3")
        == 0
    )
    err = capsys.readouterr().err
    table = err[err.index("scale    kind") :]
    for name in ("s0 ", "s1 ", "s2 ", "s3 "):
        assert name in table
    assert "finished before" in table
    assert shard_files(dest, range(4)) == before, "a resumed run rewrites nothing"


def test_method_change_on_a_built_scale_is_refused(pyramid, capsys):
    source, spec_path, _, dest, _, _ = pyramid
    code = run(
        str(source),
        str(dest),
        "--spec",
        str(spec_path),
        "--downres",
        "2",
        "--downsample-method",
        "dvid",
    )
    assert code == 2
    assert "built with --downsample-method mode" in capsys.readouterr().err


def test_only_missing_rebuilds_exactly_the_deleted_shard(pyramid, capsys):
    source, spec_path, _, dest, want, _ = pyramid
    before = shard_files(dest, range(4))
    first, victim = sorted(k for k in before if k.startswith("s2/"))[:2]
    # a plain re-run checks the files before it trusts the state: the deleted one is rebuilt
    (dest / first).unlink()
    assert run(str(source), str(dest), "--spec", str(spec_path), "--downres", "2") == 0
    err = capsys.readouterr().err
    assert f"{first.split('.')[0]}" in err and "is missing" in err
    rebuilt = shard_files(dest, range(4))
    assert {k for k in rebuilt if rebuilt[k] != before[k]} == {first}
    before = rebuilt

    (dest / victim).unlink()
    assert (
        run(str(source), str(dest), "--spec", str(spec_path), "--downres", "2", "--only-missing")
        == 0
    )
    err = capsys.readouterr().err
    assert "1 shards" in err and "already present" in err
    after = shard_files(dest, range(4))
    assert set(after) == set(before)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {victim}, "exactly the deleted shard was written"
    np.testing.assert_array_equal(read_scale_tensorstore(str(dest), 2), want[2])


def test_dvid_rule_end_to_end(tmp_path):
    source, spec_path, _, bodies = make_s0_export(tmp_path, (140, 100, 75), [64, 32, 16])
    dest = tmp_path / "vol"
    code = run(
        str(source), str(dest), "--spec", str(spec_path), "--scales", "0",
        "--downres", "1,2", "--downsample-method", "dvid",
    )  # fmt: skip
    assert code == 0
    want = reference_pyramid(bodies, 3, "dvid")
    assert not np.array_equal(want[1], reference_pyramid(bodies, 2, "mode")[1]), (
        "the volume tells the two rules apart"
    )
    for s in (1, 2):
        np.testing.assert_array_equal(read_scale_tensorstore(str(dest), s), want[s])
        np.testing.assert_array_equal(read_scale_cloudvolume(dest, s), want[s])


def test_downres_argument_errors(tmp_path, capsys):
    source, spec_path, _, _ = make_s0_export(tmp_path, (70, 70, 70), [64, 32])
    dest = str(tmp_path / "vol")
    spec = str(spec_path)
    for bad in ("0", "2-1", "x"):
        with pytest.raises(SystemExit) as e:
            run(str(source), dest, "--spec", spec, "--downres", bad)
        assert e.value.code == 2
    assert run(str(source), dest, "--spec", spec, "--downres", "5") == 2
    assert "only 2 scales" in capsys.readouterr().err
    assert run(str(source), dest, "--spec", spec, "--scales", "0,1", "--downres", "1") == 2
    assert "both --scales" in capsys.readouterr().err
    assert run(str(source), dest, "--spec", spec, "--downres", "1") == 2
    assert "holds no shard files" in capsys.readouterr().err
    assert run(str(source), dest, "--spec", spec, "--only-missing") == 2
    assert "applies to --downres" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(dest, "s1")), "nothing written"


def test_pyramid_on_gcs_emulator_uploads_each_shard_once(tmp_path, monkeypatch, capsys):
    """gs:// end to end: s0 exported, s1 and s2 downsampled, each shard uploaded exactly once;
    `--only-missing` after deleting one s1 object uploads exactly that object."""
    from tests.gcs_emulator import GcsEmulator

    emu = GcsEmulator(tmp_path)
    try:
        emu.create_bucket("out")
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)  # spawned workers inherit it
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the state dir of a gs:// dest
        source, spec_path, _, bodies = make_s0_export(tmp_path, (140, 130, 70), [64, 32, 32])
        dest = "gs://out/vol"
        code = run(str(source), dest, "--spec", str(spec_path), "--scales", "0", "--downres", "1,2")
        assert code == 0, capsys.readouterr().err
        writes = dict(emu.proxy.writes)
        shards = {k: v for k, v in writes.items() if k.endswith(".shard")}
        assert all(v == 1 for v in shards.values()), shards
        assert {k.split("/")[1] for k in shards} == {"s0", "s1", "s2"}
        assert set(writes) - set(shards) == {"vol/info"}
        want = reference_pyramid(bodies, 3)
        for s in (1, 2):
            np.testing.assert_array_equal(read_scale_tensorstore(dest, s), want[s])

        victim = sorted(k for k in shards if k.startswith("vol/s1/"))[0]
        import tensorstore as ts

        bucket = ts.KvStore.open({"driver": "gcs", "bucket": "out"}).result()
        bucket.write(victim, None).result()  # None deletes the object
        emu.proxy.writes.clear()
        code = run(str(source), dest, "--spec", str(spec_path), "--downres", "1", "--only-missing")
        assert code == 0, capsys.readouterr().err
        assert dict(emu.proxy.writes) == {victim: 1}
        np.testing.assert_array_equal(read_scale_tensorstore(dest, 1), want[1])
    finally:
        emu.stop()

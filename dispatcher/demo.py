"""`dvid2ng demo`: make a small DVID export with our own encoder and export writer, convert it
with the embedded fleet, read it back through TensorStore, and print the `dvid2ng view`
command that shows it (or, with --view, serve it right away)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

DEMO_MARKER = ".dvid2ng-demo"

# Two scales, each cut into several cubic shards (DVID names shards as cubes), with partial
# edge chunks on every axis. Scale 1 is what DVID would export from its own 2x downsample.
DEMO_SPEC = {
    "@type": "neuroglancer_multiscale_volume",
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "8x8x8",
            "size": [300, 260, 200],
            "resolution": [8, 8, 8],
            "voxel_offset": [0, 0, 0],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "compressed_segmentation_block_size": [8, 8, 8],
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 3,
                "minishard_bits": 3,
                "shard_bits": 2,
                "minishard_index_encoding": "gzip",
                "data_encoding": "gzip",
            },
        },
        {
            "key": "16x16x16",
            "size": [150, 130, 100],
            "resolution": [16, 16, 16],
            "voxel_offset": [0, 0, 0],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "compressed_segmentation_block_size": [8, 8, 8],
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 0,
                "minishard_bits": 3,
                "shard_bits": 2,
                "minishard_index_encoding": "gzip",
                "data_encoding": "gzip",
            },
        },
    ],
}


def demo_volumes(seed: int = 7):
    """Per-scale supervoxel volumes (ZYX), the supervoxel -> body mapping, and the agglomerated
    volumes a reader should see."""
    from dvid2ng.dvidexport.synthetic import synthetic_agglomeration, synthetic_volume

    size = DEMO_SPEC["scales"][0]["size"]
    s0 = synthetic_volume((size[2], size[1], size[0]), n_labels=60, seed=seed)
    s1 = np.ascontiguousarray(s0[::2, ::2, ::2])
    to_body = synthetic_agglomeration(np.unique(s0), seed=seed)
    supervoxels = {0: s0, 1: s1}
    bodies = {s: to_body(v) for s, v in supervoxels.items()}
    return supervoxels, to_body, bodies


def prepare_dir(root: Path) -> None:
    if root.exists() and any(root.iterdir()) and not (root / DEMO_MARKER).exists():
        raise SystemExit(
            f"dvid2ng demo: {root} is not empty and not a demo folder; pick another DIR"
        )
    for sub in ("export", "volume"):
        shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text("made by dvid2ng demo; safe to delete\n")


def demo_segments(s0_bodies: np.ndarray, n: int = 2) -> list[int]:
    """The `n` largest bodies of the middle xy section: what the demo's view selects."""
    section = s0_bodies[s0_bodies.shape[0] // 2]
    ids, counts = np.unique(section[section != 0], return_counts=True)
    return [int(i) for i in ids[np.argsort(counts, kind="stable")[::-1][:n]]]


def view_command(volume: Path) -> str:
    """The `dvid2ng view` line to print, with the program as it was started if that was the
    console script (e.g. .venv/bin/dvid2ng, which may not be on PATH)."""
    import shlex

    prog = sys.argv[0] if Path(sys.argv[0]).name == "dvid2ng" else "dvid2ng"
    return f"{shlex.quote(prog)} view {shlex.quote(str(volume))}"


def run_demo(root: Path, workers: int = 2, view: bool = False, open_browser: bool = False) -> int:
    from dvid2ng.dispatcher.cli import print_summary
    from dvid2ng.dispatcher.embedded import run_embedded
    from dvid2ng.dispatcher.plan import plan_transcode
    from dvid2ng.dispatcher.progress import RunProgress
    from dvid2ng.dvidexport.writer import write_export
    from dvid2ng.schemas.spec import VolumeSpec

    root = root.resolve()
    prepare_dir(root)
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(DEMO_SPEC, indent=2))
    spec = VolumeSpec.from_json(DEMO_SPEC)
    supervoxels, to_body, bodies = demo_volumes()
    print(f"1/3 writing a synthetic DVID export to {root / 'export'} ...", file=sys.stderr)
    write_export(root / "export", spec, supervoxels, labels_of=to_body, seed=7)
    print("2/3 converting it ...", file=sys.stderr)
    plan = plan_transcode(root / "export", str(root / "volume"), spec)
    progress = RunProgress(len(plan.tasks), plan.total_chunks)
    try:
        summary = run_embedded(plan, workers=workers, progress=progress)
    finally:
        progress.close()
    print_summary(summary, workers)
    if summary.exit_code:
        return summary.exit_code
    print("3/3 reading the volume back through TensorStore ...", file=sys.stderr)
    mismatches = verify_against(str(root / "volume"), bodies)
    if mismatches:
        for m in mismatches:
            print(f"  MISMATCH {m}", file=sys.stderr)
        return 1
    n = sum(v.size for v in bodies.values())
    print(f"  all {n:,} voxels of {len(bodies)} scales match the source labels\n", file=sys.stderr)
    volume = root / "volume"
    if view:
        from dvid2ng.dispatcher.view import serve_volume

        return serve_volume(str(volume), open_browser=open_browser)
    ids = ",".join(map(str, demo_segments(bodies[0])))
    print(
        "See it in a browser (one local server for the volume and Neuroglancer; Ctrl-C stops it):\n"
        f"  {view_command(volume)}\n"
        f"(add --segments {ids} to show only the two largest bodies of the middle section;\n"
        f" `dvid2ng demo --view` converts and serves in one go; in Python read the volume with\n"
        f" tensorstore's 'neuroglancer_precomputed' driver or CloudVolume('file://{volume}'))",
        file=sys.stderr,
    )
    return 0


def verify_against(dest: str, expected: dict[int, np.ndarray]) -> list[str]:
    """Read every scale back through TensorStore and compare with the expected ZYX volumes."""
    import tensorstore as ts

    from dvid2ng.worker.output import kvstore_spec

    problems = []
    for scale, want in expected.items():
        vol = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": kvstore_spec(dest),
                "scale_index": scale,
            },
            read=True,
        ).result()
        got = np.asarray(vol.read().result())[..., 0].transpose(2, 1, 0)
        if got.shape != want.shape:
            problems.append(f"scale {scale}: shape {got.shape} != {want.shape}")
        elif not np.array_equal(got, want):
            bad = np.argwhere(got != want)
            problems.append(
                f"scale {scale}: {len(bad)} voxels differ, first at zyx {tuple(bad[0])}"
            )
    return problems

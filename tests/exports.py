"""Generated DVID exports for end-to-end tests (made with our own encoder and export writer,
which tests/dvidexport checks against DVID's own output)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dvid2ng.dispatcher.demo import DEMO_SPEC
from dvid2ng.dvidexport.synthetic import synthetic_agglomeration, synthetic_volume
from dvid2ng.dvidexport.writer import write_export
from dvid2ng.schemas.spec import VolumeSpec


@dataclass
class Export:
    source: Path
    spec_path: Path
    spec: VolumeSpec
    supervoxels: dict[int, np.ndarray]  # per scale, ZYX
    bodies: dict[int, np.ndarray]


def make_export(root: Path, *, seed: int = 3, spec_json: dict | None = None, **writer_kw) -> Export:
    spec_json = spec_json or DEMO_SPEC
    spec = VolumeSpec.from_json(spec_json)
    size = spec.scales[0].size
    s0 = synthetic_volume((size[2], size[1], size[0]), n_labels=60, seed=seed, big_ids=True)
    supervoxels = {0: s0}
    for i, scale in enumerate(spec.scales[1:], start=1):
        z, y, x = (scale.size[2], scale.size[1], scale.size[0])
        step = 2**i
        supervoxels[i] = np.ascontiguousarray(s0[::step, ::step, ::step][:z, :y, :x])
    to_body = synthetic_agglomeration(np.unique(s0), seed=seed)
    bodies = {s: to_body(v) for s, v in supervoxels.items()}
    source = root / "export"
    write_export(source, spec, supervoxels, labels_of=to_body, seed=seed, **writer_kw)
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec_json))
    return Export(source, spec_path, spec, supervoxels, bodies)


def read_scale_tensorstore(dest: str, scale: int) -> np.ndarray:
    """The whole scale as ZYX through TensorStore's neuroglancer_precomputed driver."""
    import tensorstore as ts

    from dvid2ng.worker.output import kvstore_spec

    vol = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": kvstore_spec(dest), "scale_index": scale}
    ).result()
    return np.asarray(vol.read().result())[..., 0].transpose(2, 1, 0)


def read_scale_cloudvolume(dest: Path, scale: int) -> np.ndarray:
    """The whole scale as ZYX through cloud-volume (an independent precomputed reader)."""
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{dest}", mip=scale, fill_missing=True, progress=False, cache=False)
    return np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)


def publish_to_sqlite(export: Export, root: Path) -> tuple[str, Path]:
    """`dvid2ng publish` of `export` into a fresh SQLite queue and state under `root`, as a
    subprocess; the queue URL (also the state's) and the destination folder."""
    import subprocess
    import sys

    (root / "q").mkdir(parents=True)
    url = f"sqlite://{root / 'q'}"
    dest = root / "vol"
    done = subprocess.run(
        [sys.executable, "-m", "dvid2ng.dispatcher.cli", "publish", str(export.source), str(dest),
         "--spec", str(export.spec_path), "--queue", url, "--state", url],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return url, dest

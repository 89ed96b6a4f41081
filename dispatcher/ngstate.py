"""What `dvid2ng view` shows: a check of the volume's `info`, and the Neuroglancer state (as a
URL) that opens it as a segmentation layer, centred, with chosen segments selected.

Format logic only; serving lives in dispatcher/view.py.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

# Characters left as they are in the `#!{json}` fragment; everything else is percent-encoded
# (Neuroglancer percent-decodes the fragment before parsing the JSON).
_FRAGMENT_SAFE = "~@$&()*!+=:;,.?/'"

# Default zoom: fit the larger xy extent of scale 0 into about this many screen pixels.
FIT_PIXELS = 800

UINT64_MAX = 2**64 - 1


class InfoError(ValueError):
    """The `info` cannot be shown; the message names the field at fault."""


@dataclass(frozen=True)
class ScaleInfo:
    key: str
    size: tuple[int, int, int]  # voxels, x y z
    resolution: tuple[float, float, float]  # nm per voxel, x y z
    voxel_offset: tuple[int, int, int]


@dataclass(frozen=True)
class VolumeInfo:
    """The parts of a neuroglancer precomputed `info` the viewer relies on."""

    type: str
    data_type: str
    scales: tuple[ScaleInfo, ...]

    def describe(self) -> str:
        s0 = self.scales[0]
        size = "x".join(map(str, s0.size))
        res = "x".join(f"{r:g}" for r in s0.resolution)
        n = len(self.scales)
        return (
            f"{self.type} {self.data_type}, {n} scale{'s' if n != 1 else ''}, "
            f"{size} voxels at {res} nm"
        )


def parse_info(raw: bytes, where: str = "info") -> VolumeInfo:
    """Check that `raw` is a precomputed volume `info` a viewer can open (lenient: any
    precomputed volume, not only what dvid2ng writes)."""
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InfoError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise InfoError(f"{where} must be a JSON object")
    kind = info.get("type")
    if kind not in ("segmentation", "image"):
        raise InfoError(f"{where}: 'type' must be 'segmentation' or 'image', got {kind!r}")
    scales_json = info.get("scales")
    if not isinstance(scales_json, list) or not scales_json:
        raise InfoError(f"{where}: 'scales' must be a non-empty list")
    scales = tuple(_scale(i, s, where) for i, s in enumerate(scales_json))
    return VolumeInfo(
        type=kind,
        data_type=str(info.get("data_type", "?")),
        scales=scales,
    )


def _scale(index: int, s: Any, where: str) -> ScaleInfo:
    at = f"{where}: scale {index}"
    if not isinstance(s, dict):
        raise InfoError(f"{at} must be an object")
    key = s.get("key")
    if not isinstance(key, str) or not key:
        raise InfoError(f"{at}: 'key' must be a non-empty string, got {key!r}")
    size = _numbers(s.get("size"), f"{at} ({key}): size", integer=True, positive=True)
    res = _numbers(s.get("resolution"), f"{at} ({key}): resolution", integer=False, positive=True)
    offset = _numbers(s.get("voxel_offset", [0, 0, 0]), f"{at} ({key}): voxel_offset", integer=True)
    return ScaleInfo(key, size, res, offset)  # type: ignore[arg-type]


def _numbers(value: Any, what: str, *, integer: bool, positive: bool = False) -> tuple:
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    ok = ok and (not integer or all(float(v).is_integer() for v in value))
    ok = ok and (not positive or all(v > 0 for v in value))
    if not ok:
        kind = "integers" if integer else "numbers"
        raise InfoError(f"{what} must be 3 {'positive ' if positive else ''}{kind}, got {value!r}")
    return tuple(int(v) if integer else float(v) for v in value)


def parse_segments(text: str) -> list[int]:
    """`--segments 12,345` -> [12, 345]: distinct non-zero uint64 ids, in the order given."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"segment ids are non-negative integers, got {part!r}")
        value = int(part)
        if not 0 < value <= UINT64_MAX:
            raise ValueError(f"segment id {value} is outside 1..2^64-1")
        if value not in ids:
            ids.append(value)
    if not ids:
        raise ValueError(f"no segment ids in {text!r}; give them like 12,345")
    return ids


def cross_section_scale(info: VolumeInfo, scale: int | None) -> float:
    """Zoom in scale-0 voxels per screen pixel: one pixel per voxel of scale `scale` (so
    Neuroglancer draws that scale), or by default the volume's xy extent fitted to the screen."""
    s0 = info.scales[0]
    if scale is not None:
        return info.scales[scale].resolution[0] / s0.resolution[0]
    return max(1.0, max(s0.size[0], s0.size[1]) / FIT_PIXELS)


def viewer_state(
    info: VolumeInfo,
    source: str,
    *,
    layer_name: str,
    segments: list[int] = (),  # type: ignore[assignment]
    scale: int | None = None,
) -> dict[str, Any]:
    """Neuroglancer state: one layer from `source` (a `precomputed://...` URL), global
    coordinates in scale-0 voxels, the view centred on the volume."""
    s0 = info.scales[0]
    dims = {axis: [r * 1e-9, "m"] for axis, r in zip("xyz", s0.resolution, strict=True)}
    # The centre voxel's centre: voxel i spans [i, i + 1) in Neuroglancer's coordinates.
    centre = [o + s // 2 + 0.5 for o, s in zip(s0.voxel_offset, s0.size, strict=True)]
    layer: dict[str, Any] = {"type": info.type, "source": source, "name": layer_name}
    if info.type == "segmentation" and segments:
        layer["segments"] = [str(s) for s in segments]
    zoom = cross_section_scale(info, scale)
    return {
        "dimensions": dims,
        "position": centre,
        "crossSectionScale": zoom,
        "projectionScale": max(s0.size) * 2.0,
        "layers": [layer],
        "selectedLayer": {"layer": layer_name},
        "layout": "4panel",
    }


def state_url(viewer_base: str, state: dict[str, Any]) -> str:
    """`viewer_base#!{state}`, as Neuroglancer reads its state from the URL fragment."""
    text = json.dumps(state, separators=(",", ":"))
    return f"{viewer_base}#!{urllib.parse.quote(text, safe=_FRAGMENT_SAFE)}"


def state_from_url(url: str) -> dict[str, Any]:
    """The state of a URL made by `state_url` (for tests and scripts that adjust it)."""
    _, _, fragment = url.partition("#")
    return json.loads(urllib.parse.unquote(fragment.removeprefix("!")))

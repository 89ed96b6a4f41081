"""The neuroglancer volume spec given to DVID, and the `info` we write from it.

Parsing validates everything the conversion relies on and names the scale and field at fault,
so a wrong spec is rejected before any work starts.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARDING_TYPE = "neuroglancer_uint64_sharded_v1"
CSEG_BLOCK = (8, 8, 8)
DVID_BLOCK = 64  # DVID label blocks are 64^3 voxels

# What a DVID label export always is; a spec that leaves these out gets them filled in.
VOLUME_DEFAULTS = {"type": "segmentation", "data_type": "uint64", "num_channels": 1}

# A scale key is one path segment of DEST (DEST/<key>/<shard>.shard) and of the URLs readers
# build from it. Keys that start with "." (".", "..", our ".dvid2ng" state folder) or equal
# "info" would land on something that is not that scale's folder.
_KEY_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
_RESERVED_KEYS = ("info",)


class SpecError(ValueError):
    """The volume spec cannot be used; the message says which scale and field and why."""


@dataclass(frozen=True)
class Sharding:
    preshift_bits: int
    minishard_bits: int
    shard_bits: int
    hash: str = "identity"
    minishard_index_encoding: str = "gzip"
    data_encoding: str = "gzip"

    def to_json(self) -> dict[str, Any]:
        return {
            "@type": SHARDING_TYPE,
            "hash": self.hash,
            "preshift_bits": self.preshift_bits,
            "minishard_bits": self.minishard_bits,
            "shard_bits": self.shard_bits,
            "minishard_index_encoding": self.minishard_index_encoding,
            "data_encoding": self.data_encoding,
        }


@dataclass(frozen=True)
class Scale:
    index: int
    key: str
    size: tuple[int, int, int]  # voxels, x y z
    chunk_size: tuple[int, int, int]  # voxels, x y z
    resolution: tuple[float, float, float]
    voxel_offset: tuple[int, int, int]
    sharding: Sharding

    # cached: the sharding geometry asks for these in its bit-walking loops
    @functools.cached_property
    def grid(self) -> tuple[int, int, int]:
        """Chunks per axis (edge chunks are partial)."""
        return tuple(math.ceil(s / c) for s, c in zip(self.size, self.chunk_size, strict=True))  # type: ignore[return-value]

    @functools.cached_property
    def bits(self) -> tuple[int, int, int]:
        """Bits of the compressed Morton code per axis: bit_length(grid - 1)."""
        return tuple(max(0, (g - 1).bit_length()) for g in self.grid)  # type: ignore[return-value]

    @functools.cached_property
    def total_bits(self) -> int:
        return sum(self.bits)

    def chunk_extent(self, chunk: tuple[int, int, int]) -> tuple[int, int, int]:
        """Voxels of chunk `chunk` inside the volume per axis (x, y, z); 0 if it lies outside."""
        return tuple(
            max(0, min(c, s - g * c))
            for g, c, s in zip(chunk, self.chunk_size, self.size, strict=True)
        )  # type: ignore[return-value]


@dataclass(frozen=True)
class VolumeSpec:
    scales: tuple[Scale, ...]
    raw: dict[str, Any]  # the spec as given, with the fields in VOLUME_DEFAULTS filled in
    notes: tuple[str, ...] = ()  # what parsing filled in, for the user to read

    @classmethod
    def load(cls, path: str | Path) -> VolumeSpec:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise SpecError(f"{path}: cannot read spec: {e.strerror}") from None
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_json(cls, spec: str | bytes | dict[str, Any], source: str = "spec") -> VolumeSpec:
        if isinstance(spec, str | bytes):
            try:
                spec = json.loads(spec)
            except ValueError as e:
                raise SpecError(f"{source}: not valid JSON: {e}") from None
        if not isinstance(spec, dict):
            raise SpecError(f"{source}: must be a JSON object")
        spec = copy.deepcopy(spec)
        notes = []
        for field, want in VOLUME_DEFAULTS.items():
            if field in spec:
                _expect(spec, field, want, source)
            else:
                spec[field] = want
                notes.append(
                    f"{source}: no {field!r}; using {want!r} (DVID label exports are always "
                    "segmentation, uint64, 1 channel)"
                )
        scales_json = spec.get("scales")
        if not isinstance(scales_json, list) or not scales_json:
            raise SpecError(f"{source}: 'scales' must be a non-empty list")
        scales = tuple(_parse_scale(i, s, source, scales_json) for i, s in enumerate(scales_json))
        keys = [s.key for s in scales]
        if len(set(keys)) != len(keys):
            raise SpecError(f"{source}: scale keys must be unique, got {keys}")
        return cls(scales=scales, raw=spec, notes=tuple(notes))

    def info(self) -> dict[str, Any]:
        """The neuroglancer `info` to write: the spec with every scale as sharded, gzip,
        compressed_segmentation with 8^3 blocks (what the worker writes)."""
        info = copy.deepcopy(self.raw)
        info["@type"] = "neuroglancer_multiscale_volume"
        for scale_json, scale in zip(info["scales"], self.scales, strict=True):
            scale_json["encoding"] = "compressed_segmentation"
            scale_json["compressed_segmentation_block_size"] = list(CSEG_BLOCK)
            scale_json["sharding"] = scale.sharding.to_json()
        for extra in ("batch_size",):  # DVID-only extras do not belong in a neuroglancer info
            info.pop(extra, None)
        return info


def _expect(spec: dict[str, Any], field: str, want: Any, source: str) -> None:
    if field in spec and spec[field] != want:
        raise SpecError(f"{source}: {field} must be {want!r}, got {spec[field]!r}")


def _triple(value: Any, what: str, kind: type, positive: bool = True) -> tuple:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise SpecError(f"{what} must be a list of 3 numbers, got {value!r}")
    out = []
    for v in value:
        if kind is int and (not isinstance(v, int) or isinstance(v, bool)):
            raise SpecError(f"{what} must hold integers, got {value!r}")
        if kind is float and not isinstance(v, int | float):
            raise SpecError(f"{what} must hold numbers, got {value!r}")
        if positive and v <= 0:
            raise SpecError(f"{what} must be positive, got {value!r}")
        out.append(kind(v))
    return tuple(out)


def _parse_scale(index: int, s: Any, source: str, all_scales: list[Any]) -> Scale:
    where = f"{source}: scale {index}"
    if not isinstance(s, dict):
        raise SpecError(f"{where}: must be an object")
    key = s.get("key")
    _check_key(key, where)
    where = f"{source}: scale {index} ({key})"
    size = _triple(s.get("size"), f"{where}: size", int)
    chunks = s.get("chunk_sizes")
    if not isinstance(chunks, list) or not chunks:
        raise SpecError(f"{where}: chunk_sizes must be a non-empty list")
    chunk = _triple(chunks[0], f"{where}: chunk_sizes[0]", int)
    if any(c % 8 for c in chunk):
        raise SpecError(
            f"{where}: chunk_sizes[0] {list(chunk)} must be multiples of 8 (cseg blocks are 8^3)"
        )
    if "resolution" not in s:
        raise SpecError(
            f"{where}: no 'resolution' (nm per voxel); readers cannot open a scale without it. "
            f'Add for example "resolution": {_guess_resolution(index, size, all_scales)}'
        )
    resolution = _triple(s.get("resolution"), f"{where}: resolution", float)
    offset = _triple(
        s.get("voxel_offset", [0, 0, 0]), f"{where}: voxel_offset", int, positive=False
    )
    block = s.get("compressed_segmentation_block_size")
    if block is not None and list(block) != list(CSEG_BLOCK):
        raise SpecError(
            f"{where}: compressed_segmentation_block_size {block} is not supported; "
            f"dvid2ng writes {list(CSEG_BLOCK)} (remove the field or set it to [8,8,8])"
        )
    sharding = _parse_sharding(s.get("sharding"), where)
    scale = Scale(index, key, size, chunk, resolution, offset, sharding)
    _check_sharding_bits(scale, where)
    return scale


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key in _RESERVED_KEYS:
        suggestion = re.sub(r"[^A-Za-z0-9_.\-]", "_", key if isinstance(key, str) else "")
        suggestion = suggestion.lstrip(".") or f"s{where.rsplit(' ', 1)[-1]}"
        if suggestion in _RESERVED_KEYS:
            suggestion = "s_" + suggestion
        raise SpecError(
            f"{where}: 'key' must be one path segment of letters, digits, '_', '-' and '.' that "
            f"does not start with '.' and is not {' or '.join(map(repr, _RESERVED_KEYS))}, got "
            f"{key!r}: it names the folder DEST/<key>/. Use for example {suggestion!r}"
        )


def _guess_resolution(index: int, size: tuple[int, int, int], all_scales: list[Any]) -> list:
    """A resolution for a scale that has none: from another scale's resolution and the size
    ratio (a 2x smaller scale has 2x the nm per voxel), else 1 nm."""
    for other in all_scales:
        if not isinstance(other, dict) or "resolution" not in other:
            continue
        try:
            res = [float(r) for r in other["resolution"]]
            osize = [int(v) for v in other["size"]]
        except (TypeError, ValueError, KeyError):
            continue
        if len(res) == 3 and len(osize) == 3:
            guess = [r * o / n for r, o, n in zip(res, osize, size, strict=True)]
            return [round(g) if abs(g - round(g)) < 0.05 else round(g, 2) for g in guess]
    return [1, 1, 1]


def _check_sharding_bits(scale: Scale, where: str) -> None:
    """preshift + minishard + shard must cover the chunk grid's Morton bits; more is fine (the
    surplus bits are unused: TensorStore, cloud-volume and Neuroglancer accept it), fewer would
    fold two regions of the grid, two DVID files, into one shard file (formats.md §7.1)."""
    sh = scale.sharding
    total = scale.total_bits
    have = sh.preshift_bits + sh.minishard_bits + sh.shard_bits
    if have >= total:
        return
    need = total - sh.preshift_bits - sh.minishard_bits
    raise SpecError(
        f"{where}: sharding bits do not add up: preshift_bits {sh.preshift_bits} + "
        f"minishard_bits {sh.minishard_bits} + shard_bits {sh.shard_bits} = {have}, but a "
        f"chunk grid of {list(scale.grid)} (size {list(scale.size)} / chunk "
        f"{list(scale.chunk_size)}) needs at least {total} bits ({'+'.join(map(str, scale.bits))}): "
        "two regions of the volume would share one shard file and the second DVID file would "
        f"replace the first. Set shard_bits to {need} (or more)."
    )


def _parse_sharding(sh: Any, where: str) -> Sharding:
    if not isinstance(sh, dict):
        raise SpecError(f"{where}: 'sharding' is missing; dvid2ng writes sharded volumes only")
    if sh.get("@type") != SHARDING_TYPE:
        raise SpecError(
            f"{where}: sharding @type must be {SHARDING_TYPE!r}, got {sh.get('@type')!r}"
        )
    if sh.get("hash", "identity") != "identity":
        raise SpecError(
            f"{where}: sharding hash {sh.get('hash')!r} is not supported: DVID export-shards "
            "only implements 'identity' (it silently falls back to identity for others)"
        )
    vals = []
    for f in ("preshift_bits", "minishard_bits", "shard_bits"):
        v = sh.get(f)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 64:
            raise SpecError(f"{where}: sharding {f} must be an integer 0..64, got {v!r}")
        vals.append(v)
    for f in ("minishard_index_encoding", "data_encoding"):
        v = sh.get(f, "gzip")
        if v not in ("raw", "gzip"):
            raise SpecError(f"{where}: sharding {f} must be 'raw' or 'gzip', got {v!r}")
    # We always write gzip chunk data and gzip minishard indices (smaller, and what every reader expects).
    return Sharding(*vals)


# --- chunk size of scales converted from DVID blocks (and --z-compress) -------------------------

Z_COMPRESS_VALUES = (0, 1, 3, 7, 15, 31, 63)  # N with stride N + 1 dividing the 64-voxel block


def check_z_compress(z_compress: int) -> int:
    if z_compress not in Z_COMPRESS_VALUES:
        raise SpecError(
            f"--z-compress {z_compress}: the stride N+1 must divide {DVID_BLOCK}, so N must be "
            f"one of {', '.join(map(str, Z_COMPRESS_VALUES))}"
        )
    return z_compress


def scale_z_compress(scale_index: int, z_compress: int) -> int:
    """The Z-compression applied at a scale: only s0 keeps every (N+1)-th slice; DVID's own
    lower scales already folded the doubled slices back (formats.md §8)."""
    return z_compress if scale_index == 0 else 0


def expected_chunk_size(scale_index: int, z_compress: int = 0) -> tuple[int, int, int]:
    """Chunk size of a scale converted from DVID blocks: the DVID block (64^3), except s0 of a
    Z-compressed conversion, 64 x 64 x 64/(N+1), so one decimated block is one output chunk
    and one DVID shard file is exactly one output shard."""
    check_z_compress(z_compress)
    stride = scale_z_compress(scale_index, z_compress) + 1
    return (DVID_BLOCK, DVID_BLOCK, DVID_BLOCK // stride)


def dvid_chunk_size_problem(scale: Scale, z_compress: int = 0) -> str | None:
    """Why `scale`, converted from DVID export files, cannot have its chunk size (None if it
    can): it must be `expected_chunk_size(scale.index, z_compress)`."""
    want = expected_chunk_size(scale.index, z_compress)
    have = scale.chunk_size
    if have == want:
        return None
    fits = [
        n
        for n in Z_COMPRESS_VALUES
        if n and scale.index == 0 and have == (DVID_BLOCK, DVID_BLOCK, DVID_BLOCK // (n + 1))
    ]
    z = scale_z_compress(scale.index, z_compress)
    if z:
        return (
            f"chunk_sizes {list(have)}, but --z-compress {z} makes scale 0 chunks of "
            f"{list(want)} (one Z slice in {z + 1} of each {DVID_BLOCK}^3 DVID block is kept): "
            f"give the destination (native-Z) spec, whose scale 0 has chunk_sizes "
            f"[{list(want)}] and 1/{z + 1} of the Z size"
            + (f" (this chunk is what --z-compress {fits[0]} makes)" if fits else "")
        )
    return (
        f"chunk_sizes {list(have)}, but a DVID export's chunks are its {DVID_BLOCK}^3 blocks; "
        "set chunk_sizes to [[64, 64, 64]]"
        + (
            f", or, if SOURCE is Z-doubled, pass --z-compress {fits[0]} (scale 0 chunk "
            f"{list(have)} is what it makes)"
            if fits
            else (
                " (only scale 0 of a Z-compressed conversion differs)"
                if z_compress
                else " (a Z-doubled source converts with --z-compress N and s0 chunk "
                "64x64x(64/(N+1)))"
            )
        )
    )


def check_dvid_chunk_sizes(
    spec: VolumeSpec, scales: Iterable[int], z_compress: int = 0, source: str = "spec"
) -> None:
    """Every scale in `scales` (those converted from DVID export files) must have the chunk size
    `expected_chunk_size` gives; raises SpecError naming the scale and the fix."""
    check_z_compress(z_compress)
    for s in scales:
        scale = spec.scales[s]
        problem = dvid_chunk_size_problem(scale, z_compress)
        if problem:
            raise SpecError(f"{source}: scale {s} ({scale.key}): {problem}")

"""The task message: one output shard at one scale, everything a worker needs to convert it.

Defined once here; `schemas/json/task.schema.json` is generated from `task_json_schema()` and a
test keeps the two equal. Both ends validate: the dispatcher before publishing, the worker on
receipt (a message that fails validation is poison and goes straight to the dead-letter queue).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 2
LABEL_MODES = ("labels", "supervoxels")
TASK_KINDS = ("transcode", "downsample")
DOWNSAMPLE_METHODS = (
    "mode",
    "dvid",
)  # kernels.downsample implements them (a test keeps both equal)
MAX_MESSAGE_BYTES = 1_000_000  # Pub/Sub allows 10 MB; a task is a few hundred bytes


class TaskError(ValueError):
    """A task message that cannot be processed as written (never retried)."""


class UnsupportedTask(TaskError):
    """A well-formed task of a kind or schema version this worker does not know: written by a
    newer dispatcher during a rolling upgrade, so another worker may handle it (nack, later)."""


@dataclass(frozen=True)
class SourceObject:
    """One DVID export file feeding the shard."""

    arrow: str  # path or URL of the .arrow file
    csv: str  # path or URL of its .csv index ("" when the export has none)
    size: int  # bytes of the .arrow file when planned
    generation: str = ""  # object generation (GCS) or mtime_ns (local) when planned


@dataclass(frozen=True)
class ShardTask:
    run_id: str
    scale: int
    shard: int
    shard_name: str  # hex file stem, e.g. "061c5" (DEST/<scale key>/<shard_name>.shard)
    kind: str  # "transcode" (from DVID export files) or "downsample" (from the scale above)
    sources: tuple[SourceObject, ...]
    dest: str  # volume root: local path, file://, gs:// or memory:// URL
    label_mode: str = "labels"
    z_compress: int = 0
    tier: str = ""
    chunks_expected: int = 0
    memory_bytes: int = 0  # the planner's peak-memory estimate (0: unknown)
    downsample_method: str = ""  # "mode" or "dvid" for kind "downsample", "" otherwise
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Unique id of the work unit within a run, also the state-store key."""
        return f"s{self.scale}/{self.shard_name}"

    def to_json(self) -> bytes:
        self.validate()
        data = asdict(self)
        data["sources"] = [asdict(s) for s in self.sources]
        body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        if len(body) > MAX_MESSAGE_BYTES:
            raise TaskError(f"task {self.key} is {len(body)} bytes, over {MAX_MESSAGE_BYTES}")
        return body

    @classmethod
    def from_json(cls, body: bytes | str) -> ShardTask:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise TaskError(f"task message is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise TaskError("task message is not a JSON object")
        version = data.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise UnsupportedTask(
                f"task schema_version {version} is newer than this worker's {SCHEMA_VERSION}"
            )
        if data.get("kind") not in (None, *TASK_KINDS) and isinstance(data.get("kind"), str):
            raise UnsupportedTask(f"task kind {data['kind']!r} is not one this worker knows")
        _check_fields(data)
        try:
            sources = tuple(SourceObject(**s) for s in data.pop("sources"))
            task = cls(sources=sources, **data)
        except TypeError as e:
            raise TaskError(f"task message has bad fields: {e}") from None
        task.validate()
        return task

    def validate(self) -> None:
        problems = []
        if self.schema_version != SCHEMA_VERSION:
            problems.append(
                f"schema_version {self.schema_version} (this worker reads {SCHEMA_VERSION})"
            )
        if not self.run_id:
            problems.append("empty run_id")
        if not (0 <= self.scale < 64):
            problems.append(f"scale {self.scale} out of range")
        if self.shard < 0:
            problems.append(f"negative shard {self.shard}")
        if not self.shard_name or any(c not in "0123456789abcdef" for c in self.shard_name):
            problems.append(f"shard_name {self.shard_name!r} is not lowercase hex")
        elif int(self.shard_name, 16) != self.shard:
            problems.append(f"shard_name {self.shard_name} does not match shard {self.shard}")
        if self.kind not in TASK_KINDS:
            problems.append(f"kind {self.kind!r} not in {TASK_KINDS}")
        if self.kind == "transcode" and len(self.sources) != 1:
            problems.append(f"a transcode task needs exactly 1 source, got {len(self.sources)}")
        if self.kind == "downsample":
            if self.scale < 1:
                problems.append("a downsample task builds scale 1 or higher (from the scale above)")
            if self.downsample_method not in DOWNSAMPLE_METHODS:
                problems.append(
                    f"downsample_method {self.downsample_method!r} not in {DOWNSAMPLE_METHODS}"
                )
        elif self.downsample_method:
            problems.append(f"downsample_method is only for downsample tasks, got {self.kind!r}")
        if self.label_mode not in LABEL_MODES:
            problems.append(f"label_mode {self.label_mode!r} not in {LABEL_MODES}")
        if self.z_compress not in (0, 1, 3, 7, 15, 31, 63):
            problems.append(f"z_compress {self.z_compress} must be 2^k-1 with 2^k dividing 64")
        if not self.dest:
            problems.append("empty dest")
        if problems:
            raise TaskError("invalid task message: " + "; ".join(problems))


_TYPES = {int: "integer", str: "string"}


def task_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the task message, for non-Python producers and consumers."""
    source = {
        "type": "object",
        "additionalProperties": False,
        "required": ["arrow", "csv", "size"],
        "properties": {
            "arrow": {"type": "string", "minLength": 1},
            "csv": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "generation": {"type": "string"},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "dvid2ng/task.schema.json",
        "title": "dvid2ng shard task",
        "type": "object",
        "additionalProperties": False,
        "required": [
            "run_id",
            "scale",
            "shard",
            "shard_name",
            "kind",
            "sources",
            "dest",
            "schema_version",
        ],
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION},
            "run_id": {"type": "string", "minLength": 1},
            "scale": {"type": "integer", "minimum": 0, "maximum": 63},
            "shard": {"type": "integer", "minimum": 0},
            "shard_name": {"type": "string", "pattern": "^[0-9a-f]+$"},
            "kind": {"enum": list(TASK_KINDS)},
            "sources": {"type": "array", "items": source},
            "dest": {"type": "string", "minLength": 1},
            "label_mode": {"enum": list(LABEL_MODES)},
            "z_compress": {"enum": [0, 1, 3, 7, 15, 31, 63]},
            "tier": {"type": "string"},
            "chunks_expected": {"type": "integer", "minimum": 0},
            "memory_bytes": {"type": "integer", "minimum": 0},
            "downsample_method": {"enum": ["", *DOWNSAMPLE_METHODS]},
            "extra": {"type": "object"},
        },
    }


def _check_fields(data: dict[str, Any]) -> None:
    schema = task_json_schema()
    missing = [k for k in schema["required"] if k not in data]
    unknown = [k for k in data if k not in schema["properties"]]
    if missing or unknown:
        raise TaskError(f"task message fields: missing {missing}, unknown {unknown}")
    if not isinstance(data["sources"], list) or not all(
        isinstance(s, dict) for s in data["sources"]
    ):
        raise TaskError("task message 'sources' must be a list of objects")
    for name, prop in schema["properties"].items():
        if name in data and prop.get("type") in ("integer", "string"):
            want = int if prop["type"] == "integer" else str
            if not isinstance(data[name], want) or isinstance(data[name], bool):
                raise TaskError(f"task message field {name!r} must be {prop['type']}")

"""Where the DVID export files of a task live, and whether they are still the planned ones.

A source is identified by its size and generation: the GCS object generation, or the file's
mtime in nanoseconds. The planner records both in the task; the worker checks them before it
converts (a re-export in place must not mix into a planned shard) and records the fingerprint
with the finished shard, so a resume can tell that a source changed since.
"""

from __future__ import annotations

from dvid2ng.dvidexport.storage import source_file
from dvid2ng.schemas.task import ShardTask, SourceObject
from dvid2ng.worker.errors import InputError


def fingerprint(size: int, generation: str) -> str:
    return f"{int(size)}:{generation}"


def task_fingerprint(task: ShardTask) -> str:
    """One string for all sources of a task ("" when it has none, e.g. a downsample task)."""
    return ";".join(fingerprint(s.size, s.generation) for s in task.sources)


def stat_source(where: str) -> tuple[int, str]:
    """(size, generation) of a source file (path or gs:// URL) as it is now. Raises OSError
    (FileNotFoundError for a missing object) when it cannot be read."""
    src = source_file(where)
    return src.size(), src.generation()


def check_source_unchanged(src: SourceObject) -> None:
    """The file must be the one that was planned (a re-export in place would mix data)."""
    try:
        size, generation = stat_source(src.arrow)
    except OSError as e:
        raise InputError(f"cannot read source: {e.strerror or e}", file=src.arrow) from None
    if size != src.size or (src.generation and generation != src.generation):
        raise InputError(
            f"source changed since planning ({size} bytes, generation {generation}; planned "
            f"{src.size} bytes, generation {src.generation or '?'}): re-run the dispatcher to "
            "plan it again",
            file=src.arrow,
        )

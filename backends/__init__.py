"""Queue and state backends: the interfaces in `backends.base`, the embedded SQLite ones here."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dvid2ng.backends.sqlite_queue import SqliteQueue
    from dvid2ng.backends.sqlite_state import SqliteStateStore

QUEUE_FILE = "queue.sqlite"
STATE_FILE = "state.sqlite"


def open_embedded(
    state_dir: str | Path,
    *,
    max_delivery_attempts: Mapping[str, int] | int | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[SqliteQueue, SqliteStateStore]:
    """The embedded queue and state store: `queue.sqlite` and `state.sqlite` in `state_dir`.

    The folder and both files are created if missing; reopening them resumes where they left off.
    """
    from dvid2ng.backends.sqlite_queue import SqliteQueue
    from dvid2ng.backends.sqlite_state import SqliteStateStore

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    queue = SqliteQueue(
        state_dir / QUEUE_FILE, max_delivery_attempts=max_delivery_attempts, clock=clock
    )
    try:
        state = SqliteStateStore(state_dir / STATE_FILE, clock=clock)
    except BaseException:
        queue.close()
        raise
    return queue, state

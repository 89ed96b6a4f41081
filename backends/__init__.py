"""Queue and state backends: the interfaces in `backends.base`; the embedded SQLite ones and
the Google ones (Pub/Sub, Firestore), opened from a URL with `open_queue` / `open_state`:

    pubsub://PROJECT/PREFIX          Pub/Sub topics and subscriptions PREFIX-<tier>
    firestore://PROJECT[/DATABASE]   Firestore (the "(default)" database when none is given)
    sqlite:///ABS/FOLDER             queue.sqlite / state.sqlite in that folder (embedded)
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dvid2ng.backends.base import Queue, StateStore
    from dvid2ng.backends.sqlite_queue import SqliteQueue
    from dvid2ng.backends.sqlite_state import SqliteStateStore

QUEUE_FILE = "queue.sqlite"
STATE_FILE = "state.sqlite"
QUEUE_URL_FORMS = "pubsub://PROJECT/PREFIX or sqlite:///ABSOLUTE/FOLDER"
STATE_URL_FORMS = "firestore://PROJECT[/DATABASE] or sqlite:///ABSOLUTE/FOLDER"


def _parts(url: str, what: str, forms: str) -> tuple[str, str, str]:
    """(scheme, netloc, path) of a backend URL, or a ValueError naming the accepted forms."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"{url!r} is not a {what} URL; use {forms}")
    parsed = urllib.parse.urlsplit(url)
    if parsed.query or parsed.fragment:
        raise ValueError(f"{url!r} is not a {what} URL (a query or fragment); use {forms}")
    return parsed.scheme.lower(), parsed.netloc, parsed.path


def _sqlite_folder(netloc: str, path: str, url: str, what: str, forms: str) -> Path:
    if netloc or not path.startswith("/") or path == "/":
        raise ValueError(
            f"{url!r} is not a {what} URL: an embedded folder is sqlite:///ABSOLUTE/FOLDER "
            f"(three slashes, an absolute path); use {forms}"
        )
    return Path(urllib.parse.unquote(path))


def open_queue(url: str) -> Queue:
    """The queue named by `url` (see the module docstring)."""
    scheme, netloc, path = _parts(url, "queue", QUEUE_URL_FORMS)
    if scheme == "pubsub":
        prefix = path.strip("/")
        if not netloc or not prefix or "/" in prefix:
            raise ValueError(
                f"{url!r} is not a queue URL: Pub/Sub is pubsub://PROJECT/PREFIX (a project id "
                f"and one topic prefix); use {QUEUE_URL_FORMS}"
            )
        from dvid2ng.backends.pubsub_queue import PubSubQueue

        return PubSubQueue(netloc, prefix)
    if scheme == "sqlite":
        from dvid2ng.backends.sqlite_queue import SqliteQueue

        folder = _sqlite_folder(netloc, path, url, "queue", QUEUE_URL_FORMS)
        folder.mkdir(parents=True, exist_ok=True)
        return SqliteQueue(folder / QUEUE_FILE)
    raise ValueError(
        f"{url!r} is not a queue URL: unknown scheme {scheme!r}; use {QUEUE_URL_FORMS}"
    )


def open_state(url: str) -> StateStore:
    """The state store named by `url` (see the module docstring)."""
    scheme, netloc, path = _parts(url, "state", STATE_URL_FORMS)
    if scheme == "firestore":
        database = path.strip("/")
        if not netloc or "/" in database:
            raise ValueError(
                f"{url!r} is not a state URL: Firestore is firestore://PROJECT or "
                f"firestore://PROJECT/DATABASE; use {STATE_URL_FORMS}"
            )
        from dvid2ng.backends.firestore_state import FirestoreStateStore

        return FirestoreStateStore(netloc, database or None)
    if scheme == "sqlite":
        from dvid2ng.backends.sqlite_state import SqliteStateStore

        folder = _sqlite_folder(netloc, path, url, "state", STATE_URL_FORMS)
        folder.mkdir(parents=True, exist_ok=True)
        return SqliteStateStore(folder / STATE_FILE)
    raise ValueError(
        f"{url!r} is not a state URL: unknown scheme {scheme!r}; use {STATE_URL_FORMS}"
    )


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

"""`open_queue` / `open_state`: the accepted URL forms, and a clear error for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvid2ng.backends import QUEUE_URL_FORMS, STATE_URL_FORMS, open_queue, open_state
from dvid2ng.backends.firestore_state import FirestoreStateStore
from dvid2ng.backends.pubsub_queue import PubSubQueue
from dvid2ng.backends.sqlite_queue import SqliteQueue
from dvid2ng.backends.sqlite_state import SqliteStateStore


def test_google_urls():
    q = open_queue("pubsub://my-project/dvid2ng")
    assert isinstance(q, PubSubQueue) and (q.project, q.prefix) == ("my-project", "dvid2ng")
    s = open_state("firestore://my-project")
    assert isinstance(s, FirestoreStateStore) and s.database == "(default)"
    assert open_state("firestore://my-project/").database == "(default)"
    assert open_state("firestore://my-project/fleet-db").database == "fleet-db"


def test_sqlite_urls_open_the_embedded_files(tmp_path: Path):
    folder = tmp_path / "fleet state"
    q = open_queue(f"sqlite://{folder}")
    s = open_state(f"sqlite://{folder}")
    assert isinstance(q, SqliteQueue) and q.path == folder / "queue.sqlite"
    assert isinstance(s, SqliteStateStore) and s.path == folder / "state.sqlite"
    q.close()
    s.close()


@pytest.mark.parametrize(
    "url",
    ["", "dvid2ng", "kafka://x/y", "pubsub://project", "pubsub://project/", "pubsub:///prefix",
     "pubsub://p/a/b", "pubsub://p/x?y=1", "sqlite://relative/folder", "sqlite:///",
     "firestore://p"],
)  # fmt: skip
def test_bad_queue_urls_name_the_accepted_forms(url: str):
    with pytest.raises(ValueError, match="is not a queue URL") as e:
        open_queue(url)
    assert QUEUE_URL_FORMS in str(e.value)


@pytest.mark.parametrize(
    "url",
    ["", "state", "redis://x", "firestore://", "firestore:///db", "firestore://p/a/b",
     "sqlite://rel", "pubsub://p/q"],
)  # fmt: skip
def test_bad_state_urls_name_the_accepted_forms(url: str):
    with pytest.raises(ValueError, match="is not a state URL") as e:
        open_state(url)
    assert STATE_URL_FORMS in str(e.value)


def test_invalid_pubsub_names_are_refused():
    with pytest.raises(ValueError, match="invalid Pub/Sub name"):
        open_queue("pubsub://p/9-starts-with-a-digit")

"""Shared test helpers. Real DVID fixtures live in ../shared/fixtures beside the checkout;
tests that need them skip with a clear reason when that folder is absent (a user's clone)."""

from __future__ import annotations

import gzip
import signal
from pathlib import Path

import numpy as np
import pytest

# The real Pub/Sub and Firestore emulators (session fixtures; tests skip when they are absent).
from tests.emulators import (  # noqa: F401
    firestore_emulator,
    firestore_project,
    pubsub_emulator,
    pubsub_project,
)

# A suite started as a background job of a shell without job control (`cmd &` in a script,
# `nohup`) inherits SIGINT ignored, and an ignored signal stays ignored across exec: every
# child would then shrug off the Ctrl-C the interrupt tests send. A handler (unlike SIG_IGN)
# is reset to the default on exec, so installing Python's own makes the children take Ctrl-C
# as from a terminal, however the suite was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """Path to ../shared/fixtures, or skip the test if it is not there."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(
            f"real DVID fixtures not found at {SHARED_FIXTURES} (only present in CI / dev checkouts)"
        )
    return SHARED_FIXTURES


def read_gz(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


def read_raw_volume(path: Path, shape: tuple[int, int, int] = (64, 64, 64)) -> np.ndarray:
    """A gzipped little-endian uint64 volume in ZYX C-order (X fastest)."""
    return np.frombuffer(read_gz(path), dtype="<u8").reshape(shape)

"""Does a call let other Python threads run? A probe that needs no clock.

A helper thread counts in a loop, giving the GIL up after every step (`time.sleep(0)`), while
the switch interval is set so long that a thread holding the GIL is never asked to drop it.
The caller reads the count, makes the call, reads the count again: if the call holds the GIL
throughout, the helper cannot run in between and the count is unchanged, every time; if the
call releases it, the helper gets in whenever the OS schedules it during the call. So a call
that holds the GIL scores exactly 0, one that releases it scores above 0 on any machine that
gives the helper a core now and then, however loaded.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable


def overlap_fraction(call: Callable[[], object], calls: int = 200) -> float:
    """Fraction of `calls` calls during which another thread ran Python code."""
    counter = [0]
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            counter[0] += 1
            time.sleep(0)  # releases the GIL: the caller gets it back whenever it wants

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    helper = threading.Thread(target=spin, daemon=True)
    helper.start()
    hits = 0
    try:
        while counter[0] == 0:  # the helper is running
            time.sleep(0.001)
        for _ in range(calls):
            before = counter[0]
            call()
            hits += counter[0] != before
    finally:
        done.set()
        helper.join()
        sys.setswitchinterval(old)
    return hits / calls

"""Waiting for something that happens on another thread or process: on a condition, with a bound."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_SECONDS = 0.05


def wait_until[T](predicate: Callable[[], T], *, what: str, timeout: float = 30.0) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` did not happen when ``timeout`` seconds pass first. The
    bound is generous on purpose: it proves the thing happens (or a hang is gone), not how fast.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: did not happen within {timeout:g} s (last: {result!r:.300})")
        time.sleep(POLL_SECONDS)  # between two looks at the condition: the one sleep that waits

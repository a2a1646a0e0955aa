"""Where the relay's log lines go while a command runs: stdout carries only the command's own output."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def logs_to_stderr() -> Iterator[None]:
    """Keep stdout for the command's output: the relay's (powertools) log lines go to stderr meanwhile."""
    from relay.observability import logger

    handler = logger.registered_handler
    if not isinstance(handler, logging.StreamHandler):
        yield
        return
    # Assigned, not setStream(): that flushes the old stream, which may be closed already.
    original = handler.stream
    handler.stream = sys.stderr
    try:
        yield
    finally:
        handler.stream = original

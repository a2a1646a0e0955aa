"""Where the relay's log lines go while a command runs: stdout carries only the command's own output.

``relay.cli.run`` runs every command inside ``logs_to_stderr()``; ``relay local demo`` moves them on
to its log file (``relay.cli.local_cmd``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any


def stdout_log_handlers(stdout: IO[str]) -> list[logging.StreamHandler[Any]]:
    """The log handlers that would write among a command's output on ``stdout``: the relay's powertools
    Logger's (always: it took whatever stdout was when relay.observability was imported) and every
    other stream handler writing to ``stdout``."""
    from relay.observability import logger

    found: list[logging.StreamHandler[Any]] = []
    relay_handler = logger.registered_handler
    if isinstance(relay_handler, logging.StreamHandler):
        found.append(relay_handler)
    for each in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(each, "handlers", []):  # a PlaceHolder has none
            on_stdout = isinstance(handler, logging.StreamHandler) and handler.stream is stdout
            if on_stdout and handler not in found:
                found.append(handler)
    return found


@contextmanager
def logs_to_stderr() -> Iterator[None]:
    """Keep stdout for the command's output: every log line goes to stderr meanwhile."""
    moved = [(handler, handler.stream) for handler in stdout_log_handlers(sys.stdout)]
    # Assigned, not setStream(): that flushes the old stream, which may be closed already.
    for handler, _ in moved:
        handler.stream = sys.stderr
    try:
        yield
    finally:
        for handler, original in moved:
            handler.stream = original

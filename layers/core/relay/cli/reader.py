"""stdout while a command runs, for a reader that may leave before the output ends (``| head -1``).

The rule: a reader leaving early changes nothing but where the rest of the output goes. The command
runs to its own end; its exit status and its stderr line are those it would give a reader that read
everything. ``relay dlq redrive ... | head`` still exits 1 when messages are left, and says so on stderr
(stderr is not the pipe that broke): under ``pipefail`` a script never reads success into a run that
needed attention.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _UntilTheReaderLeaves:
    """A stream (text, or its binary ``buffer``) that drops what is written once the reader has left."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._left = False

    def write(self, data: Any) -> int:
        if not self._left:
            try:
                return int(self._stream.write(data))
            except BrokenPipeError:
                self._leave()
        return len(data)

    def flush(self) -> None:
        if not self._left:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._leave()

    @property
    def buffer(self) -> _UntilTheReaderLeaves:
        return _UntilTheReaderLeaves(self._stream.buffer)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)

    def _leave(self) -> None:
        self._left = True
        discard(self._stream)


@contextmanager
def reader_may_leave() -> Iterator[None]:
    """Inside, a write to stdout never fails because its reader left (see the module's rule)."""
    real = sys.stdout
    sys.stdout = guarded = _UntilTheReaderLeaves(real)  # the stream, minus EPIPE
    try:
        yield
    finally:
        guarded.flush()  # what is still buffered: a reader that left now is one more that left early
        sys.stdout = real


def discard(stream: Any) -> None:
    """Point ``stream``'s descriptor at /dev/null, so what is still buffered for the reader that left
    does not fail again when Python flushes it on the way out."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)

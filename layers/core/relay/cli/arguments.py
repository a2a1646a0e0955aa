"""Argument types shared by the commands: a value they refuse is a usage error (exit 2), named by argparse
(``relay dlq list: argument --max: must be 1 or more``), never a traceback further on."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from relay.cli.exit_codes import UsageError


def _shown(text: str) -> str:
    """The value as a message quotes it: a long one cut (a pasted file must not become the error line)."""
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


def _parse[Number: (int, float)](text: str, parse: Callable[[str], Number], what: str) -> Number:
    try:
        return parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {_shown(text)!r}") from None


def positive_int(text: str) -> int:
    value = _parse(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def whole_number_up_to(most: int, why: str) -> Callable[[str], int]:
    """A whole number from 1 to ``most`` (a limit the AWS call it goes to sets; ``why`` names it)."""

    def whole_number(text: str) -> int:
        value = positive_int(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most} ({why}), not {value}")
        return value

    return whole_number


# The longest any command waits for one thing (a check, an Athena query, the demo's queue draining):
# more is a typo, and past about 1e9 s the socket and thread waits a value reaches overflow.
MAX_WAIT = timedelta(days=1)


def positive_seconds(text: str) -> float:
    value = _parse(text, float, "a number of seconds")
    if not math.isfinite(value):  # a socket or wait timeout takes neither nan nor inf
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, not {_shown(text)}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {_shown(text)}")
    if value > MAX_WAIT.total_seconds():
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_WAIT.total_seconds():g} seconds (one day), not {_shown(text)}"
        )
    return value


def per_second(text: str) -> float:
    value = _parse(text, float, "a rate per second")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a rate per second above 0, not {_shown(text)}")
    return value


def port(text: str) -> int:
    value = _parse(text, int, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (any free port) to 65535, not {value}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
# The longest any stored record is kept (the template's ArchiveRetentionDays at most): looking further
# back finds nothing more, and each day looked at is a listing of the bucket.
MAX_LOOKBACK = timedelta(days=400)


def duration(text: str) -> timedelta:
    """``90m``, ``24h``, ``7d``, ``2w`` (or bare seconds): how far back a command looks."""
    number, unit = (text[:-1], text[-1].lower()) if text and text[-1].isalpha() else (text, "s")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit not in _UNITS or math.isnan(value):  # the message quotes what was typed, whole
        raise argparse.ArgumentTypeError(f"not a duration: {_shown(text)!r} (e.g. 90m, 24h, 7d, 2w)")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a duration above 0, not {_shown(text)}")
    seconds = value * _UNITS[unit]
    if seconds > MAX_LOOKBACK.total_seconds():
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_LOOKBACK.days}d (nothing is kept longer), not {_shown(text)}"
        )
    return timedelta(seconds=seconds)


def file_path(text: str) -> Path:
    """A file named on the command line. Held to the checks every other argument gets from the parser
    (relay.cli.CommandParser), which a Path would escape: "" (an unset shell variable) names nothing,
    not the current directory, and a path longer than any is refused without being echoed."""
    from relay.cli import MAX_ARGUMENT_CHARS

    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if len(text) > MAX_ARGUMENT_CHARS:
        raise argparse.ArgumentTypeError(
            f"{len(text)} characters, more than any path relay takes (at most {MAX_ARGUMENT_CHARS})"
        )
    return Path(text)


def file_or_stdin(path: str | Path) -> bytes:
    """The bytes of a file named on the command line, ``-`` for stdin: every command reading ``-`` reads
    it here. A closed stdin (``<&-``: Python's sys.stdin is then None) is a file that cannot be read."""
    if str(path) != "-":
        return Path(path).read_bytes()
    stdin = getattr(sys.stdin, "buffer", None)
    if stdin is None:
        raise UsageError("-: cannot be read: stdin is closed")
    try:
        return bytes(stdin.read())
    except (OSError, ValueError) as exc:  # a descriptor closed under it, or a stream closed already
        raise UsageError(
            f"-: cannot be read: {getattr(exc, 'strerror', None) or type(exc).__name__}"
        ) from None

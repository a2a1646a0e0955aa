"""What a ``relay`` command's exit status means, for every command alike, and the errors that end one.

The codes and their meanings are ``ExitCode`` and ``MEANINGS`` below (``relay --help`` prints them).
Every error that ends a command becomes one line on stderr, written in one place (``relay.cli.run``):

    relay <command> [<subcommand>]: <message>

A relay error (settings, AWS, Genesys) is named by its type, as the docs name it
(``relay targets sync: GenesysForbidden: ...``); its message carries no secret by contract. An
unexpected exception shows only its type: its message might hold anything.
"""

from __future__ import annotations

import textwrap
from enum import IntEnum

from relay.errors import (  # the errors that end a command, re-exported for the commands
    CommandError,
    CommandFailed,
    Interrupted,
    NeedsAttention,
    UsageError,
)

__all__ = [
    "CommandError",
    "CommandFailed",
    "ExitCode",
    "Interrupted",
    "NeedsAttention",
    "UsageError",
    "describe",
    "one_line",
    "outcome",
]


class ExitCode(IntEnum):
    OK = 0
    ATTENTION = 1
    USAGE = 2
    FAILED = 3
    INTERNAL = 70
    INTERRUPTED = 130


MEANINGS = {
    ExitCode.OK: "ok: the command did what was asked",
    ExitCode.ATTENTION: "done, but something needs attention: configs rejected, target records "
    "unreadable, targets unreachable, "
    "messages left in the DLQ or events the intake still refuses, letters a discard chose but could not "
    "save or delete, an envelope that does not open, a breaker reset that kept losing to the "
    "dispatchers, a replay, target switch or discard whose audit record could not be written (the "
    "output or the error line says what)",
    ExitCode.USAGE: "usage: a bad argument or option (an empty one too), a file that does not exist or "
    "cannot be read (or, for dlq discard --save, written), a target id that names several targets "
    "(choose with --integration)",
    ExitCode.FAILED: "failed: the command could not run (settings, AWS_REGION or AWS_ENDPOINT_URL too, a "
    "--stack-name that names no stack, AWS or an endpoint answering something else, Genesys Cloud, the "
    "local stack, a target id that names no target in the TargetsTable, an integration record this "
    "release cannot read (or a target record a command names), an id "
    "that names nothing in the audit or the archive, a replay refused)",
    ExitCode.INTERNAL: "internal error: a bug in the relay; `relay --debug ...` shows the traceback",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def describe() -> str:
    """The exit status table, as ``relay --help`` ends."""
    rows = (
        textwrap.fill(
            meaning,
            width=100,
            initial_indent=f"  {int(code):<5}",
            subsequent_indent=" " * 7,
            break_on_hyphens=False,  # an option (--stack-name) stays whole
        )
        for code, meaning in MEANINGS.items()
    )
    return "exit status, the same for every command:\n" + "\n".join(rows)


def outcome(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and the message (one line, without the command) for an error that ended a command."""
    from relay.errors import RelayError

    if isinstance(exc, CommandError):
        return ExitCode(exc.exit_code), one_line(exc.message)
    if isinstance(exc, RelayError):
        return ExitCode.FAILED, one_line(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, OSError) and exc.filename is not None:
        # A file named on the command line (or one it leads to) is missing, unreadable or unwritable.
        return ExitCode.USAGE, one_line(f"{exc.filename}: {exc.strerror or type(exc).__name__}")
    if isinstance(exc, OSError):
        return ExitCode.FAILED, one_line(exc.strerror or type(exc).__name__)  # a socket: port in use, ...
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    return ExitCode.INTERNAL, f"internal error ({type(exc).__name__}); relay --debug ... shows the traceback"


def one_line(message: str) -> str:
    """A message that might span lines (a wrapped SDK error, say) as one line."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip()) or "(no message)"

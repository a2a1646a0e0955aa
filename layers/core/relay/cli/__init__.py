"""The ``relay`` console command (also ``python -m relay``).

Each command group lives in its own module with ``register(subparsers)``; heavy imports happen inside
the command functions so that ``relay --help`` stays fast. A command returns its exit code, or raises:
``run`` is the one place that turns an error into an exit code and one line on stderr
(relay.cli.exit_codes says which code means what).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from relay import __version__
from relay.cli.exit_codes import CommandError, ExitCode, UsageError, describe, outcome
from relay.cli.logs import logs_to_stderr
from relay.cli.reader import reader_may_leave
from relay.cli.stack_option import stack_settings
from relay.cli.terminal import visible

# Modules under relay.cli that register a command group.
COMMAND_MODULES = ("local_cmd", "targets_cmd", "decrypt_cmd", "dlq_cmd", "breaker_cmd", "deliveries_cmd")
COMMAND = "relay_command"  # the namespace attribute naming the command that runs: "relay targets sync"
MAX_ARGUMENT_CHARS = 4096  # Linux's PATH_MAX; ids are at most 1,024 (relay.models.genesys.ID_MAX_LENGTH)


class _DescribedCommands(argparse._SubParsersAction):  # type: ignore[type-arg]  # argparse's own
    """Subcommands whose ``--help`` opens with what the command does: its one line in the parent's list
    (``help``), unless it has a description of its own."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("help") and not kwargs.get("description"):
            kwargs["description"] = kwargs["help"]
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        return parser


class CommandParser(argparse.ArgumentParser):
    """argparse held to the CLI's contract: a refused command line is raised as a UsageError (one line
    from ``run``, instead of argparse's usage block and its own exit), and a command records its name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _DescribedCommands)
        # argparse reads only "-1" and "-1.5" as values, so `--since -1h` was refused as "expected one
        # argument"; a negative duration is passed on for its own clear message (relay.cli.arguments).
        self._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d*\.?\d+[a-zA-Z]$")

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)", command=self.prog)

    def parse_args(  # type: ignore[override]  # argparse's overloads; this parser only runs main()
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> Any:
        parsed, extra = self.parse_known_args(args, namespace)
        command = getattr(parsed, COMMAND, self.prog)  # errors are named by the command, not "relay"
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see --help)", command=command)
        for dest, value in vars(parsed).items():
            # An id, a name or a value typed as "" (an unset shell variable) names nothing.
            # A repeatable option (action="append") holds a list of them.
            values = value if isinstance(value, list) else [value]
            if any(isinstance(each, str) and not each.strip() for each in values):
                raise UsageError(f"argument {_shown_as(self, dest)}: must not be empty", command=command)
            # Far longer than any id, name, URL or path: refused before a message could echo it whole.
            longest = max((len(each) for each in values if isinstance(each, str)), default=0)
            if longest > MAX_ARGUMENT_CHARS:
                raise UsageError(
                    f"argument {_shown_as(self, dest)}: {longest} characters, more than any id, name, "
                    f"URL or path relay takes (at most {MAX_ARGUMENT_CHARS})",
                    command=command,
                )
        return parsed

    def set_defaults(self, **kwargs: Any) -> None:
        if "func" in kwargs:  # a command's own parser: "relay targets sync"
            kwargs.setdefault(COMMAND, self.prog)
        super().set_defaults(**kwargs)


def _shown_as(parser: argparse.ArgumentParser, dest: str) -> str:
    """How --help shows the argument stored as ``dest`` (``--stack-name``, ``TARGET_ID``), in any command."""
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if action.dest == dest:
                if action.option_strings:
                    return action.option_strings[-1]
                return action.metavar if isinstance(action.metavar, str) else dest
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return dest


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="relay",
        description="Run the relay locally and operate it: targets, dead letters, breakers, deliveries, "
        "envelopes.",
        epilog=describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"relay {__version__}",
        help="print the relay's version and exit",
    )
    parser.add_argument(
        "--debug", action="store_true", help="on an error, print its traceback before the error line"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"relay.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"relay.cli.{name}":
                raise
            continue  # that command group is not built yet
        module.register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command it names, and return its exit code. Every error that ends the
    command becomes one line on stderr, ``relay <command> <subcommand>: <message>``, and its code."""
    args = None
    try:
        try:
            with reader_may_leave():  # --help, --version
                args = parser.parse_args(argv)
        except SystemExit as done:  # --help, --version: argparse printed them
            return done.code if isinstance(done.code, int) else ExitCode.OK
        # Log lines go to stderr: stdout carries only the command's own output (README, section 8).
        # A reader that leaves early (`| head -1`) changes only where the rest of the output goes:
        # the command's own status and stderr line stand (relay.cli.reader). Inside logs_to_stderr,
        # which finds the log handlers writing to the real stdout.
        with logs_to_stderr(), stack_settings(args), reader_may_leave():  # --stack-name: its names
            return int(args.func(args))
    except (Exception, KeyboardInterrupt) as exc:
        code, message = outcome(exc)
        named = exc.command if isinstance(exc, CommandError) else None  # argparse's, before args exist
        command = named or getattr(args, COMMAND, None) or parser.prog
        if getattr(args, "debug", False):
            traceback.print_exception(exc, file=sys.stderr)
        # One line whatever the message quotes (an id a sender chose, an argument): escaped, not run.
        print(visible(f"{command}: {message}"), file=sys.stderr)
        return int(code)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

"""The ``relay`` console command (also ``python -m relay``).

Each command group lives in its own module with ``register(subparsers)``; heavy imports happen inside
the command functions so that ``relay --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules under relay.cli that register a command group.
COMMAND_MODULES = ("local_cmd", "targets_cmd", "decrypt_cmd", "dlq_cmd", "breaker_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"relay.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"relay.cli.{name}":
                raise
            continue  # that command group is not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

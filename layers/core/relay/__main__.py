"""``python -m relay`` and the ``relay`` console script (pyproject.toml's ``[project.scripts]``).

relay.cli is imported inside ``main``: Ctrl-C while it loads (the first tenth of a second or so) would
otherwise be Python's KeyboardInterrupt traceback, before ``relay.cli.run`` handles Ctrl-C itself.
"""

import sys

INTERRUPTED = 130  # relay.cli.exit_codes.ExitCode.INTERRUPTED, not imported: it is what may be cut short


def main() -> int:
    try:
        from relay.cli import build_parser, run

        parser = build_parser()  # imports every command group
    except KeyboardInterrupt:
        print("relay: interrupted", file=sys.stderr)
        return INTERRUPTED
    return run(parser)


if __name__ == "__main__":
    sys.exit(main())

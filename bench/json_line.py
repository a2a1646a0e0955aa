"""What a local-stack benchmark prints: its figures as one JSON object on the last line of stdout,
with everything else the stack and its in-process functions write (log lines, EMF) kept out of it."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_and_print(name: str, main: Callable[[list[str]], dict[str, Any]]) -> None:
    """Run ``main(sys.argv[1:])`` with stdout diverted to <tmp>/relay-<name>-stdout.log, then print
    what it returned as the one JSON line."""
    real_stdout = sys.stdout
    with open(Path(tempfile.gettempdir()) / f"relay-{name}-stdout.log", "w") as diverted:
        sys.stdout = diverted
        try:
            figures = main(sys.argv[1:])
        finally:
            sys.stdout = real_stdout
    print(json.dumps(figures))

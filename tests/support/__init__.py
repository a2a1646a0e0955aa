"""What the tests share, in one place: events built from the samples in events/, the Lambda context,
the handler loader, draining a queue, and waiting on a condition.

Importable as ``support`` from every test directory (pyproject's pytest ``pythonpath`` puts tests/ on
the path). ``support.handlers`` and ``support.events`` import only the standard library: the handler
import probes load them in bare interpreters.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

"""Adaptive back-off on 429 (issue 14, point 3), scaled to seconds: bench/rate_limit_bench.py's
``adaptation`` scenario with the same code, shorter and slower. Two targets whose receiver keeps a
hidden limit (429 with Retry-After beyond it) are flooded through a fleet of dispatchers on moto;
one has a configured limit far above the hidden one, the other none. The full-size figures
(throughput at least 85 % of the hidden limit, at most 5 % answered 429) are ``make bench``'s."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.alone, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
HIDDEN_LIMIT = 10.0


def load_bench() -> ModuleType:
    """bench/rate_limit_bench.py, the script ``make bench`` runs (bench/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location(
        "relay_bench_rate_limit", ROOT / "bench" / "rate_limit_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    result: dict[str, Any] = load_bench().adaptation(
        HIDDEN_LIMIT, duration=35.0, measure_after=15.0, dispatchers=3
    )
    return result


@pytest.mark.parametrize("target", ["configured", "implicit"])
def test_a_receiver_with_a_hidden_limit_gets_close_to_it_with_few_429s(
    figures: dict[str, Any], target: str
) -> None:
    # Given a flood far above the receiver's hidden limit: without adaptation most requests meet a 429
    seen = figures[target]

    # Then, once adapted, the relay keeps sending near the limit and rarely beyond it
    assert seen["throughput_vs_limit"] >= 0.6, seen
    assert seen["share_429"] <= 0.15, seen
    # And the shared bucket holds the cut the 429s made (an implicit limit for the target without one)
    assert seen["bucket"] is not None and seen["bucket"]["cutRate"] is not None, seen

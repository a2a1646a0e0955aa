"""Ordered delivery per conversation (issue 15, point 4), scaled to fit ``make test``: the same code as
``make chaos``'s full run (bench/ordering.py), 100 events over 10 conversations, 30 % faults and a 4 s
outage, plus a small throughput phase.

One module-scoped run; each test asserts one claim on its summary, which is computed from what the
receivers and both dead-letter queues hold: per conversation, the sequence numbers each receiver
accepted, in arrival order, against the order they were sent in.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
# About a minute on the shared machine; bench/ordering.py runs 1,000 events over 50 conversations.
SCALED = {
    "events": 100,
    "conversations": 10,
    "fault_rate": 0.3,
    "down_seconds": 4.0,
    "throughput_events": 50,
    "throughput_conversations": 5,
}


def load_ordering() -> ModuleType:
    """bench/ordering.py, the script ``make chaos`` runs (bench/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location("relay_bench_ordering", ROOT / "bench" / "ordering.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


ordering = load_ordering()


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    sizes = ordering.Sizes(**SCALED)
    with ordering.OrderingRun(tmp_path_factory.mktemp("ordering"), sizes) as run:
        result: dict[str, Any] = run.execute()
        run.real_stdout.write(json.dumps(result) + "\n")
    yield result


def test_every_event_was_accepted_and_the_queues_drained(summary: dict[str, Any]) -> None:
    assert summary["events_sent"] == SCALED["events"], summary
    assert summary["conversations"] == SCALED["conversations"]
    assert summary["rejected_by_intake"] == {}
    assert summary["drained"] is True


def test_every_conversation_reached_the_ordered_target_in_its_send_order(summary: dict[str, Any]) -> None:
    ordered = summary["ordered"]
    assert ordered["conversations_in_order"] == SCALED["conversations"], json.dumps(ordered)
    assert ordered["conversations_out_of_order"] == 0 and ordered["adjacent_inversions"] == 0
    assert ordered["delivered"] == SCALED["events"]
    assert ordered["lost"] == 0 and ordered["dead_lettered"] == 0


def test_the_unordered_control_shows_out_of_order_arrivals(summary: dict[str, Any]) -> None:
    # The same events and faults against an ordering: none target: the check above can fail.
    control = summary["unordered_control"]
    assert control["conversations_out_of_order"] > 0 and control["adjacent_inversions"] > 0
    assert control["lost"] == 0
    assert control["delivered"] + control["dead_lettered"] == SCALED["events"]


def test_the_faults_and_the_outage_were_real(summary: dict[str, Any]) -> None:
    ordered = summary["ordered"]
    assert ordered["requests"] > 1.2 * SCALED["events"]  # about 30 % of requests failed and were retried
    start, end = summary["outage"]["down_window_s"]
    assert end - start >= SCALED["down_seconds"] - 0.2  # the window's ends are rounded to 0.1 s
    assert summary["outage"]["ordered_requests_while_down"] > 0


def test_the_throughput_phase_delivered_every_conversation_in_order(summary: dict[str, Any]) -> None:
    throughput = summary["throughput"]
    assert throughput["delivered"] == throughput["events"] == SCALED["throughput_events"]
    assert throughput["in_order"] is True
    assert throughput["unordered_baseline"]["delivered"] == SCALED["throughput_events"]

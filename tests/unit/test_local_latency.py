"""The local stack's latency figures (relay.local.latency): what `relay local demo` and the latency
bench report."""

from __future__ import annotations

import pytest

from relay.local.latency import Timing, latency_report


def test_the_relays_own_time_counts_an_overlap_of_its_halves_once_and_never_exceeds_end_to_end() -> None:
    # Given a delivery whose task the dispatcher received 15 ms before the sender had its 202 (the
    # intake queues the task, records its answer, then answers): POST at 0, 202 back at 40 ms, task
    # received at 25 ms, first byte at the receiver at 60 ms
    timing = Timing(sent=0.0, accepted=0.040, polled=0.025, arrived=0.060)

    report = latency_report([timing])

    # Then the queue is negative, and the relay's own time is the 60 ms end to end, not 40 + 35
    assert report["queue_ms"]["p50"] == pytest.approx(-15.0)
    assert report["relay_own_ms"]["p50"] == pytest.approx(60.0)
    assert report["relay_added_ms"]["p50"] == pytest.approx(20.0)


def test_the_relays_own_time_leaves_out_the_queues_wait_after_the_answer() -> None:
    # Given a task received 5 ms after the 202: POST at 0, 202 at 30 ms, received at 35, first byte at 50
    report = latency_report([Timing(sent=0.0, accepted=0.030, polled=0.035, arrived=0.050)])

    # Then the relay's own time is the intake's 30 ms and the dispatch's 15 ms
    assert report["relay_own_ms"]["p50"] == pytest.approx(45.0)
    assert report["queue_ms"]["p50"] == pytest.approx(5.0)

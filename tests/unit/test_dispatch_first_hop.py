"""The dispatcher of the intake's FIFO first hop (``FIRST_HOP``, docs/dispatcher.md "The first hop"):
its records carry a message group, but each is a single delivery, not a conversation, so they take the
standard path (delivered side by side, retried in place, deferred, routed to the slow lane) and never
the ordered one."""

from __future__ import annotations

from typing import Any

from test_dispatch_engine import NOW, Relay, always, record, relay, running, start

from relay.models.breaker import BreakerState, Phase

__all__ = ["running"]  # the fixture, shared with test_dispatch_engine


def grouped(target_id: str = "crm", **fields: Any) -> dict[str, Any]:
    """A record as the first hop's event source hands it over: its own message group."""
    each = record(target_id, **fields)
    each["attributes"]["MessageGroupId"] = each["messageId"]
    return each


def test_first_hop_records_are_delivered_on_the_standard_path(running: list[Relay]) -> None:
    r = start(running, relay(FIRST_HOP="true"))

    failed = r.batch(grouped(), grouped(), grouped())

    assert failed == []
    assert len(r.http.requests) == 3
    assert [line["outcome"] for line in r.audit_lines()] == ["delivered"] * 3


def test_without_first_hop_the_same_records_are_taken_for_ordered_ones_and_left(running: list[Relay]) -> None:
    # The contrast that shows what FIRST_HOP decides: a dispatcher without the ordered path leaves them.
    r = start(running, relay())
    records = [grouped(), grouped()]

    failed = r.batch(*records)

    assert failed == [each["messageId"] for each in records]
    assert r.http.requests == []


def test_a_failed_first_hop_record_is_retried_in_place_by_visibility(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(503), FIRST_HOP="true"))
    first = grouped()

    failed = r.batch(first)

    assert failed == [first["messageId"]]
    ((handle, _),) = r.queue.retries
    assert handle == first["receiptHandle"] and r.queue.deferrals == []


def test_a_first_hop_record_behind_an_open_breaker_is_deferred_as_a_new_message(running: list[Relay]) -> None:
    r = start(running, relay(FIRST_HOP="true"))
    r.set_breaker(BreakerState(Phase.OPEN, 5, 1, NOW + 30, 1))

    failed = r.batch(grouped(receive_count=2))

    # A new message (the queue adapter sends it to REQUEUE_QUEUE_URL: a FIFO queue takes no delay).
    assert failed == [] and r.http.requests == [] and r.queue.retries == []
    (deferral,) = r.queue.deferrals
    assert deferral["attempts"] == 1 and deferral["deferrals"] == 1

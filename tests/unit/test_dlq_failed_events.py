"""The EventBridge path's failure queues in ``relay dlq``: reading why a message is there and the event it
holds, and sending events back through the real intake (in-memory ports, no sockets)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from support.events import eventbridge_event
from test_intake_fakes import Integrations, make_entry

from relay.cli.dlq_cmd import format_resubmit
from relay.errors import DependencyUnavailable
from relay.logic.dlq import (
    UNPARSEABLE,
    FailedEventGroups,
    ResubmitOptions,
    list_dead_letters,
    read_failed_event,
    resubmit,
)
from relay.logic.intake import Intake
from relay.models.delivery import DeliveryTask
from relay.models.queue import ReceivedMessage
from relay.models.secrets import RotatingSecret
from relay.testing.fakes import InMemoryDeadLetterQueues, InMemoryDeliveryQueue, InMemoryIdempotencyStore

QUEUE = "https://sqs.example/123456789012/relay-IntakeFailureQueue"
CUSTOMER_TEXT = "my card number is 4111"


def genesys_event(**fields: Any) -> dict[str, Any]:
    event = eventbridge_event(**{"id": str(uuid.uuid4()), **fields})
    event["detail"]["eventBody"]["text"] = CUSTOMER_TEXT
    return event


def destination_record(event: Any, *, error_type: str = "DependencyUnavailable") -> str:
    """Lambda's on-failure record for an asynchronous invocation that failed every try."""
    return json.dumps(
        {
            "version": "1.0",
            "timestamp": "2026-03-25T13:20:01.123Z",
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:relay-IntakeFunction:live",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3,
            },
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "7", "functionError": "Unhandled"},
            "responsePayload": {"errorMessage": f"failed on {CUSTOMER_TEXT}", "errorType": error_type},
        }
    )


def received(body: str, attributes: dict[str, Any] | None = None) -> ReceivedMessage:
    return ReceivedMessage(str(uuid.uuid4()), "handle", body, attributes or {}, 1_000)


# --- reading a message ------------------------------------------------------------------------------------


def test_a_destination_record_gives_its_event_and_why_it_failed() -> None:
    event = genesys_event()

    failed = read_failed_event("intake-failures", received(destination_record(event)))

    assert failed.event == event and failed.event_id == event["id"]
    assert (failed.reason, failed.error_type) == ("RetriesExhausted/Unhandled", "DependencyUnavailable")


def test_a_rule_dead_letter_gives_its_body_as_the_event_and_its_error_code_as_why() -> None:
    event = genesys_event()
    attributes = {"ERROR_CODE": {"DataType": "String", "StringValue": "NO_PERMISSIONS"}}

    failed = read_failed_event("eventbridge", received(json.dumps(event), attributes))

    assert failed.event == event and (failed.reason, failed.error_type) == ("NO_PERMISSIONS", None)


def test_a_message_without_an_eventbridge_event_has_none_and_says_so() -> None:
    not_json = read_failed_event("intake-failures", received(f"not json {CUSTOMER_TEXT}"))
    no_payload = read_failed_event("intake-failures", received(destination_record({"text": CUSTOMER_TEXT})))
    no_code = read_failed_event("eventbridge", received("[1, 2]"))

    assert (not_json.reason, not_json.event) == (UNPARSEABLE, None)
    assert no_payload.reason == "RetriesExhausted/Unhandled" and no_payload.event is None
    assert (no_code.reason, no_code.event) == ("unknown", None)


def test_only_code_like_reasons_and_ids_are_shown() -> None:
    event = genesys_event(id=f"id with {CUSTOMER_TEXT}")
    record = json.loads(destination_record(event, error_type=f"{CUSTOMER_TEXT}!"))
    record["requestContext"]["condition"] = CUSTOMER_TEXT

    failed = read_failed_event("intake-failures", received(json.dumps(record)))

    assert (failed.reason, failed.error_type, failed.event_id) == ("unknown/Unhandled", None, None)


@given(st.text(max_size=300))
def test_any_body_is_read_without_raising_and_nothing_of_it_is_shown(body: str) -> None:
    for queue in ("eventbridge", "intake-failures"):
        failed = read_failed_event(queue, received(body))  # type: ignore[arg-type]
        shown = [failed.reason, failed.error_type or "", failed.event_id or ""]
        assert all(len(part) <= 100 and "\n" not in part for part in shown)


def test_listing_groups_by_why_with_a_sample_event_and_puts_every_message_back() -> None:
    queues = InMemoryDeadLetterQueues()
    events = [genesys_event() for _ in range(3)]
    for event in events[:2]:
        queues.put(QUEUE, destination_record(event))
    queues.put(QUEUE, destination_record(events[2], error_type="ConfigurationError"))

    report = list_dead_letters(
        queues, QUEUE, groups=FailedEventGroups("intake-failures"), wait_seconds=0, now=lambda: 61.0
    )

    document = report.to_json()
    assert [(g["reason"], g["errorType"], g["count"]) for g in document["groups"]] == [
        ("RetriesExhausted/Unhandled", "DependencyUnavailable", 2),
        ("RetriesExhausted/Unhandled", "ConfigurationError", 1),
    ]
    assert document["groups"][0]["sampleEventId"] in {e["id"] for e in events[:2]}
    assert document["groups"][0]["oldestAgeSeconds"] == 60
    assert CUSTOMER_TEXT not in json.dumps(document)
    assert len(queues.receive(QUEUE, visibility_seconds=30, wait_seconds=0)) == 3  # all visible again


# --- sending events back through the intake -------------------------------------------------------------


class FailingTaskQueue:
    """The intake's task queue with SQS down."""

    def send(self, bodies: Sequence[str]) -> None:
        raise DependencyUnavailable("delivery queue unavailable (ServiceUnavailable)")


def no_secret(name: str) -> RotatingSecret:
    raise AssertionError("the EventBridge path reads no secret")


def eventbridge_intake(queue: Any = None, idempotency: InMemoryIdempotencyStore | None = None) -> Intake:
    """The real intake on in-memory ports, routing EventBridge events to the test integration."""
    entry = make_entry()
    return Intake(
        integrations=Integrations(entry),
        get_secret=no_secret,
        queue=queue if queue is not None else InMemoryDeliveryQueue(),
        idempotency=idempotency or InMemoryIdempotencyStore(),
        eventbridge_integration_id=entry.integration.integration_id,
    )


def test_accepted_events_leave_the_queue_refused_ones_stay_with_the_intakes_reason() -> None:
    queues = InMemoryDeadLetterQueues()
    good, foreign = genesys_event(), genesys_event(source="aws.partner/example.com/other")
    records = [destination_record(event) for event in (good, foreign)]
    for record in records:
        queues.put(QUEUE, record)
    tasks = InMemoryDeliveryQueue()

    result = resubmit(
        queues, "intake-failures", QUEUE, eventbridge_intake(tasks), ResubmitOptions(wait_seconds=0)
    )

    assert (result.accepted, result.ok) == (1, False)
    (refusal,) = result.refused
    assert refusal.event_id == foreign["id"] and refusal.reason.startswith("BadRequest: invalid Genesys")
    assert {DeliveryTask.model_validate_json(body).event_id for body in tasks.bodies} == {good["id"]}
    assert queues.bodies(QUEUE) == [records[1]]
    assert CUSTOMER_TEXT not in format_resubmit(result.to_json()) + json.dumps(result.to_json())


def test_an_event_resent_twice_is_queued_once() -> None:
    queues = InMemoryDeadLetterQueues()
    tasks, idempotency = InMemoryDeliveryQueue(), InMemoryIdempotencyStore()
    record = destination_record(genesys_event())

    for _ in range(2):
        queues.put(QUEUE, record)
        result = resubmit(
            queues,
            "intake-failures",
            QUEUE,
            eventbridge_intake(tasks, idempotency),
            ResubmitOptions(wait_seconds=0),
        )
        assert result.accepted == 1 and result.ok

    assert len(tasks.bodies) == 2  # one per target, from the first run only
    assert queues.bodies(QUEUE) == []


def test_a_failing_dependency_ends_the_run_and_keeps_every_event_not_yet_accepted() -> None:
    queues = InMemoryDeadLetterQueues()
    for _ in range(3):
        queues.put(QUEUE, destination_record(genesys_event()))

    result = resubmit(
        queues,
        "intake-failures",
        QUEUE,
        eventbridge_intake(FailingTaskQueue()),
        ResubmitOptions(wait_seconds=0),
    )

    assert result.accepted == 0 and result.ok is False
    assert result.error is not None and result.error.startswith("DependencyUnavailable: delivery queue")
    assert len(queues.bodies(QUEUE)) == 3


def test_accepted_events_that_cannot_be_deleted_are_counted_and_stay() -> None:
    queues = InMemoryDeadLetterQueues()
    queues.put(QUEUE, destination_record(genesys_event()))
    queues.unavailable.add("delete_batch")

    result = resubmit(queues, "intake-failures", QUEUE, eventbridge_intake(), ResubmitOptions(wait_seconds=0))

    assert (result.accepted, result.not_deleted, result.ok) == (0, 1, False)
    assert len(queues.bodies(QUEUE)) == 1


def test_a_dry_run_sends_nothing_and_max_bounds_what_is_sent() -> None:
    queues = InMemoryDeadLetterQueues()
    for _ in range(3):
        queues.put(QUEUE, destination_record(genesys_event()))
    tasks = InMemoryDeliveryQueue()

    dry = resubmit(queues, "intake-failures", QUEUE, eventbridge_intake(tasks), ResubmitOptions(dry_run=True))
    bounded = resubmit(
        queues, "intake-failures", QUEUE, eventbridge_intake(tasks), ResubmitOptions(max_messages=2)
    )

    assert (dry.matched, dry.accepted, dry.mode) == (3, 0, "dry-run")
    assert "would send 3 of 3 scanned through the intake" in format_resubmit(dry.to_json())
    assert (bounded.accepted, bounded.skipped) == (2, 1)
    assert len(tasks.bodies) == 4 and len(queues.bodies(QUEUE)) == 1

"""The Genesys EventBridge path through the whole local stack: PutEvents (or ``relay local put-event``) ->
the template's rule -> the real intake, invoked asynchronously with its retries -> the delivery queue ->
the dispatcher -> the demo receivers; and, for an event the intake refuses, the on-failure queue."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.events import EVENTS, eventbridge_event, put_events_entry
from support.waiting import wait_until

from relay.local.stack import LocalStack

pytestmark = pytest.mark.e2e

SAMPLES = sorted(EVENTS.glob("eventbridge_*.json"))
WAIT = 60.0  # bound on waiting for the asynchronous side; generous, not a performance claim


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(eventbridge_retry_delays=(0.1, 0.2)) as running:
        yield running


def put(stack: LocalStack, event: dict[str, Any]) -> str:
    request = {"Entries": [put_events_entry(event)]}
    answer = requests.post(stack.put_events_url, json=request, timeout=15).json()
    assert answer["FailedEntryCount"] == 0, answer
    event_id: str = answer["Entries"][0]["EventId"]
    return event_id


def put_event_command(stack: LocalStack, path: Path) -> subprocess.CompletedProcess[str]:
    """`relay local put-event PATH` against the stack."""
    return subprocess.run(
        [sys.executable, "-m", "relay", "local", "put-event", str(path), "--api", stack.api_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def received(stack: LocalStack, event_id: str) -> dict[str, int]:
    """How many deliveries of the event each demo receiver accepted, by target name."""
    return {
        r.target_name: sum(1 for d in r.receiver.deliveries if (d.event or {}).get("id") == event_id)
        for r in stack.receivers.values()
    }


def delivery_queue_busy(stack: LocalStack) -> bool:
    assert stack.resources is not None and stack.poller is not None
    attributes = stack.sqs.get_queue_attributes(
        QueueUrl=stack.resources.delivery_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return any(int(v) for v in attributes.values()) or stack.poller.stats().in_flight > 0


def failure_records(stack: LocalStack) -> list[dict[str, Any]]:
    url = stack.describe()["eventbridge"]["on_failure_queue"]
    messages = stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def test_the_ready_line_says_where_to_send_eventbridge_events_and_where_failures_go(
    stack: LocalStack,
) -> None:
    described = stack.describe()["eventbridge"]
    assert described["put_events"] == f"{stack.api_url}/eventbridge/events"
    assert described["integration"] == stack.fixtures.integrations[0].id
    assert described["on_failure_queue"].endswith("-IntakeFailureQueue")
    assert described["rule_dead_letter_queue"].endswith("-EventBridgeDeadLetterQueue")


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_each_sample_goes_where_the_templates_rule_sends_it(stack: LocalStack, path: Path) -> None:
    assert stack.eventbridge is not None
    sample = json.loads(path.read_text())
    genesys = sample["source"].startswith("aws.partner/genesys.com")

    # When the sample is published with `relay local put-event`
    result = put_event_command(stack, path)
    assert result.returncode == 0, result.stderr[-2000:]
    event_id = json.loads(result.stdout)["Entries"][0]["EventId"]

    if genesys:
        # Then Genesys' event reaches every demo receiver of the EventBridge integration, once
        expected = {r.target_name: 1 for r in stack.receivers.values()}
        wait_until(lambda: received(stack, event_id) == expected, timeout=WAIT, what=f"{expected} deliveries")
    else:
        # Then an event outside the rule's pattern is accepted and goes nowhere
        assert stack.eventbridge.wait_idle(WAIT)
        wait_until(lambda: not delivery_queue_busy(stack), timeout=WAIT, what="the delivery queue idle")
        assert set(received(stack, event_id).values()) == {0}


def test_put_event_sends_a_list_in_requests_putevents_takes_and_answers_for_every_event(
    stack: LocalStack, tmp_path: Path
) -> None:
    # Given twelve Genesys events in one file (PutEvents takes ten, and 256 KB of them, per request):
    # one with about 160 KB of emoji (under 256 KB in UTF-8, three times over it ASCII-escaped), one with
    # 150 KB of text (it cannot share a request with the first), one over 256 KB on its own
    events = [eventbridge_event() for _ in range(12)]
    for event, note in zip(events, ("\U0001f600" * 40_000, "x" * 150_000, "y" * 300_000), strict=False):
        event["detail"] = {**event["detail"], "eventBody": {**event["detail"]["eventBody"], "note": note}}
    path = tmp_path / "twelve.json"
    path.write_text(json.dumps(events, ensure_ascii=False), encoding="utf-8")

    # When it is published with `relay local put-event`
    result = put_event_command(stack, path)

    # Then one answer has an entry per event, in order: the one over the limit refused with the reason,
    # every other accepted (exit 1: one was refused)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["FailedEntryCount"] == 1 and len(answer["Entries"]) == 12
    refused = answer["Entries"][2]
    assert "EventId" not in refused and "over the limit" in refused["ErrorMessage"]
    assert all("EventId" in entry for n, entry in enumerate(answer["Entries"]) if n != 2)

    # And the emoji event reaches the receivers whole
    big = answer["Entries"][0]["EventId"]
    expected = {r.target_name: 1 for r in stack.receivers.values()}
    wait_until(lambda: received(stack, big) == expected, timeout=WAIT, what=f"{expected} deliveries")
    delivered = next(iter(stack.receivers.values())).receiver.deliveries
    got = next(d.event for d in delivered if (d.event or {}).get("id") == big)
    assert got is not None and got["detail"]["eventBody"]["note"] == "\U0001f600" * 40_000


def test_an_event_the_intake_refuses_ends_on_the_failure_queue_after_the_retries(stack: LocalStack) -> None:
    assert stack.eventbridge is not None and stack.template is not None
    # Given a Genesys event whose detail the intake cannot accept (no topicName, no eventBody)
    refused = eventbridge_event(detail={"version": "2"})

    # When it is published and every try has run
    event_id = put(stack, refused)
    assert stack.eventbridge.wait_idle(WAIT)

    # Then the on-failure queue holds Lambda's record of it, after 1 + MaximumRetryAttempts tries
    retries = stack.template.resolve(stack.template.properties("IntakeFunction"))["EventInvokeConfig"][
        "MaximumRetryAttempts"
    ]
    records = [r for r in failure_records(stack) if r["requestPayload"]["id"] == event_id]
    assert len(records) == 1, records
    (record,) = records
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1 + int(retries)
    assert record["requestPayload"]["detail"] == refused["detail"]
    assert record["responsePayload"]["errorType"] == "BadRequest"
    assert "topicName" in record["responsePayload"]["errorMessage"]

    # And nothing of it reached a receiver
    wait_until(lambda: not delivery_queue_busy(stack), timeout=WAIT, what="the delivery queue idle")
    assert set(received(stack, event_id).values()) == {0}

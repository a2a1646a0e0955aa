"""``relay dlq list|redrive --queue eventbridge|intake-failures`` against a real moto server.

The intake's on-failure queue is filled the way the local stack's EventBridge emulation fills it: the
real intake, invoked asynchronously by relay.local.eventbridge, fails every try (its integration is not
in the TargetsTable yet) and Lambda's destination record lands in IntakeFailureQueue. The rule's
dead-letter queue, which nothing local writes, gets what EventBridge sends it: the event as the body,
RULE_ARN, TARGET_ARN, ERROR_CODE and ERROR_MESSAGE as message attributes. The redrive then sends the
events through the intake's EventBridge path, in-process, wired from the environment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from support.events import eventbridge_event, put_events_entry
from support.queues import drain

from relay.cli import main
from relay.local.aws_stack import (
    LocalResources,
    forget_cached_configuration,
    local_client,
    resolved_outputs,
)
from relay.local.eventbridge import LocalEventBridge
from relay.logic.intake.metrics import NoMetrics
from relay.models.delivery import DeliveryTask
from relay.models.targets import Integration, Target
from relay.settings import get_settings
from relay.wiring import aws_client, target_store
from relay.wiring.intake import build_intake

pytestmark = pytest.mark.integration

EVENTBRIDGE_INTEGRATION = "0e0e0e0e-0000-4000-8000-000000000000"
TARGETS = ("eb-target-a", "eb-target-b")
CUSTOMER_TEXT = "customer says: my card number is 4111"  # must never be printed
WAIT = 30.0  # bound on the asynchronous invocations; generous, not a performance claim


@dataclass(frozen=True)
class Queues:
    intake_failures: str
    eventbridge: str
    delivery: str


@pytest.fixture
def queues(aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch) -> Iterator[Queues]:
    """The stack's queues, named in the settings the operator's environment gives the command."""
    found = Queues(
        intake_failures=aws_stack.template.ref("IntakeFailureQueue"),
        eventbridge=aws_stack.template.ref("EventBridgeDeadLetterQueue"),
        delivery=aws_stack.delivery_queue_url,
    )
    monkeypatch.setenv("INTAKE_FAILURE_QUEUE_URL", found.intake_failures)
    monkeypatch.setenv("EVENTBRIDGE_DEAD_LETTER_QUEUE_URL", found.eventbridge)
    monkeypatch.setenv("EVENTBRIDGE_INTEGRATION_ID", EVENTBRIDGE_INTEGRATION)
    forget_cached_configuration()
    yield found


def genesys_event(**fields: Any) -> dict[str, Any]:
    """A Genesys partner event (a fresh id) whose detail quotes a customer."""
    event = eventbridge_event(**{"id": str(uuid.uuid4()), **fields})
    event["detail"]["eventBody"]["text"] = CUSTOMER_TEXT
    return event


def seed_eventbridge_targets() -> None:
    """The EventBridge integration and its two targets, as config sync stores them: the cause fixed."""
    store = target_store(get_settings())
    store.put_integration(Integration(integration_id=EVENTBRIDGE_INTEGRATION, name="Genesys EventBridge"))
    for target_id in TARGETS:
        store.put_target(
            Target(
                integration_id=EVENTBRIDGE_INTEGRATION,
                target_id=target_id,
                name=target_id,
                url=f"https://example.com/{target_id}",
            )
        )


def fail_in_the_intake(aws_stack: LocalResources, *events: dict[str, Any]) -> list[str]:
    """Publish ``events`` to the local EventBridge, whose rule invokes the real intake asynchronously:
    with the integration not in the TargetsTable it fails every try, so each event ends up as a
    destination record in IntakeFailureQueue. The ids EventBridge gave the events."""
    settings = get_settings()

    def intake(event: dict[str, Any], context: Any) -> Any:
        return build_intake(settings, metrics=NoMetrics()).handle_eventbridge(event)

    bridge = LocalEventBridge(
        aws_stack.template,
        sqs=local_client("sqs", aws_stack.endpoint_url),
        handlers={"IntakeFunction": intake},
        retry_delays=(0.01,),
    )
    try:
        answer = bridge.put_events([put_events_entry(event) for event in events])
        assert answer["FailedEntryCount"] == 0
        assert bridge.wait_idle(WAIT), "the local EventBridge did not finish its invocations"
    finally:
        bridge.stop()
    return [entry["EventId"] for entry in answer["Entries"]]


def rule_dead_letter(queue_url: str, event: dict[str, Any], error_code: str = "NO_PERMISSIONS") -> None:
    """What EventBridge sends its rule's dead-letter queue when it cannot hand the event to the intake."""
    attributes = {
        "RULE_ARN": "arn:aws:events:us-east-1:123456789012:rule/genesys/relay-IntakeFunctionGenesys",
        "TARGET_ARN": "arn:aws:lambda:us-east-1:123456789012:function:relay-IntakeFunction:live",
        "ERROR_CODE": error_code,
        "ERROR_MESSAGE": "Lambda function could not be invoked",
    }
    aws_client("sqs").send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps(event),
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
    )


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["dlq", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def queued(queue_url: str) -> list[DeliveryTask]:
    return [DeliveryTask.model_validate_json(record["body"]) for record in drain(queue_url)]


# --- list -------------------------------------------------------------------------------------------------


def test_the_intake_failure_queue_is_listed_by_why_and_every_message_put_back(
    aws_stack: LocalResources, queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two events the intake failed (its integration was not in the TargetsTable)
    event_ids = fail_in_the_intake(aws_stack, genesys_event(), genesys_event())

    # When
    code, out, err = run_cli(capsys, "list", "--queue", "intake-failures", "--format", "json")

    # Then one group: Lambda's condition and error kind, the intake's error type, a sample event id
    assert code == 0, err
    report = json.loads(out)
    (group,) = report["groups"]
    assert (group["reason"], group["errorType"], group["count"]) == (
        "RetriesExhausted/Unhandled",
        "ConfigurationError",
        2,
    )
    assert group["sampleEventId"] in event_ids
    assert group["oldestAgeSeconds"] is not None and group["oldestAgeSeconds"] >= 0
    assert CUSTOMER_TEXT not in out + err
    # and nothing was removed: both are visible again at once
    assert len(drain(queues.intake_failures)) == 2


def test_the_rule_dead_letter_queue_is_listed_by_error_code_as_a_table(
    queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    rule_dead_letter(queues.eventbridge, genesys_event())
    rule_dead_letter(queues.eventbridge, genesys_event())
    rule_dead_letter(queues.eventbridge, genesys_event(), error_code="THROTTLING")

    code, out, _ = run_cli(capsys, "list", "--queue", "eventbridge")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["REASON", "ERROR", "TYPE", "COUNT", "OLDEST", "SAMPLE", "EVENT", "ID"]
    assert lines[1].split()[:3] == ["NO_PERMISSIONS", "-", "2"]
    assert lines[2].split()[:3] == ["THROTTLING", "-", "1"]
    assert "3 messages scanned" in out
    assert CUSTOMER_TEXT not in out
    assert len(drain(queues.eventbridge)) == 3


# --- redrive ----------------------------------------------------------------------------------------------


def test_redrive_sends_failed_events_through_the_intake_and_a_second_redrive_queues_nothing_new(
    aws_stack: LocalResources, queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an event the intake failed, and one EventBridge could not hand to the intake at all
    (failed_in_intake,) = fail_in_the_intake(aws_stack, genesys_event())
    never_invoked = genesys_event()
    rule_dead_letter(queues.eventbridge, never_invoked)
    redriven = {"intake-failures": queues.intake_failures, "eventbridge": queues.eventbridge}
    copies = {queue: drain(url) for queue, url in redriven.items()}  # kept, to send them again later
    for queue, url in redriven.items():
        refill(url, copies[queue])
    # and the cause fixed: the integration and its targets are in the TargetsTable now
    seed_eventbridge_targets()

    # When both queues are redriven
    for queue in redriven:
        code, out, err = run_cli(capsys, "redrive", "--queue", queue, "--format", "json")
        assert code == 0, out + err
        result = json.loads(out)
        assert (result["accepted"], result["refused"], result["ok"]) == (1, [], True)
        assert CUSTOMER_TEXT not in out + err

    # Then each event's tasks reach the delivery queue once, one per target, and both queues are empty
    tasks = queued(queues.delivery)
    assert sorted((t.event_id, t.target_id) for t in tasks) == sorted(
        (event_id, target) for event_id in (failed_in_intake, never_invoked["id"]) for target in TARGETS
    )
    assert all(t.event_source == "eventbridge" and t.integration_id == EVENTBRIDGE_INTEGRATION for t in tasks)
    # the event as EventBridge delivered it, unchanged
    assert {json.loads(t.event_json or "")["id"] for t in tasks} == {failed_in_intake, never_invoked["id"]}
    assert next(json.loads(t.event_json or "") for t in tasks if t.event_id == never_invoked["id"]) == (
        never_invoked
    )
    assert drain(queues.intake_failures) == [] and drain(queues.eventbridge) == []

    # When the same messages are redriven again (a redrive repeated, or a copy left behind)
    for queue, url in redriven.items():
        refill(url, copies[queue])
        code, out, _ = run_cli(capsys, "redrive", "--queue", queue, "--format", "json")
        assert code == 0 and json.loads(out)["accepted"] == 1

    # Then the intake's idempotency queues nothing new, and the copies are gone from their queues
    assert queued(queues.delivery) == []
    assert drain(queues.intake_failures) == [] and drain(queues.eventbridge) == []


def refill(queue_url: str, records: list[dict[str, Any]]) -> None:
    """Send drained messages (Lambda SQS records) back to their queue, body and attributes unchanged."""
    for record in records:
        attributes = {
            name: {"DataType": value["dataType"], "StringValue": value["stringValue"]}
            for name, value in record["messageAttributes"].items()
        }
        kwargs: dict[str, Any] = {"MessageAttributes": attributes} if attributes else {}
        aws_client("sqs").send_message(QueueUrl=queue_url, MessageBody=record["body"], **kwargs)


def test_an_event_the_intake_still_refuses_stays_in_its_queue_with_the_reason(
    queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given, in the rule's dead-letter queue, a valid event, one from a source that is not Genesys,
    # and a message that holds no event at all
    seed_eventbridge_targets()
    valid = genesys_event()
    foreign = genesys_event(source="aws.partner/example.com/not-genesys")
    rule_dead_letter(queues.eventbridge, valid)
    rule_dead_letter(queues.eventbridge, foreign)
    aws_client("sqs").send_message(QueueUrl=queues.eventbridge, MessageBody=f"not json {CUSTOMER_TEXT}")

    # When
    code, out, err = run_cli(capsys, "redrive", "--queue", "eventbridge", "--format", "json")

    # Then the valid one went through; the two others stay, each reported with why (exit 1, one line)
    assert code == 1
    result = json.loads(out)
    assert result["accepted"] == 1 and result["ok"] is False
    reasons = {refusal["eventId"]: refusal["reason"] for refusal in result["refused"]}
    assert reasons[foreign["id"]].startswith("BadRequest: invalid Genesys EventBridge event")
    assert "source must start with aws.partner/genesys.com" in reasons[foreign["id"]]
    assert reasons[None] == "the message holds no EventBridge event (nothing to send)"
    assert err.splitlines()[-1] == (
        "relay dlq redrive: 2 events stay in their queue (the intake refuses them)"
    )
    assert {t.event_id for t in queued(queues.delivery)} == {valid["id"]}
    left = drain(queues.eventbridge)
    assert sorted(m["body"] for m in left) == sorted([json.dumps(foreign), f"not json {CUSTOMER_TEXT}"])
    assert CUSTOMER_TEXT not in out + err


def test_redrive_while_the_integration_is_still_unknown_leaves_every_event_and_says_why(
    aws_stack: LocalResources, queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a failed event, and the cause not fixed
    fail_in_the_intake(aws_stack, genesys_event())

    # When
    code, out, err = run_cli(capsys, "redrive", "--queue", "intake-failures")

    # Then it stays, and the table names the reason
    assert code == 1
    assert err.splitlines()[-1] == "relay dlq redrive: 1 event stays in its queue (the intake refuses it)"
    assert f"ConfigurationError: EventBridge integration {EVENTBRIDGE_INTEGRATION} is unknown" in out
    assert "sent 0 of 1 scanned" in out
    assert queued(queues.delivery) == []
    assert len(drain(queues.intake_failures)) == 1


def test_dry_run_and_max_send_nothing_past_what_they_allow(
    queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_eventbridge_targets()
    for _ in range(3):
        rule_dead_letter(queues.eventbridge, genesys_event())

    code, out, _ = run_cli(capsys, "redrive", "--queue", "eventbridge", "--dry-run")
    assert code == 0 and "would send 3 of 3 scanned through the intake" in out
    assert queued(queues.delivery) == []

    code, out, _ = run_cli(capsys, "redrive", "--queue", "eventbridge", "--max", "2", "--format", "json")
    assert code == 0 and json.loads(out)["accepted"] == 2
    assert len(queued(queues.delivery)) == 2 * len(TARGETS)
    assert len(drain(queues.eventbridge)) == 1


def test_delivery_only_options_are_refused_for_the_failure_queues(
    queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    rule_dead_letter(queues.eventbridge, genesys_event())

    code, _, err = run_cli(capsys, "redrive", "--queue", "eventbridge", "--target", "t", "--method", "resend")

    assert code == 2
    assert err == (
        "relay dlq redrive: --target, --method apply only to --queue delivery, ordered or first-hop\n"
    )
    assert len(drain(queues.eventbridge)) == 1


def test_stack_name_alone_names_the_failure_queues_and_the_integration_to_redrive_through(
    aws_stack: LocalResources,
    queues: Queues,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a stack whose outputs name the failure queue and the EventBridge integration, and an
    # operator's environment that names neither
    outputs = {
        "IntakeFailureQueueUrl": queues.intake_failures,
        "EventBridgeIntegrationId": EVENTBRIDGE_INTEGRATION,
    }
    local_client("cloudformation", aws_stack.endpoint_url).create_stack(
        StackName="relay-ops-extra",
        TemplateBody=json.dumps(
            {
                "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {
                    **{k: {"Value": v} for k, v in resolved_outputs(aws_stack.template).items()},
                    **{k: {"Value": v} for k, v in outputs.items()},
                },
            }
        ),
    )
    fail_in_the_intake(aws_stack, genesys_event())
    seed_eventbridge_targets()
    for name in ("INTAKE_FAILURE_QUEUE_URL", "EVENTBRIDGE_INTEGRATION_ID", "DELIVERY_QUEUE_URL"):
        monkeypatch.delenv(name)
    forget_cached_configuration()

    # When the operator redrives with --stack-name only
    code, out, err = run_cli(
        capsys, "redrive", "--queue", "intake-failures", "--format", "json", "--stack-name", "relay-ops-extra"
    )

    # Then the event went through the intake to its targets, the queue is empty
    assert code == 0, out + err
    assert json.loads(out)["accepted"] == 1
    assert sorted(t.target_id for t in queued(queues.delivery)) == sorted(TARGETS)
    assert drain(queues.intake_failures) == []

"""``relay deliveries show | replay``, ``relay targets enable | disable`` and ``--stack-name`` against
moto: the dispatcher delivers to a loopback receiver and writes its real audit and archive objects,
the commands run through ``relay.cli.main`` and read the resource names from a CloudFormation stack
registered in moto the way ``relay local serve`` registers its own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from support.events import INTEGRATION_ID, sample, sqs_record
from support.queues import drain
from test_dispatch_support import PLAIN_TARGET, seed_target

from relay.cli import main
from relay.local.aws_stack import LocalResources, forget_cached_configuration, local_client, register_stack
from relay.local.receiver import Receiver
from relay.logic.dispatch import Dispatcher
from relay.models.event_filters import EventFilters, MessageType
from relay.models.targets import Integration, OnExhausted, Ordering
from relay.models.timestamps import iso_utc
from relay.settings import get_settings
from relay.wiring import aws_client, target_store
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration
CONVERSATION = "1734d888-3c0e-47bc-bacb-e9996a16b682"
# What --stack-name replaces: with these unset, only the stack's outputs can name the resources.
RESOURCE_VARIABLES = (
    "TARGETS_TABLE",
    "BREAKER_TABLE",
    "IDEMPOTENCY_TABLE",
    "DELIVERY_QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL",
    "ORDERED_QUEUE_URL",
    "ORDERED_DEAD_LETTER_QUEUE_URL",
    "INTAKE_FAILURE_QUEUE_URL",
    "EVENTBRIDGE_DEAD_LETTER_QUEUE_URL",
    "AUDIT_BUCKET",
)
DLQS = ("delivery", "ordered", "eventbridge", "intake-failures")  # relay dlq --queue
TASK_DLQS = ("delivery", "ordered")  # redriven to a delivery queue (the others need an integration too)


@pytest.fixture
def stack(aws_stack: LocalResources) -> str:
    """The test's resources, registered as a CloudFormation stack."""
    name = f"{aws_stack.prefix}-local"
    register_stack(aws_stack, name)
    return name


@pytest.fixture
def dispatcher(aws_stack: LocalResources, receiver: Receiver) -> Iterator[Dispatcher]:
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    built = build_dispatcher(get_settings())
    yield built
    built.close()


def without_resource_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in RESOURCE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    forget_cached_configuration()


def event_record(event_id: str, *, delivery_id: str | None = None) -> dict[str, Any]:
    body = json.loads(sample("sqs_delivery_batch.json")["Records"][0]["body"])
    event = json.loads(body["eventJson"])
    event["id"] = event_id
    body.update(
        eventId=event_id,
        conversationId=CONVERSATION,
        targetId=PLAIN_TARGET,
        deliveryId=delivery_id or str(uuid.uuid4()),
        eventJson=json.dumps(event),
    )
    return sqs_record(body)


def delivered(dispatcher: Dispatcher, event_id: str) -> str:
    """Dispatch one event to the plain target; its delivery id."""
    delivery_id = str(uuid.uuid4())
    dispatcher.handle_batch([event_record(event_id, delivery_id=delivery_id)])
    return delivery_id


def delivered_to_the_plain_target_and_a_copy(
    dispatcher: Dispatcher, receiver: Receiver, event_id: str, integration_id: str, target_id: str
) -> None:
    """``event_id`` delivered to the plain target and to a copy of it named ``target_id`` under
    ``integration_id`` (an integration already in the TargetsTable)."""
    store = target_store(get_settings(), cache_ttl_seconds=0)
    plain = store.get_target(INTEGRATION_ID, PLAIN_TARGET)
    assert plain is not None
    store.put_target(plain.model_copy(update={"integration_id": integration_id, "target_id": target_id}))
    first = event_record(event_id)
    copy = {"integrationId": integration_id, "targetId": target_id, "deliveryId": str(uuid.uuid4())}
    dispatcher.handle_batch([first, sqs_record(json.loads(first["body"]) | copy)])
    assert len(receiver.deliveries) == 2


def beside_the_plain_target(target_id: str, **changes: Any) -> None:
    """A copy of the plain target under ``target_id`` in the same integration, with ``changes``."""
    store = target_store(get_settings(), cache_ttl_seconds=0)
    plain = store.get_target(INTEGRATION_ID, PLAIN_TARGET)
    assert plain is not None
    store.put_target(plain.model_copy(update={"target_id": target_id, **changes}))


def keys_read_from_s3() -> list[str]:
    """The key of every S3 GetObject the relay's own client makes from now on, as it leaves for S3."""
    reads: list[str] = []
    aws_client("s3").meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: reads.append(params["Key"])
    )
    return reads


def relay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the dispatcher logged before the command
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def log_messages(err: str) -> list[str]:
    """The messages of the relay's log lines on stderr (each one a JSON object, nothing else there)."""
    return [json.loads(line)["message"] for line in err.splitlines()]


# --- --stack-name -------------------------------------------------------------------------------------


def test_every_operator_command_reads_its_resource_names_from_the_stack(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a delivered event, and an environment that names no table, queue or bucket
    dispatcher.handle_batch([event_record("e-stack")])
    without_resource_variables(monkeypatch)

    # Then without --stack-name a command cannot find its table; with it, every operator command runs
    code, _, err = relay(capsys, "targets", "list", "--format", "json")
    assert code == 3 and "TARGETS_TABLE" in err
    for argv in (
        ["targets", "list", "--format", "json"],
        ["breaker", "status", "--format", "json"],
        *(["dlq", "list", "--queue", queue, "--format", "json", "--no-progress"] for queue in DLQS),
        *(["dlq", "redrive", "--queue", queue, "--dry-run", "--no-progress"] for queue in TASK_DLQS),
        ["deliveries", "show", "e-stack", "--format", "json"],
    ):
        code, out, err = relay(capsys, *argv, "--stack-name", stack)
        assert (code, err) == (0, ""), argv
        assert out.strip(), argv
    code, out, _ = relay(capsys, "targets", "list", "--format", "json", "--stack-name", stack)
    assert [t["targetId"] for t in json.loads(out)["targets"]] == [PLAIN_TARGET]


def test_a_stack_that_does_not_exist_is_one_error_line(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = relay(capsys, "dlq", "list", "--stack-name", "no-such-stack", "--no-progress")
    assert (code, out) == (3, "")
    assert err.strip() == "relay dlq list: UnknownStack: no stack no-such-stack in this account and region"


# --- deliveries show ----------------------------------------------------------------------------------


def test_show_finds_an_events_attempts_by_event_delivery_and_conversation_id(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an event whose first attempt failed (503) and whose second was delivered
    delivery_id = str(uuid.uuid4())
    receiver.behaviour.status_sequence.extend([503])
    dispatcher.handle_batch([event_record("e-show", delivery_id=delivery_id)])
    retried = event_record("e-show", delivery_id=delivery_id)
    retried["attributes"]["ApproximateReceiveCount"] = "2"
    dispatcher.handle_batch([retried])

    # When it is looked up by each of its ids
    for ident in ("e-show", delivery_id, CONVERSATION):
        code, out, err = relay(capsys, "deliveries", "show", ident, "--format", "json", "--stack-name", stack)
        assert (code, err) == (0, "")
        found = json.loads(out)
        # Then both attempts, in order, with status, outcome and the breaker's state
        assert [(a["attempt"], a["status"], a["outcome"]) for a in found["attempts"]] == [
            (1, 503, "retry-scheduled"),
            (2, 200, "delivered"),
        ]
        assert all(a["breakerState"] == "closed" and a["latencyMs"] > 0 for a in found["attempts"])
        (summary,) = found["deliveries"]
        assert (summary["lastOutcome"], summary["deliveryIds"]) == ("delivered", [delivery_id])

    code, out, _ = relay(capsys, "deliveries", "show", "e-show", "--stack-name", stack)
    assert code == 0
    assert "retry-scheduled" in out and "delivered" in out and f"deliveryId {delivery_id}" in out
    assert "sourceEvent" not in out and "Hi, how can I help" not in out  # never the event's text


def test_show_names_an_ordered_target_with_no_record_for_the_event_as_possibly_waiting(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an event delivered to a plain target, whose integration also has an ordered target that has
    # no record of it (its delivery waits in its conversation: the audit knows nothing of it yet)
    ordered = seed_target(aws_stack, f"{receiver.url}/hooks/ordered", target_id="t-ordered")
    target_store(get_settings()).put_target(ordered.model_copy(update={"ordering": Ordering.CONVERSATION}))
    plain_delivery = str(uuid.uuid4())
    dispatcher.handle_batch([event_record("e-waits", delivery_id=plain_delivery)])

    # When the event is shown, as a table and as JSON
    for output in ("table", "json"):
        code, out, err = relay(
            capsys, "deliveries", "show", "e-waits", "--format", output, "--stack-name", stack
        )

        # Then the plain target's delivery is listed, and stderr names the ordered target as one whose
        # delivery may be waiting, without touching stdout
        assert code == 0 and PLAIN_TARGET in out and "t-ordered" not in out
        assert err.startswith(
            "relay deliveries show: event e-waits has no record for ordered target t-ordered"
        )
        assert "held or blocked" in err and len(err.splitlines()) == 1
        # and points where a waiting conversation shows: not `relay dlq list --queue ordered` (that lists
        # the ordered dead-letter queue only), but its own timeline and the ordered lane's alarm
        assert "dlq list" not in err
        assert f"relay deliveries show {CONVERSATION} lists the records of the conversation" in err
        assert "OrderedGroupBlocked" in err

    # And with --target, which leaves the other targets' lines out on purpose, nothing is said; nor for
    # the plain target's delivery id, which names that delivery's lines only
    for narrowed in (["e-waits", "--target", PLAIN_TARGET], [plain_delivery]):
        code, _, err = relay(capsys, "deliveries", "show", *narrowed, "--stack-name", stack)
        assert (code, err) == (0, "")

    # And asked for the ordered target alone, the refusal says its delivery may be waiting there, for an
    # event id written as Genesys writes them (32 hex digits, also a UUID's spelling) too
    dispatcher.handle_batch([event_record("6f2d0c1a9b8e4d7c8a1b2c3d4e5f6a7b")])
    for event_id in ("e-waits", "6f2d0c1a9b8e4d7c8a1b2c3d4e5f6a7b"):
        code, out, err = relay(
            capsys, "deliveries", "show", event_id, "--target", "t-ordered", "--stack-name", stack
        )
        assert (code, out) == (3, "")
        assert "t-ordered is an ordered target: a delivery waiting behind a held or blocked record" in err, (
            err
        )
        assert f"relay deliveries show {CONVERSATION} lists the records of the conversation" in err


# Ids a sender chose, as the intake accepts them: non-ASCII (escaped in the audit's JSON), quotes and
# backslashes, control characters, line separators and bidi controls.
HOSTILE_IDS = [
    "e-café-😀",
    'e-"quoted"\\x',
    "e-bell\u0007\u001b[2J",
    "e-line\nX-Forged: 1",
    "e-rtl\u202egnp.exe",
]


@pytest.mark.parametrize("event_id", HOSTILE_IDS, ids=["non-ascii", "quote", "escape", "newline", "bidi"])
def test_an_event_id_a_sender_chose_is_found_shown_and_replayed_without_reaching_the_terminal_raw(
    event_id: str, stack: str, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an event delivered under that id
    dispatcher.handle_batch([event_record(event_id)])

    # Then show finds it (as JSON, the id exactly), and the table and replay's dry run print it escaped
    code, out, err = relay(capsys, "deliveries", "show", event_id, "--format", "json", "--stack-name", stack)
    assert (code, err) == (0, "")
    assert {a["eventId"] for a in json.loads(out)["attempts"]} == {event_id}
    for command in (["show", event_id], ["replay", event_id, "--dry-run"]):
        code, out, err = relay(capsys, "deliveries", *command, "--stack-name", stack)
        assert (code, err) == (0, ""), command
        assert not any(c in out for c in "\x07\x1b\u202e") and "\nX-Forged" not in out, command
        # every line is one the command writes: the id split none and forged none
        expected_starts = ("TIME", "20", "event ", "  would queue")
        assert all(not line or line.startswith(expected_starts) for line in out.splitlines()), command


def test_show_of_an_id_nothing_names_fails_saying_where_it_looked(
    aws_stack: LocalResources, stack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = relay(capsys, "deliveries", "show", "e-never", "--since", "2d", "--stack-name", stack)
    assert (code, out) == (3, "")
    assert err.startswith("relay deliveries show: no audit record names e-never from ")
    assert "look further back with --since" in err
    # an event waiting in an ordered conversation is not in the ordered dead-letter queue `dlq list` reads
    assert "--queue ordered" not in err
    assert "relay deliveries show CONVERSATION_ID lists the records of the conversation" in err
    # an EventBridge event the intake refused waits in the intake's failure queues, never audited
    assert "relay dlq list --queue intake-failures (and --queue eventbridge) lists those" in err
    assert "OrderedGroupBlocked" in err


def test_show_gives_the_text_of_an_attempts_error_as_well_as_its_code(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a receiver that drops every connection without an answer
    receiver.behaviour.up = False
    dispatcher.handle_batch([event_record("e-dropped")])

    # When the event is shown, as JSON and as a table
    code, out, _ = relay(capsys, "deliveries", "show", "e-dropped", "--format", "json", "--stack-name", stack)
    assert code == 0
    (attempt,) = json.loads(out)["attempts"]
    code, table, _ = relay(capsys, "deliveries", "show", "e-dropped", "--stack-name", stack)
    assert code == 0

    # Then both carry the audit's text for the error next to its code
    assert attempt["errorCode"] == "connection-error" and attempt["error"]
    header, row = table.splitlines()[:2]
    assert row[header.index("ERROR_DETAIL") :] == attempt["error"]


# --- deliveries replay --------------------------------------------------------------------------------


def test_replay_sends_the_archived_event_again_with_the_same_webhook_id_and_audits_it(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an event delivered once
    dispatcher.handle_batch([event_record("e-replay")])
    (first,) = receiver.deliveries

    # When the operator replays it (a dry run first: nothing queued)
    code, out, _ = relay(capsys, "deliveries", "replay", "e-replay", "--dry-run", "--stack-name", stack)
    assert code == 0 and "would queue for" in out
    assert drain(aws_stack.delivery_queue_url) == []
    code, out, err = relay(
        capsys, "deliveries", "replay", "e-replay", "--format", "json", "--stack-name", stack
    )

    # Then one task is queued with fresh attempt counters, and the dispatcher delivers it again
    assert (code, log_messages(err)) == (0, ["operator action"])
    replayed = json.loads(out)
    assert replayed["mode"] == "replayed" and replayed["actor"].startswith("arn:aws:sts::")
    (record,) = drain(aws_stack.delivery_queue_url)
    assert record["attributes"]["ApproximateReceiveCount"] == "1" and record["messageAttributes"] == {}
    dispatcher.handle_batch([record])
    first_again = receiver.deliveries[-1]
    assert first_again.headers["webhook-id"] == first.headers["webhook-id"]
    assert first_again.signature_valid is True and first_again.event == first.event
    # ... and the replay is in the event's timeline, saying who
    code, out, _ = relay(capsys, "deliveries", "show", "e-replay", "--format", "json", "--stack-name", stack)
    outcomes = [(a["outcome"], a["actor"]) for a in json.loads(out)["attempts"]]
    assert outcomes[0] == ("delivered", None)
    assert outcomes[1][0] == "replayed" and outcomes[1][1] == replayed["actor"]
    assert outcomes[2] == ("delivered", None)


def test_a_replays_audit_record_says_when_it_was_queued_not_when_the_command_started(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an archived event, and the time S3 last answered a read (the archive search ends there;
    # in a real bucket it takes as long as there are objects to read)
    dispatcher.handle_batch([event_record("e-replay-when")])
    read_at: list[datetime] = []
    s3 = aws_client("s3")
    s3.meta.events.register("after-call.s3.GetObject", lambda **_: read_at.append(datetime.now(UTC)))

    # When the operator replays it (the environment's settings: the S3 client above is theirs)
    code, _, _ = relay(capsys, "deliveries", "replay", "e-replay-when")

    # Then the replay's audit record is timed when the task was queued, after the search, so the
    # timeline never puts an attempt made while the command searched after the replay
    assert code == 0 and read_at
    code, out, _ = relay(
        capsys, "deliveries", "show", "e-replay-when", "--format", "json", "--stack-name", stack
    )
    (replayed,) = [a for a in json.loads(out)["attempts"] if a["outcome"] == "replayed"]
    assert replayed["startedAt"] >= iso_utc(max(read_at))


def test_replay_with_a_new_id_gets_a_fresh_webhook_id(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dispatcher.handle_batch([event_record("e-fresh")])
    (first,) = receiver.deliveries

    code, out, _ = relay(
        capsys, "deliveries", "replay", "e-fresh", "--new-id", "--format", "json", "--stack-name", stack
    )

    assert code == 0
    (delivery,) = json.loads(out)["deliveries"]
    assert delivery["replayOf"] == first.headers["webhook-id"] != delivery["deliveryId"]
    dispatcher.handle_batch(drain(aws_stack.delivery_queue_url))
    assert receiver.deliveries[-1].headers["webhook-id"] == delivery["deliveryId"]

    # ... and the old delivery's story points at the new one, without calling it a delivery of 0 attempts
    code, out, _ = relay(capsys, "deliveries", "show", delivery["replayOf"], "--stack-name", stack)
    summary = out.strip().splitlines()[-1]
    assert code == 0 and "0 attempts" not in summary, summary
    assert f"replayed as {delivery['deliveryId']}" in summary
    assert f"relay deliveries show {delivery['deliveryId']}" in summary


def test_replay_is_refused_for_a_disabled_target_until_it_is_enabled_again(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an event delivered to a target that an operator then disabled
    dispatcher.handle_batch([event_record("e-off")])
    code, out, err = relay(capsys, "targets", "disable", PLAIN_TARGET, "--stack-name", stack)
    assert (code, log_messages(err)) == (0, ["operator action"])
    assert "disabled; dispatchers stop sending to it within 10 s; audited as arn:aws:sts::" in out
    assert (
        target_store(get_settings(), cache_ttl_seconds=0).get_target(INTEGRATION_ID, PLAIN_TARGET).enabled
        is False
    )

    # When the event is replayed, it is refused and nothing is queued
    code, out, err = relay(capsys, "deliveries", "replay", "e-off", "--stack-name", stack)
    assert (code, out) == (3, "")
    assert err.strip() == (
        f"relay deliveries replay: target {PLAIN_TARGET} is disabled: enable it first "
        f"(relay targets enable {PLAIN_TARGET})"
    )
    assert drain(aws_stack.delivery_queue_url) == []

    # After `relay targets enable` the replay goes through; both switches are in the audit trail
    code, _, _ = relay(capsys, "targets", "enable", PLAIN_TARGET, "--stack-name", stack)
    assert code == 0
    code, _, _ = relay(capsys, "deliveries", "replay", "e-off", "--stack-name", stack)
    assert code == 0 and len(drain(aws_stack.delivery_queue_url)) == 1
    switches = [
        json.loads(line)
        for line in _audit_bodies(aws_stack, f"target={PLAIN_TARGET}/operator-")
        if '"target-' in line
    ]
    assert sorted(s["outcome"] for s in switches) == ["target-disabled", "target-enabled"]
    assert all(s["actor"].startswith("arn:aws:sts::") and s["targetId"] == PLAIN_TARGET for s in switches)


def test_replay_to_ordered_targets_names_them_as_delivering_outside_the_conversations_order(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an event delivered to two targets that now keep conversation order
    delivered_to_the_plain_target_and_a_copy(dispatcher, receiver, "e-ord", INTEGRATION_ID, "t-second")
    store = target_store(get_settings(), cache_ttl_seconds=0)
    for target_id in (PLAIN_TARGET, "t-second"):
        target = store.get_target(INTEGRATION_ID, target_id)
        assert target is not None
        store.put_target(target.model_copy(update={"ordering": Ordering.CONVERSATION}))

    # When it is replayed
    code, _, err = relay(capsys, "deliveries", "replay", "e-ord", "--dry-run", "--stack-name", stack)

    # Then the replay is planned, and stderr names both in one sentence about them both
    assert code == 0
    named = ", ".join(sorted((PLAIN_TARGET, "t-second")))  # the event's targets, as listed everywhere
    assert f"replay: {named} deliver in conversation order; this replay goes outside it" in err


def test_switching_an_ordered_blocking_target_says_when_its_held_conversations_move_again(
    aws_stack: LocalResources, stack: str, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a target that keeps conversation order and blocks rather than dead-letters
    store = target_store(get_settings(), cache_ttl_seconds=0)
    target = store.get_target(INTEGRATION_ID, PLAIN_TARGET)
    assert target is not None
    update = {"ordering": Ordering.CONVERSATION, "on_exhausted": OnExhausted.BLOCK}
    store.put_target(target.model_copy(update=update))

    # When it is disabled, the operator learns its conversations wait rather than being dead-lettered
    code, out, _ = relay(capsys, "targets", "disable", PLAIN_TARGET, "--stack-name", stack)
    assert code == 0 and "its conversations wait, in order, until it is enabled" in out

    # ... and when enabled again, that what it held moves at its next look, not within a second
    code, out, _ = relay(capsys, "targets", "enable", PLAIN_TARGET, "--stack-name", stack)
    assert code == 0
    assert "dispatchers send to it again within about 1 s" in out
    assert "the conversations it held resume at their next look, within about 60 s" in out


def test_replay_of_an_id_not_in_the_archive_is_refused(
    aws_stack: LocalResources, stack: str, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = relay(capsys, "deliveries", "replay", "e-gone", "--stack-name", stack)
    assert (code, out) == (3, "")
    assert "e-gone is in no archived event of " in err and "ArchiveRetentionDays" in err


def test_replay_of_a_uuid_like_id_not_in_the_archive_names_it_as_typed(
    aws_stack: LocalResources, stack: str, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an id written as Genesys writes Open Messaging event ids (32 hex digits), or in upper case,
    # that names nothing in the archive (so its canonical UUID form is looked up too)
    for typed in ("2e0caedb13954241b98aed0324dde8b4", "2E0CAEDB-1395-4241-B98A-ED0324DDE8B4"):
        # When the operator replays it
        code, out, err = relay(capsys, "deliveries", "replay", typed, "--stack-name", stack)

        # Then the refusal names the id as the operator typed it, as `show` does
        assert (code, out) == (3, "")
        assert f"replay: {typed} is in no archived event of " in err, err


def test_an_event_id_two_integrations_received_is_replayed_by_choosing_its_copy_with_a_target(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given one event id delivered under two integrations, each to a target of its own
    other_integration, other_target = "0e1d2c3b-4a59-4687-9a1b-2c3d4e5f6a7b", str(uuid.uuid4())
    target_store(get_settings()).put_integration(
        Integration(integration_id=other_integration, name="Second channel")
    )
    delivered_to_the_plain_target_and_a_copy(dispatcher, receiver, "e-twice", other_integration, other_target)

    # When the operator replays it by its event id alone, the refusal says how to choose a copy
    code, out, err = relay(capsys, "deliveries", "replay", "e-twice", "--dry-run", "--stack-name", stack)
    assert (code, out) == (3, "")
    assert "e-twice was received by 2 integrations (" in err and "--target" in err
    assert INTEGRATION_ID in err and other_integration in err

    # ... and --target picks the copy of the integration that target belongs to
    for integration, target in ((other_integration, other_target), (INTEGRATION_ID, PLAIN_TARGET)):
        code, out, err = relay(
            capsys, "deliveries", "replay", "e-twice", "--target", target, "--dry-run", "--stack-name", stack
        )
        assert (code, err) == (0, "")
        assert f"(integration {integration}," in out and f"would queue for {target}:" in out
    # ... and a target neither copy had is named as such
    code, out, err = relay(
        capsys, "deliveries", "replay", "e-twice", "--target", "t-none", "--dry-run", "--stack-name", stack
    )
    assert (code, out) == (3, "")
    assert "e-twice had no delivery to target t-none under any of the 2 integrations" in err


def test_enabling_a_target_that_is_enabled_changes_and_audits_nothing(
    aws_stack: LocalResources, stack: str, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = relay(capsys, "targets", "enable", PLAIN_TARGET, "--stack-name", stack)
    assert code == 0 and "already enabled: nothing changed" in out
    assert _audit_bodies(aws_stack, "operator-") == []


def test_a_replay_and_a_target_switch_write_only_their_own_output_to_stdout(
    aws_stack: LocalResources, stack: str, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an operator's shell runs them (``... | python3 -m json.tool``): each process's audit log line
    goes to stderr, never onto stdout before the command's output."""
    # Given an event delivered once, and an environment that names only moto, as an operator's does
    dispatcher.handle_batch([event_record("e-pipe")])
    without_resource_variables(monkeypatch)

    # When a replay (as JSON) and a target switch each run as a process of their own
    replay = relay_process("deliveries", "replay", "e-pipe", "--format", "json", "--stack-name", stack)
    switches = {
        switch: relay_process("targets", switch, PLAIN_TARGET, "--stack-name", stack)
        for switch in ("disable", "enable")
    }

    # Then stdout is exactly the command's output, and stderr the audit's log line
    assert (replay.returncode, log_messages(replay.stderr)) == (0, ["operator action"])
    assert json.loads(replay.stdout)["mode"] == "replayed"
    for switch, done in switches.items():
        assert (done.returncode, log_messages(done.stderr)) == (0, ["operator action"])
        assert re.fullmatch(
            rf"target {PLAIN_TARGET} \(.+\) {switch}d; dispatchers .+ within .+ s; "
            r"audited as arn:aws:sts::\S+ .*\n",
            done.stdout,
        )


def relay_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m relay`` in a process of its own, with this test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *argv], capture_output=True, text=True, timeout=60, check=False
    )


# --- --athena -----------------------------------------------------------------------------------------


def test_show_with_athena_runs_the_stacks_saved_query_and_reads_its_rows(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a stack whose outputs name a workgroup and a saved timeline query (moto's Athena runs no
    # SQL: it answers with the rows we queue for it, so this checks the calls and the reading)
    athena = local_client("athena", aws_stack.endpoint_url)
    athena.create_work_group(Name=f"{aws_stack.prefix}-audit")
    query_id = athena.create_named_query(
        Name="event-timeline",
        Database="relay",
        QueryString="SELECT ? , ?",
        WorkGroup=f"{aws_stack.prefix}-audit",
    )["NamedQueryId"]
    name = f"{aws_stack.prefix}-athena"
    cloudformation = local_client("cloudformation", aws_stack.endpoint_url)
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=json.dumps(
            {
                "Resources": {"Marker": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {
                    "AuditBucketName": {"Value": aws_stack.audit_bucket},
                    "AthenaWorkGroupName": {"Value": f"{aws_stack.prefix}-audit"},
                    "EventTimelineQueryId": {"Value": query_id},
                },
            }
        ),
    )
    columns = [
        "startedat",
        "targetid",
        "eventid",
        "attempt",
        "outcome",
        "status",
        "latencyms",
        "breakerstate",
    ]
    row = ["2026-03-25T13:20:05.493Z", PLAIN_TARGET, "e-athena", "1", "delivered", "200", "41.5", "closed"]
    requests.post(
        f"{aws_stack.endpoint_url}/moto-api/static/athena/query-results",
        json={
            "results": [
                {
                    "rows": [{"Data": [{"VarCharValue": v} for v in values]} for values in (columns, row)],
                    "column_info": [{"Name": c, "Type": "varchar"} for c in columns],
                }
            ]
        },
        timeout=10,
    ).raise_for_status()

    # When the timeline is asked of Athena
    code, out, err = relay(
        capsys, "deliveries", "show", "e-athena", "--athena", "--format", "json", "--stack-name", name
    )

    # Then the saved query ran in the stack's workgroup with the first day and the id as parameters
    assert (code, err) == (0, "")
    (attempt,) = json.loads(out)["attempts"]
    assert (attempt["targetId"], attempt["attempt"], attempt["status"], attempt["latencyMs"]) == (
        PLAIN_TARGET,
        1,
        200,
        41.5,
    )
    (execution_id,) = athena.list_query_executions(WorkGroup=f"{aws_stack.prefix}-audit")["QueryExecutionIds"]
    execution = athena.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"]
    assert execution["Query"] == "SELECT ? , ?"
    assert execution["ExecutionParameters"][1] == "'e-athena'"


def test_athena_needs_the_stack_that_names_its_query(
    aws_stack: LocalResources, stack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = relay(capsys, "deliveries", "show", "e-1", "--athena")
    assert code == 2 and "--athena needs --stack-name" in err
    code, _, err = relay(capsys, "deliveries", "show", "e-1", "--athena", "--stack-name", stack)
    assert code == 3 and f"the stack {stack} has no output AthenaWorkGroupName" in err


def _audit_bodies(resources: LocalResources, containing: str) -> list[str]:
    s3 = aws_client("s3")
    lines: list[str] = []
    for obj in s3.list_objects_v2(Bucket=resources.audit_bucket, Prefix="audit/").get("Contents", []):
        if containing in obj["Key"]:
            body = s3.get_object(Bucket=resources.audit_bucket, Key=obj["Key"])["Body"].read().decode()
            lines.extend(line for line in body.splitlines() if line)
    return lines


def test_a_delivery_id_written_in_upper_case_is_found_and_replayed(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a delivered event, and its delivery id as a receiver's database may hand it back (upper case)
    delivery_id = delivered(dispatcher, "e-upper")
    shouted = delivery_id.upper()

    # When the operator looks it up and replays it by that id
    code, out, err = relay(capsys, "deliveries", "show", shouted, "--format", "json", "--stack-name", stack)
    assert (code, err) == (0, "")
    assert [a["deliveryId"] for a in json.loads(out)["attempts"]] == [delivery_id]
    code, out, _ = relay(capsys, "deliveries", "replay", shouted, "--format", "json", "--stack-name", stack)

    # Then it is the same delivery: found, and queued again under its own id
    assert code == 0
    assert [d["deliveryId"] for d in json.loads(out)["deliveries"]] == [delivery_id]
    (record,) = drain(aws_stack.delivery_queue_url)
    assert json.loads(record["body"])["deliveryId"] == delivery_id


def test_an_event_id_of_32_hex_digits_written_in_upper_case_is_found_and_replayed(
    aws_stack: LocalResources,
    stack: str,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an event whose id is written as Genesys writes Open Messaging event ids (32 hex digits),
    # and that id as a receiver's database may hand it back (upper case)
    event_id = "7922b440e0f1e44cefd1b5881054b2d5"
    delivered(dispatcher, event_id)
    shouted = event_id.upper()

    # When the operator looks it up and replays it by that id
    code, out, err = relay(capsys, "deliveries", "show", shouted, "--format", "json", "--stack-name", stack)
    assert (code, err) == (0, "")
    assert [a["eventId"] for a in json.loads(out)["attempts"]] == [event_id]
    code, out, _ = relay(capsys, "deliveries", "replay", shouted, "--format", "json", "--stack-name", stack)

    # Then it is the same event, found as the relay wrote its id, and queued again
    assert code == 0 and json.loads(out)["eventId"] == event_id
    (record,) = drain(aws_stack.delivery_queue_url)
    assert json.loads(record["body"])["eventId"] == event_id


def test_an_id_typed_otherwise_is_looked_for_in_one_read_of_the_audit_and_of_the_archive(
    aws_stack: LocalResources,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given four delivered events (four audit objects, four archive objects), and the S3 reads
    # counted where they leave for S3
    for number in range(3):
        delivered(dispatcher, f"{number:032x}")
    event_id = "c0ffee" + "0" * 26
    delivered(dispatcher, event_id)
    reads = keys_read_from_s3()
    s3 = aws_client("s3")
    audit_objects = [
        k["Key"] for k in s3.list_objects_v2(Bucket=aws_stack.audit_bucket, Prefix="audit/")["Contents"]
    ]
    archive_objects = [
        k["Key"] for k in s3.list_objects_v2(Bucket=aws_stack.audit_bucket, Prefix="archive/")["Contents"]
    ]

    # When the operator looks up and replays an event by its id in upper case, which names nothing as
    # typed (three spellings to look for: as typed, the 32 digits in lower case, the dashed UUID)
    code, out, _ = relay(capsys, "deliveries", "show", event_id.upper(), "--format", "json")
    assert code == 0 and [a["eventId"] for a in json.loads(out)["attempts"]] == [event_id]
    shown, reads[:] = list(reads), []
    code, out, _ = relay(capsys, "deliveries", "replay", event_id.upper(), "--dry-run")

    # Then each object was read once, not once per spelling
    assert code == 0
    assert sorted(shown) == sorted(audit_objects)
    assert sorted(reads) == sorted(archive_objects)


def test_show_for_one_target_reads_that_targets_audit_objects_only(
    aws_stack: LocalResources,
    receiver: Receiver,
    dispatcher: Dispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an event delivered to the plain target and to a second one (an audit object each), and the
    # S3 reads counted where they leave for S3
    beside_the_plain_target("t-second")
    first = event_record("e-two-targets")
    second = json.loads(first["body"]) | {"targetId": "t-second", "deliveryId": str(uuid.uuid4())}
    dispatcher.handle_batch([first, sqs_record(second)])
    reads = keys_read_from_s3()

    # When the operator looks the event up for the second target
    code, out, _ = relay(
        capsys, "deliveries", "show", "e-two-targets", "--target", "t-second", "--format", "json"
    )

    # Then they see its attempt there, read from that target's objects only (the audit is partitioned
    # by target)
    assert code == 0 and [a["targetId"] for a in json.loads(out)["attempts"]] == ["t-second"]
    assert reads and all("/target=t-second/" in key for key in reads), reads


def test_show_for_a_target_whose_filters_left_the_event_out_says_its_filters_may_have(
    aws_stack: LocalResources, stack: str, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a target that takes receipts only, beside the plain target, and a text event the plain
    # target got (the intake never queued it for the other: no task, no audit line)
    beside_the_plain_target("t-receipts", filters=EventFilters(types=(MessageType.RECEIPT,)))
    delivered(dispatcher, "e-text-only")

    # When the operator looks the event up for the receipts-only target
    code, _, err = relay(
        capsys, "deliveries", "show", "e-text-only", "--target", "t-receipts", "--stack-name", stack
    )

    # Then the answer says the target's filters may have left it out, and where to see them
    assert code == 3
    assert f"its records name other targets: {PLAIN_TARGET}; t-receipts has event filters" in err, err
    assert "relay targets list" in err


def test_show_with_another_target_names_the_id_as_typed_and_the_targets_its_records_name(
    aws_stack: LocalResources, stack: str, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a delivered event, and an operator who names it as typed elsewhere, with the wrong target
    typed = delivered(dispatcher, "e-one-target").upper()

    # When they look it up for that target
    code, out, err = relay(capsys, "deliveries", "show", typed, "--target", "t-none", "--stack-name", stack)

    # Then the answer names the id as typed, and says the event is there for another target
    assert (code, out) == (3, "")
    assert err.startswith(f"relay deliveries show: no audit record names {typed} to target t-none from "), err
    assert err.rstrip().endswith(f"its records name other targets: {PLAIN_TARGET}"), err

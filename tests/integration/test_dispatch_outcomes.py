"""Outcomes through the dispatcher against real SQS (moto): retries scheduled with
ChangeMessageVisibility, Retry-After, exhaustion and permanent failures dead-lettered by the
dispatcher with reasons, 410 disabling the target, poison messages, the rest of the batch going on."""

from __future__ import annotations

import random

import pytest
from support.events import sample
from support.queues import drain
from test_dispatch_support import (
    ENCRYPTED_TARGET,
    INTEGRATION_ID,
    PLAIN_TARGET,
    attr,
    audit_lines,
    put_secret,
    queue_records,
    secret_name,
    seed_target,
    task_record,
)

from relay.local.aws_stack import LocalResources
from relay.local.receiver import Behaviour, Receiver
from relay.logic.dispatch import Dispatcher
from relay.models.secrets import RotatingSecret, SecretKind
from relay.settings import get_settings
from relay.wiring import target_store
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration


@pytest.fixture
def dispatcher(aws_stack: LocalResources) -> Dispatcher:
    return build_dispatcher(get_settings(), rng=random.Random(5))


def _dispatcher(monkeypatch: pytest.MonkeyPatch, **env: str) -> Dispatcher:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return build_dispatcher(get_settings(), rng=random.Random(5))


def test_a_retryable_failure_is_made_visible_again_after_its_backoff(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given a failing endpoint and a matrix whose backoff is zero (so the new visibility is 0 s,
    # where the queue's own visibility timeout would hide the message for 6 minutes)
    receiver.behaviour = Behaviour(status=503)
    target = seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=3)
    store = target_store(get_settings())
    store.put_target(
        target.model_copy(
            update={"retry_matrix": target.retry_matrix.model_copy(update={"base_interval_ms": 0})}
        )
    )
    (record,) = queue_records(aws_stack, [task_record()])

    # When the first attempt fails
    result = dispatcher.handle_batch([record])

    # Then the record is reported failed and is visible again at once, second receive
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    (again,) = drain(aws_stack.delivery_queue_url)
    assert again["messageId"] == record["messageId"]
    assert again["attributes"]["ApproximateReceiveCount"] == "2"
    assert drain(aws_stack.dead_letter_queue_url) == []


def test_retry_after_is_honoured(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    receiver.behaviour = Behaviour(status=429, retry_after_seconds=120)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    (record,) = queue_records(aws_stack, [task_record()])
    result = dispatcher.handle_batch([record])
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    (line,) = audit_lines(aws_stack)
    assert (line["status"], line["retryInSeconds"], line["outcome"]) == (429, 120, "retry-scheduled")
    assert drain(aws_stack.delivery_queue_url) == []  # hidden for the 120 s asked


@pytest.mark.parametrize("asked", [43_200, 100_000])
def test_a_retry_after_of_12_hours_or_more_is_scheduled_within_what_sqs_allows_from_the_receive(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, asked: int
) -> None:
    # SQS counts a message's visibility from its receive, 12 h at most: a change to 12 h a moment after
    # the receive is refused, and the record would come back after the queue's 6 minutes instead
    receiver.behaviour = Behaviour(status=429, retry_after_seconds=asked)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    (record,) = queue_records(aws_stack, [task_record()])
    result = dispatcher.handle_batch([record])
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    (line,) = audit_lines(aws_stack)
    assert line["outcome"] == "retry-scheduled"
    # as late as SQS allows: 12 h less the record's time held and the event source's batching window
    assert 43_200 - 300 - 60 <= line["retryInSeconds"] <= 43_200 - 300


def test_the_last_attempt_goes_to_the_dlq_with_why_and_is_done(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given a record on its third receive of a three-attempt matrix, and a failing endpoint
    receiver.behaviour = Behaviour(status=500)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=3)
    record = task_record(receive_count=3)

    # When it fails again
    result = dispatcher.handle_batch([record])

    # Then the dispatcher dead-letters it itself, with the reason and the facts, and reports it done
    assert result == {"batchItemFailures": []}
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert dead["body"] == record["body"]
    assert attr(dead, "relay-dlq-reason") == "exhausted"
    assert attr(dead, "relay-last-status") == "500"
    assert attr(dead, "relay-last-error") == "http-500"
    assert attr(dead, "relay-attempts") == "3"
    assert attr(dead, "relay-target-id") == PLAIN_TARGET
    assert attr(dead, "relay-integration-id") == INTEGRATION_ID


def test_attempts_carried_by_a_deferral_count_toward_exhaustion(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given the sample record: one attempt carried over from a deferral chain, second receive
    receiver.behaviour = Behaviour(status=500)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=3)
    event = sample("sqs_retry_record.json")

    # When it fails: that was attempt 1 + 2 = 3 of 3
    result = dispatcher.handle_batch(event["Records"])

    # Then it is exhausted and dead-lettered, not retried
    assert result == {"batchItemFailures": []}
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert (attr(dead, "relay-dlq-reason"), attr(dead, "relay-attempts")) == ("exhausted", "3")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_go_to_the_dlq_at_once(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, status: int
) -> None:
    receiver.behaviour = Behaviour(status=status)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=5)
    result = dispatcher.handle_batch([task_record()])
    assert result == {"batchItemFailures": []}
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert (attr(dead, "relay-dlq-reason"), attr(dead, "relay-last-status")) == (
        "permanent-status",
        str(status),
    )
    assert attr(dead, "relay-attempts") == "1"


def test_410_disables_the_target_and_dead_letters(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given an endpoint that is gone
    receiver.behaviour = Behaviour(status=410)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")

    # When a record is delivered
    result = dispatcher.handle_batch([task_record()])

    # Then the target is disabled in the TargetsTable and the record is in the DLQ as target-gone
    assert result == {"batchItemFailures": []}
    stored = target_store(get_settings()).get_target(INTEGRATION_ID, PLAIN_TARGET)
    assert stored is not None and stored.enabled is False
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert (attr(dead, "relay-dlq-reason"), attr(dead, "relay-last-status")) == ("target-gone", "410")


def test_after_a_410_no_further_request_to_that_target_starts_in_the_batch(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one request at a time per target, a gone endpoint, and another target that is fine
    dispatcher = _dispatcher(monkeypatch, PER_TARGET_CONCURRENCY="1")
    receiver.path_behaviours["/hooks/crm"] = Behaviour(status=410)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET)
    gone = [task_record() for _ in range(4)]

    # When a batch with four records for the gone target (and two for the other) is handled
    result = dispatcher.handle_batch(gone + [task_record(ENCRYPTED_TARGET) for _ in range(2)])

    # Then the gone target got exactly one request; all four records are dead-lettered as target-gone,
    # the three never sent without an attempt; the other target's records were delivered
    assert result == {"batchItemFailures": []}
    assert [r.path for r in receiver.requests].count("/hooks/crm") == 1
    assert len([r for r in receiver.deliveries if r.path == "/hooks/archive"]) == 2
    dead = drain(aws_stack.dead_letter_queue_url)
    assert sorted(d["body"] for d in dead) == sorted(r["body"] for r in gone)
    assert {attr(d, "relay-dlq-reason") for d in dead} == {"target-gone"}
    facts = sorted((attr(d, "relay-last-status") or "-", attr(d, "relay-attempts")) for d in dead)
    assert facts == [("-", "0")] * 3 + [("410", "1")]
    lines = [line for line in audit_lines(aws_stack) if line["targetId"] == PLAIN_TARGET]
    assert sorted((line["outcome"], line["errorCode"]) for line in lines) == sorted(
        [("dead-lettered", "http-410")] + [("dead-lettered", "target-gone")] * 3
    )


def test_requests_in_flight_when_a_410_arrives_finish_and_nothing_starts_after_it(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three requests at a time per target, and a gone endpoint that takes 0.3 s to say so
    dispatcher = _dispatcher(monkeypatch, PER_TARGET_CONCURRENCY="3")
    receiver.behaviour = Behaviour(status=410, latency_seconds=0.3)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")

    # When six records for it are handled in one batch
    result = dispatcher.handle_batch([task_record() for _ in range(6)])

    # Then the three in flight were answered 410 and settled by it; none of the other three started
    assert result == {"batchItemFailures": []}
    assert len(receiver.requests) == 3
    # as the dispatcher timed them (the receiver's own clock shows when its busy threads got round
    # to a request, later than it was sent on a loaded machine): every start before the first answer
    attempts = [line for line in audit_lines(aws_stack) if line.get("status") == 410]
    assert len(attempts) == 3
    assert max(line["startedAt"] for line in attempts) < min(line["finishedAt"] for line in attempts)
    dead = drain(aws_stack.dead_letter_queue_url)
    assert {attr(d, "relay-dlq-reason") for d in dead} == {"target-gone"} and len(dead) == 6
    assert sorted(attr(d, "relay-last-status") or "-" for d in dead) == ["-"] * 3 + ["410"] * 3


def test_poison_and_unknown_targets_are_dead_lettered_while_the_rest_is_delivered(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given the sample poison batch: one good record, one unparseable body, one unknown target
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    event = sample("sqs_poison_batch.json")

    # When it is handled
    result = dispatcher.handle_batch(event["Records"])

    # Then the good one was delivered and the other two are in the DLQ with their reasons
    assert result == {"batchItemFailures": []}
    assert len(receiver.deliveries) == 1
    reasons = sorted(attr(m, "relay-dlq-reason") or "" for m in drain(aws_stack.dead_letter_queue_url))
    assert reasons == ["poison", "unknown-target"]


def test_a_disabled_target_is_dead_lettered_without_an_attempt(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", enabled=False)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET)
    result = dispatcher.handle_batch([task_record(PLAIN_TARGET), task_record(ENCRYPTED_TARGET)])
    assert result == {"batchItemFailures": []}
    assert [r.path for r in receiver.deliveries] == ["/hooks/archive"]
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert attr(dead, "relay-dlq-reason") == "target-disabled"
    # ... and its audit line has every field the attempted one has, those of an attempt null
    lines = {line["targetId"]: line for line in audit_lines(aws_stack)}
    unattempted, attempted = lines[PLAIN_TARGET], lines[ENCRYPTED_TARGET]
    assert set(attempted) <= set(unattempted)
    assert unattempted["outcome"] == "dead-lettered" and unattempted["errorCode"] == "target-disabled"
    assert [unattempted[k] for k in ("attempt", "urlHost", "status", "probe", "breakerState")] == [None] * 5


def test_a_missing_encryption_salt_never_sends_in_clear_and_retries(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given an encrypting target whose key version has no salt
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    put_secret(secret_name(SecretKind.ENCRYPTION, ENCRYPTED_TARGET), RotatingSecret(current="k", key_id="k1"))
    dispatcher = build_dispatcher(get_settings())  # a fresh secret cache

    # When a record is handled
    record = task_record(ENCRYPTED_TARGET)
    result = dispatcher.handle_batch([record])

    # Then nothing was sent, the record waits for a retry, and the audit says it is configuration
    assert receiver.requests == []
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    (line,) = audit_lines(aws_stack)
    assert line["errorCode"] == "configuration" and "salt" in line["error"]


def test_records_that_could_not_finish_before_the_lambda_timeout_are_handed_back_unattempted(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one record at a time per target, and an invocation clock that runs out after two starts
    # (its first reading, as the batch begins, sets the deadline of the batch's AWS calls)
    monkeypatch.setenv("PER_TARGET_CONCURRENCY", "1")
    get_settings.cache_clear()
    dispatcher = build_dispatcher(get_settings())
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    checks = iter([60_000, 60_000, 60_000])

    def remaining_ms() -> int:
        return next(checks, 1_000)  # then: 1 s left, less than one request's timeouts

    # When a batch of five is handled
    result = dispatcher.handle_batch([task_record() for _ in range(5)], remaining_ms=remaining_ms)

    # Then two were delivered, three re-queued without using an attempt, none failed or dead-lettered
    assert result == {"batchItemFailures": []}
    assert len(receiver.unique_delivery_ids) == 2
    outcomes = sorted((line["outcome"], line["errorCode"]) for line in audit_lines(aws_stack))
    assert outcomes == [("deferred", "out-of-time")] * 3 + [("delivered", None)] * 2
    assert drain(aws_stack.dead_letter_queue_url) == []


def test_a_redriven_message_gets_a_fresh_set_of_attempts(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given a message moved back from the DLQ still carrying its notes: 3 attempts, reason exhausted
    receiver.behaviour = Behaviour(status=500)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=3)
    record = task_record(attempts=3)
    record["messageAttributes"]["relay-dlq-reason"] = {"stringValue": "exhausted", "dataType": "String"}
    (queued,) = queue_records(aws_stack, [record])

    # When its first try after the redrive fails
    result = dispatcher.handle_batch([queued])

    # Then it is retried (attempt 1 of 3), not dead-lettered again
    assert result == {"batchItemFailures": [{"itemIdentifier": queued["messageId"]}]}
    assert drain(aws_stack.dead_letter_queue_url) == []


def test_planned_attempts_stop_below_max_receive_count(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a target whose matrix allows 50 attempts, and a queue whose backstop is 4 receives
    monkeypatch.setenv("MAX_RECEIVE_COUNT", "4")
    get_settings.cache_clear()
    dispatcher = build_dispatcher(get_settings(), rng=random.Random(5))
    receiver.behaviour = Behaviour(status=500)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=50)

    # When the third receive fails (attempt 3 = maxReceiveCount - 1)
    result = dispatcher.handle_batch([task_record(receive_count=3)])

    # Then the relay dead-letters it itself, with its reason, before the backstop could
    assert result == {"batchItemFailures": []}
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert (attr(dead, "relay-dlq-reason"), attr(dead, "relay-attempts")) == ("exhausted", "3")

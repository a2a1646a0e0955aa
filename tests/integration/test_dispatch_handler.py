"""The dispatcher handler, loaded as Lambda loads it, end to end against moto (targets, secrets) and a
real loopback receiver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from support.events import sample
from support.handlers import LoadHandler
from support.lambda_context import lambda_context
from support.queues import drain
from test_dispatch_support import (
    ENCRYPTED_TARGET,
    INTEGRATION_ID,
    PLAIN_TARGET,
    attr,
    audit_lines,
    seed_target,
    task_record,
)

from relay.local.aws_stack import LocalResources
from relay.local.lambda_runtime import LambdaContext
from relay.local.receiver import Behaviour, Receiver
from relay.observability import logger
from relay.wiring import aws_client

pytestmark = pytest.mark.integration


Invoke = Callable[..., dict[str, Any]]


@pytest.fixture
def invoke(function_handler: LoadHandler) -> Invoke:
    """Calls the template's dispatcher handler, freshly loaded, as Lambda calls it (with ``context``,
    or a fresh one)."""

    def call(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
        handler = function_handler("dispatcher")
        response: dict[str, Any] = handler(event, context or lambda_context("dispatcher"))
        return response

    return call


def test_a_batch_reaches_the_receiver_as_signed_2_1_envelopes(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke
) -> None:
    # Given both sample targets pointing at a loopback receiver, one of them encrypting
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    event = sample("sqs_delivery_batch.json")

    # When the handler gets the sample batch
    response = invoke(event)

    # Then nothing failed, and the receiver verified and decrypted both envelopes
    assert response == {"batchItemFailures": []}
    got = {r.path: r for r in receiver.deliveries}
    assert set(got) == {"/hooks/crm", "/hooks/archive"}
    assert all(r.signature_valid for r in got.values())
    assert got["/hooks/crm"].envelope is not None and got["/hooks/crm"].envelope["formatVersion"] == "2.1"
    assert got["/hooks/crm"].event == got["/hooks/archive"].event
    assert got["/hooks/archive"].encrypted and got["/hooks/archive"].envelope["sourceEvent"] == {}


def test_every_log_line_of_an_invocation_carries_its_request_id(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a target that fails, so the dispatcher logs its attempts
    receiver.behaviour = Behaviour(status=503)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    context = lambda_context("dispatcher")

    # When the handler gets a batch
    invoke({"Records": [task_record(PLAIN_TARGET)]}, context)

    # Then each line it logged, as powertools prints it, names the invocation and the cold start
    printed = [
        json.loads(logger.registered_formatter.format(r)) for r in caplog.records if r.name == logger.name
    ]
    assert any(line.get("targetId") == PLAIN_TARGET for line in printed), printed
    for line in printed:
        assert line["function_request_id"] == context.aws_request_id, line
        assert isinstance(line["cold_start"], bool), line


def test_failed_records_are_reported_as_batch_item_failures(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke
) -> None:
    # Given a receiver that answers 503 to every request
    receiver.behaviour = Behaviour(status=503)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    event = sample("sqs_delivery_batch.json")

    # When the handler gets the batch
    response = invoke(event)

    # Then both records are reported failed, so SQS makes them visible again
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(
        r["messageId"] for r in event["Records"]
    )
    assert len(receiver.requests) == 2


def test_a_claim_checked_event_is_read_from_s3_and_delivered(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke
) -> None:
    # Given an event the intake stored in the audit bucket (too large for SQS) and a task referring to it
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    big_event = {"id": "e-big", "text": "x" * 300_000}
    key = f"events/{INTEGRATION_ID}/e-big.json"
    aws_client("s3").put_object(Bucket=aws_stack.audit_bucket, Key=key, Body=json.dumps(big_event).encode())
    record = task_record(PLAIN_TARGET)
    body = json.loads(record["body"])
    del body["eventJson"]
    body["eventRef"] = {"bucket": aws_stack.audit_bucket, "key": key}
    record["body"] = json.dumps(body)

    # When the handler gets it
    response = invoke({"Records": [record]})

    # Then the receiver got the full event in the envelope, the stored bytes exactly
    assert response == {"batchItemFailures": []}
    (delivery,) = receiver.deliveries
    assert delivery.event == big_event
    assert b',"sourceEvent":' + json.dumps(big_event).encode() + b',"formatVersion"' in delivery.body


def _claim_checked_record(resources: LocalResources, stored: bytes) -> dict[str, Any]:
    key = f"events/{INTEGRATION_ID}/{uuid.uuid4().hex}.json"
    aws_client("s3").put_object(Bucket=resources.audit_bucket, Key=key, Body=stored)
    record = task_record(PLAIN_TARGET)
    body = json.loads(record["body"])
    del body["eventJson"]
    body["eventRef"] = {"bucket": resources.audit_bucket, "key": key}
    record["body"] = json.dumps(body)
    return record


@pytest.mark.parametrize(
    "stored", [b"[1, 2]", b'"text"', b"{not json", b"\xff\xfe{}", b'{"f": 1e400}', b'{"f": NaN}', b""]
)
def test_a_claim_checked_event_that_is_not_a_json_object_is_dead_lettered_as_poison(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke, stored: bytes
) -> None:
    # Given a task whose claim-checked object is not a JSON object a receiver could read
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    record = _claim_checked_record(aws_stack, stored)

    # When the handler gets it
    response = invoke({"Records": [record]})

    # Then nothing was sent, and the message is in the DLQ as poison (done, not retried)
    assert response == {"batchItemFailures": []}
    assert receiver.requests == []
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert attr(dead, "relay-dlq-reason") == "poison" and dead["body"] == record["body"]


def _expire(resources: LocalResources, record: dict[str, Any]) -> str:
    """Expire the record's claim check as the bucket's lifecycle rule does in the versioned audit bucket
    (a delete marker over the object); returns its key."""
    s3 = aws_client("s3")
    s3.put_bucket_versioning(Bucket=resources.audit_bucket, VersioningConfiguration={"Status": "Enabled"})
    key: str = json.loads(record["body"])["eventRef"]["key"]
    s3.delete_object(Bucket=resources.audit_bucket, Key=key)
    return key


@pytest.mark.parametrize("gone", ["expired", "never-stored"])
def test_a_task_whose_claim_check_is_gone_is_dead_lettered_at_once_as_claim_check_missing(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke, gone: str
) -> None:
    # Given a redriven task (a fresh try, attempts 0) whose claim-check object expired under it, or
    # was never there
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    record = _claim_checked_record(aws_stack, json.dumps({"id": "e-big", "text": "x" * 1_000}).encode())
    if gone == "expired":
        key = _expire(aws_stack, record)
    else:
        body = json.loads(record["body"])
        key = body["eventRef"]["key"] = f"events/{INTEGRATION_ID}/{uuid.uuid4().hex}.json"
        record["body"] = json.dumps(body)

    # When the handler gets it
    response = invoke({"Records": [record]})

    # Then it is done, not retried as a dependency failure: nothing sent, no attempt used, and the DLQ
    # letter says the claim check is missing and which object it was
    assert response == {"batchItemFailures": []}
    assert receiver.requests == []
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert attr(dead, "relay-dlq-reason") == "claim-check-missing"
    assert attr(dead, "relay-attempts") == "0" and dead["body"] == record["body"]
    last_error = attr(dead, "relay-last-error") or ""
    assert key in last_error and "NoSuchKey" in last_error, last_error
    (line,) = audit_lines(aws_stack)
    assert (line["outcome"], line["dlqReason"]) == ("dead-lettered", "claim-check-missing")


def test_a_claim_check_s3_cannot_read_is_retried_as_a_dependency_failure(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke
) -> None:
    # Given a task pointing at a bucket that does not exist (S3 answers 404 NoSuchBucket: the deployment,
    # not the event, is wrong)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    record = _claim_checked_record(aws_stack, b'{"id": "e-big"}')
    body = json.loads(record["body"])
    body["eventRef"]["bucket"] = f"{aws_stack.audit_bucket}-missing"
    record["body"] = json.dumps(body)

    # When the handler gets it
    response = invoke({"Records": [record]})

    # Then it is left for a retry, not dead-lettered
    assert response == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    assert drain(aws_stack.dead_letter_queue_url) == []
    (line,) = audit_lines(aws_stack)
    assert (line["outcome"], line["errorCode"]) == ("retry-scheduled", "dependency-unavailable")


@pytest.mark.parametrize("event_json", ["[1, 2]", "{not json", '{"f": 1e400}', '{"a": 1} {"b": 2}'])
def test_an_inline_event_that_is_not_a_json_object_is_dead_lettered_as_poison(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke, event_json: str
) -> None:
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    record = task_record(PLAIN_TARGET)
    record["body"] = json.dumps({**json.loads(record["body"]), "eventJson": event_json})
    assert invoke({"Records": [record]}) == {"batchItemFailures": []}
    assert receiver.requests == []
    assert [attr(m, "relay-dlq-reason") for m in drain(aws_stack.dead_letter_queue_url)] == ["poison"]


def test_a_task_of_the_earlier_shape_is_still_delivered(
    aws_stack: LocalResources, receiver: Receiver, invoke: Invoke
) -> None:
    # Given a message queued before eventJson: schemaVersion 1, the event as an object
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    event = {"id": "e-v1", "text": "caf\u00e9", "n": 1.5}
    records = []
    for target_id in (PLAIN_TARGET, ENCRYPTED_TARGET):
        record = task_record(target_id)
        body = json.loads(record["body"])
        del body["eventJson"]
        record["body"] = json.dumps({**body, "schemaVersion": 1, "event": event})
        records.append(record)

    # When the handler gets it
    response = invoke({"Records": records})

    # Then both targets got the event
    assert response == {"batchItemFailures": []}
    assert [r.event for r in receiver.deliveries] == [event, event]

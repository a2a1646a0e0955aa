"""The intake handler against a real moto server: signed Genesys events in, one task per target out."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from misbehaving_peer import Answer, misbehaving_peer
from support.aws_proxy import answer, forward
from support.events import api_gateway_event, sample, sqs_record, with_member_twice
from support.handlers import Handler, LoadHandler
from support.lambda_context import lambda_context
from support.queues import drain
from test_dispatch_support import put_secret, secret_name

from relay.errors import ConfigurationError
from relay.local.aws_stack import LocalResources, forget_cached_configuration
from relay.local.fixtures import Fixtures
from relay.local.loopback import LoopbackServer
from relay.local.template import load_template
from relay.models.delivery import DeliveryTask
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.targets import Integration, Target
from relay.settings import get_settings
from relay.wiring import aws_client, target_store
from relay.wiring.dispatcher import build_dispatcher


def seed_fixture_integrations(previous_secret: str | None = None) -> Fixtures:
    """The default fixtures' integrations, targets and signature secrets, as config sync would store them."""
    fixtures = Fixtures.load()
    store = target_store(get_settings())
    for item in fixtures.integrations:
        name = secret_name(SecretKind.SIGNATURE, item.id)
        put_secret(name, RotatingSecret(current=item.signature_secret, previous=previous_secret))
        store.put_integration(Integration(integration_id=item.id, name=item.name, signature_secret_name=name))
        for target in item.targets:
            store.put_target(
                Target(
                    integration_id=item.id,
                    target_id=target.id,
                    name=target.name,
                    url=target.url.replace(":0/", ":9/"),
                    enabled=target.enabled,
                )
            )
    return fixtures


def queued_tasks(queue_url: str) -> list[DeliveryTask]:
    """The tasks in the delivery queue, drained."""
    return [DeliveryTask.model_validate_json(record["body"]) for record in drain(queue_url)]


@pytest.fixture
def intake_handler(function_handler: LoadHandler) -> Handler:
    return function_handler("intake")


def test_signed_text_event_is_queued_once_per_target(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given the default fixtures' integration with two targets
    fixtures = seed_fixture_integrations()
    event = sample("apigw_text.json")

    # When Genesys posts the signed text message
    response = intake_handler(event, lambda_context("intake"))

    # Then the answer is 202 JSON and the queue holds one valid task per target, carrying the event
    assert response["statusCode"] == 202, response
    assert response["headers"]["content-type"] == "application/json"
    answer = json.loads(response["body"])
    tasks = queued_tasks(aws_stack.delivery_queue_url)
    assert sorted(t.target_id for t in tasks) == sorted(t.id for t in fixtures.integrations[0].targets)
    assert sorted(answer["deliveryIds"]) == sorted(str(t.delivery_id) for t in tasks)
    sent = json.loads(event["body"])
    assert all(t.event_json == event["body"] and t.event_id == sent["id"] for t in tasks)


def test_a_genesys_retry_is_not_queued_again_and_gets_the_same_answer(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given an event already accepted
    seed_fixture_integrations()
    event = sample("apigw_typing.json")
    first = intake_handler(event, lambda_context("intake"))

    # When Genesys retries it (same id and channel.time)
    repeat = intake_handler(event, lambda_context("intake"))

    # Then the same 202 body, and the queue holds only the first attempt's tasks
    assert first["statusCode"] == repeat["statusCode"] == 202
    assert repeat["body"] == first["body"]
    assert len(drain(aws_stack.delivery_queue_url)) == 2
    record = aws_client("dynamodb").scan(TableName=aws_stack.idempotency_table)["Items"]
    assert [item["status"]["S"] for item in record] == ["COMPLETED"]
    assert int(record[0]["expiration"]["N"]) > time.time() + get_settings().idempotency_ttl_seconds - 60


def test_concurrent_repeats_are_queued_exactly_once(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given eight copies of one event arriving at the same time
    seed_fixture_integrations()
    event = sample("apigw_receipt.json")
    intake_handler(sample("apigw_typing.json"), lambda_context("intake"))
    drain(aws_stack.delivery_queue_url)  # warm: caches and clients exist before the race
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def post() -> None:
        barrier.wait()
        statuses.append(intake_handler(event, lambda_context("intake"))["statusCode"])

    # When they race through the handler
    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then one attempt queued the tasks and no repeat queued them again
    assert len(drain(aws_stack.delivery_queue_url)) == 2
    assert set(statuses) <= {202, 429} and 202 in statuses


def test_an_event_for_a_disabled_target_lands_in_the_dlq_as_target_disabled_not_nowhere(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given the default fixtures' integration, one of its targets disabled (by an operator, or a 410)
    integration = seed_fixture_integrations().integrations[0]
    off, on = (target.id for target in integration.targets)
    target_store(get_settings()).set_target_enabled(integration.id, off, False)

    # When Genesys posts a signed event, and the dispatcher takes the disabled target's task
    response = intake_handler(sample("apigw_text.json"), lambda_context("intake"))
    records = drain(aws_stack.delivery_queue_url)
    for_off = [r for r in records if DeliveryTask.model_validate_json(r["body"]).target_id == off]
    result = build_dispatcher(get_settings()).handle_batch([sqs_record(r["body"]) for r in for_off])

    # Then the event was accepted for both targets, and the disabled one's task is in the DLQ with the
    # reason a redrive after `relay targets enable` acts on: not silently left out
    assert response["statusCode"] == 202
    tasks = [DeliveryTask.model_validate_json(r["body"]) for r in records]
    assert sorted(t.target_id for t in tasks) == sorted([off, on])
    assert sorted(json.loads(response["body"])["deliveryIds"]) == sorted(str(t.delivery_id) for t in tasks)
    assert result == {"batchItemFailures": []}
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert dead["messageAttributes"]["relay-dlq-reason"]["stringValue"] == "target-disabled"
    assert DeliveryTask.model_validate_json(dead["body"]).target_id == off


def test_sqs_unavailable_is_503_with_retry_after_and_the_retry_queues(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given the delivery queue is gone (SQS refuses every send)
    seed_fixture_integrations()
    sqs = aws_client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=aws_stack.delivery_queue_url, AttributeNames=["All"])
    sqs.delete_queue(QueueUrl=aws_stack.delivery_queue_url)
    event = sample("apigw_text.json")

    # When Genesys posts, the answer is 503 with Retry-After, so Genesys retries
    failed = intake_handler(event, lambda_context("intake"))
    assert failed["statusCode"] == 503, failed
    assert int(failed["headers"]["retry-after"]) > 0
    assert json.loads(failed["body"])["error"] == "service_unavailable"

    # And once SQS is back, the retry is queued (the failed attempt did not leave a completed claim)
    keep = {"VisibilityTimeout", "RedrivePolicy", "MessageRetentionPeriod"}
    name = aws_stack.delivery_queue_url.rsplit("/", 1)[1]
    sqs.create_queue(
        QueueName=name, Attributes={k: v for k, v in attributes["Attributes"].items() if k in keep}
    )
    retried = intake_handler(event, lambda_context("intake"))
    assert retried["statusCode"] == 202
    assert len(drain(aws_stack.delivery_queue_url)) == 2


def intake_timeout_seconds() -> float:
    """The IntakeFunction's Timeout in template.yaml (its AWS call bounds, which must fit inside it, are
    set by the ``intake_handler`` fixture)."""
    return load_template().function("IntakeFunction").timeout_seconds


def test_aws_that_hangs_is_503_with_retry_after_inside_the_functions_timeout(
    aws_stack: LocalResources, intake_handler: Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the intake's function settings from template.yaml, and every AWS endpoint accepting
    # connections but never answering (a hung dependency, not a refusing one)
    timeout_seconds = intake_timeout_seconds()
    with misbehaving_peer(lambda *_: Answer(after="hold")) as silent:
        monkeypatch.setenv("AWS_ENDPOINT_URL", silent.url)
        forget_cached_configuration()

        # When Genesys posts
        started = time.monotonic()
        response = intake_handler(sample("apigw_text.json"), lambda_context("intake"))
        took = time.monotonic() - started

    # Then the answer is the documented 503 with Retry-After (Genesys retries it), in time: before the
    # function's own timeout would have made API Gateway answer 500 instead
    assert response["statusCode"] == 503, response
    assert json.loads(response["body"])["error"] == "service_unavailable"
    assert int(response["headers"]["retry-after"]) > 0
    assert took < timeout_seconds
    assert silent.connections >= 1  # it did wait on the silent endpoint


class SlowAws:
    """A loopback HTTP server in front of moto that answers each request ``delay`` seconds late (each
    call well inside the intake's read timeout, so no call times out)."""

    def __init__(self, target: str, delay: float) -> None:
        forwarder = self

        class Forward(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                time.sleep(forwarder.delay)  # not a wait: the slow dependency under test
                answer(self, forward(self, forwarder.target, timeout=30))

            def log_message(self, *args: Any) -> None:
                pass

        self.target, self.delay = target, delay
        self.server = LoopbackServer(Forward, name="slow-aws")
        self.url = f"http://127.0.0.1:{self.server.start()}"

    def close(self) -> None:
        self.server.stop()


def test_aws_that_answers_each_call_slowly_is_503_before_the_calls_add_up_past_the_timeout(
    aws_stack: LocalResources, intake_handler: Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the intake's function settings from template.yaml, and AWS answering every call 2.5 s late:
    # each call fits its 3 s read timeout, but the intake's calls together do not fit its 8 s
    seed_fixture_integrations()
    timeout_seconds = intake_timeout_seconds()
    slow = SlowAws(aws_stack.endpoint_url, delay=2.5)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", slow.url)
        forget_cached_configuration()

        # When Genesys posts
        started = time.monotonic()
        response = intake_handler(sample("apigw_text.json"), lambda_context("intake"))
        took = time.monotonic() - started
    finally:
        slow.close()

    # Then no call starts that could end past the function's timeout: the answer is the documented 503
    # with Retry-After, in time, and nothing was queued
    assert response["statusCode"] == 503, response
    assert int(response["headers"]["retry-after"]) > 0
    assert took < timeout_seconds
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_stack.endpoint_url)
    forget_cached_configuration()
    assert drain(aws_stack.delivery_queue_url) == []


def test_bodies_too_large_for_sqs_are_claim_checked_in_the_audit_bucket(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given a Text message just under MAX_BODY_BYTES, too large for one SQS message with headroom
    seed_fixture_integrations()
    message = sample("openmessaging_text.json")
    message["text"] = "z" * (get_settings().max_body_bytes - 2_000)
    event = api_gateway_event(message)

    # When it arrives
    response = intake_handler(event, lambda_context("intake"))

    # Then the body is in the audit bucket under events/, and every task refers to it
    assert response["statusCode"] == 202, response
    tasks = queued_tasks(aws_stack.delivery_queue_url)
    assert len(tasks) == 2
    ref = tasks[0].event_ref
    assert ref is not None and all(t.event_json is None and t.event_ref == ref for t in tasks)
    assert ref.bucket == aws_stack.audit_bucket and ref.key.startswith("events/")
    stored = aws_client("s3").get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
    assert stored == event["body"].encode()


def test_a_body_over_the_limit_is_413_from_the_handler(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    seed_fixture_integrations()
    message = sample("openmessaging_text.json")
    message["text"] = "z" * (get_settings().max_body_bytes + 1)
    response = intake_handler(api_gateway_event(message), lambda_context("intake"))
    assert response["statusCode"] == 413
    assert json.loads(response["body"])["error"] == "payload_too_large"
    assert drain(aws_stack.delivery_queue_url) == []


def test_a_member_the_relay_reads_written_twice_is_400_and_an_unknown_one_is_queued_as_sent(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    seed_fixture_integrations()
    message = sample("openmessaging_text.json")

    # A channel.id written twice: which integration the message is for depends on the reader's parser
    body = with_member_twice(message, ("channel", "id"), "another-integration")
    response = intake_handler(api_gateway_event(body), lambda_context("intake"))
    assert response["statusCode"] == 400
    assert json.loads(response["body"])["error"] == "repeated_member"
    assert drain(aws_stack.delivery_queue_url) == []

    # A member the relay neither reads nor checks, written twice: queued for both targets as sent
    message["x"] = 2
    body = with_member_twice(message, ("x",), 1)
    assert intake_handler(api_gateway_event(body), lambda_context("intake"))["statusCode"] == 202
    assert [t.event_json for t in queued_tasks(aws_stack.delivery_queue_url)] == [body, body]


def test_a_wrong_signature_is_401_json_and_nothing_is_queued(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    seed_fixture_integrations()
    event = sample("apigw_text.json")
    event["body"] = event["body"].replace("help", "HELP")
    response = intake_handler(event, lambda_context("intake"))
    assert response["statusCode"] == 401
    assert json.loads(response["body"])["error"] == "signature_mismatch"
    assert drain(aws_stack.delivery_queue_url) == []


def test_rotation_accepts_the_previous_signature_secret(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given the secret was rotated: the fixtures' secret is now the previous one
    fixtures = Fixtures.load()
    old = fixtures.integrations[0].signature_secret
    name = secret_name(SecretKind.SIGNATURE, fixtures.integrations[0].id)
    seed_fixture_integrations()
    put_secret(name, RotatingSecret(current="a-brand-new-signature-secret-01", previous=old))

    # When Genesys still signs with the old one, it is accepted
    response = intake_handler(sample("apigw_text.json"), lambda_context("intake"))
    assert response["statusCode"] == 202
    assert len(drain(aws_stack.delivery_queue_url)) == 2


def test_eventbridge_events_reach_the_same_delivery_path(
    aws_stack: LocalResources, intake_handler: Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given EventBridge events are routed to the fixtures' integration
    fixtures = seed_fixture_integrations()
    monkeypatch.setenv("EVENTBRIDGE_INTEGRATION_ID", fixtures.integrations[0].id)
    get_settings.cache_clear()
    event = sample("eventbridge_conversation_start.json")

    # When the rule invokes the intake with a Genesys partner event (twice: at-least-once delivery)
    intake_handler(event, lambda_context("intake"))
    intake_handler(event, lambda_context("intake"))

    # Then one task per target, tagged as an EventBridge event
    tasks = queued_tasks(aws_stack.delivery_queue_url)
    assert len(tasks) == 2
    assert all(t.event_source == "eventbridge" and json.loads(t.event_json or "") == event for t in tasks)


def test_eventbridge_failures_raise_for_lambda_to_retry(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Without EVENTBRIDGE_INTEGRATION_ID the event cannot be routed: the invocation fails, Lambda retries
    # it and finally hands it to the on-failure destination, instead of it being dropped.
    seed_fixture_integrations()
    event = sample("eventbridge_conversation_start.json")
    with pytest.raises(ConfigurationError):
        intake_handler(event, lambda_context("intake"))
    assert drain(aws_stack.delivery_queue_url) == []


def emf_records(output: str) -> list[dict[str, Any]]:
    records = []
    for line in output.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            records.append(json.loads(line))
    return records


def total(value: float | list[float]) -> float:
    return sum(value) if isinstance(value, list) else value


def test_metrics_name_the_rejection_reason_without_tagging_later_events(
    aws_stack: LocalResources, intake_handler: Handler, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_fixture_integrations()
    bad = sample("apigw_text.json")
    del bad["headers"]["x-hub-signature-256"]
    intake_handler(bad, lambda_context("intake"))
    intake_handler(sample("apigw_text.json"), lambda_context("intake"))
    rejected, accepted = emf_records(capsys.readouterr().out)
    assert total(rejected["EventsRejected"]) == 1 and rejected["reason"] == "signature_missing"
    assert total(accepted["EventsAccepted"]) == 1 and total(accepted["TasksQueued"]) == 2
    assert "reason" not in accepted
    assert rejected["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "GenesysRelay"


def test_dynamodb_unavailable_is_503_and_nothing_is_queued(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given the idempotency table cannot be written
    seed_fixture_integrations()
    aws_client("dynamodb").delete_table(TableName=aws_stack.idempotency_table)

    # When Genesys posts, the answer asks it to retry, and nothing was queued that is not recorded
    response = intake_handler(sample("apigw_text.json"), lambda_context("intake"))
    assert response["statusCode"] == 503 and int(response["headers"]["retry-after"]) > 0
    assert drain(aws_stack.delivery_queue_url) == []


def test_a_rotated_secret_pasted_out_of_shape_is_a_500_genesys_retries_not_a_401(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given a warm container that cached the integration's secret
    fixture = seed_fixture_integrations().integrations[0]
    assert intake_handler(sample("apigw_text.json"), lambda_context("intake"))["statusCode"] == 202
    drain(aws_stack.delivery_queue_url)

    # When the secret is rotated by pasting the bare new value, and Genesys signs with it at once
    rotated = "a-rotated-secret-pasted-bare"
    aws_client("secretsmanager").put_secret_value(
        SecretId=secret_name(SecretKind.SIGNATURE, fixture.id), SecretString=rotated
    )
    message = sample("openmessaging_receipt.json")
    response = intake_handler(api_gateway_event(message, sign_with=rotated), lambda_context("intake"))

    # Then the answer is one Genesys retries (a 401 it never resends: the event would be lost),
    # nothing was queued, and the message names no secret value
    assert response["statusCode"] == 500, response
    assert json.loads(response["body"])["error"] == "internal_error"
    assert rotated not in response["body"]
    assert drain(aws_stack.delivery_queue_url) == []


def test_a_rotation_the_secret_cache_has_not_seen_yet_loses_nothing(
    aws_stack: LocalResources, intake_handler: Handler
) -> None:
    # Given a warm container that cached the integration's secret
    fixture = seed_fixture_integrations().integrations[0]
    first = intake_handler(sample("apigw_text.json"), lambda_context("intake"))
    assert first["statusCode"] == 202

    # When the secret is rotated and Genesys signs with the new one at once
    rotated = "a-freshly-rotated-signature-secret"
    put_secret(
        secret_name(SecretKind.SIGNATURE, fixture.id),
        RotatingSecret(current=rotated, previous=fixture.signature_secret),
    )
    message = sample("openmessaging_receipt.json")
    response = intake_handler(api_gateway_event(message, sign_with=rotated), lambda_context("intake"))

    # Then the stale cache is re-read and the event accepted
    assert response["statusCode"] == 202, response
    assert len(drain(aws_stack.delivery_queue_url)) == 4

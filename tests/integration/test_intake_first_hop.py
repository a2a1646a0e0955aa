"""The intake on the FIFO first hop against a real moto server (IntakeDeduplication=queue, the
template's default; docs/intake.md "The first hop"): SQS deduplicates on the delivery id, so concurrent
repeats, a retried webhook and a send repeated after its answer was lost are all queued once, and the
intake writes nothing to DynamoDB per event."""

from __future__ import annotations

import json
import threading

import pytest
from support.events import api_gateway_event, sample
from support.handlers import Handler, load_handler
from support.lambda_context import lambda_context, own_call_bounds
from support.queues import drain
from test_intake_handler import seed_fixture_integrations
from test_intake_idempotency import LosesFirstAnswer

from relay.adapters.aws import new_client
from relay.adapters.sqs import SqsQueues
from relay.local.aws_stack import LocalResources, forget_cached_configuration
from relay.models.delivery import DeliveryTask
from relay.models.queue import GroupPlacement, OrderedTask
from relay.wiring import aws_client

pytestmark = pytest.mark.integration


@pytest.fixture
def intake(first_hop_stack: LocalResources, monkeypatch: pytest.MonkeyPatch) -> Handler:
    for key, value in own_call_bounds("intake").items():
        monkeypatch.setenv(key, value)
    forget_cached_configuration()
    return load_handler("intake")


def test_the_first_hop_and_its_dead_letter_queue_deduplicate_per_message_group(
    first_hop_stack: LocalResources,
) -> None:
    for url in (first_hop_stack.first_hop_queue_url, first_hop_stack.first_hop_dead_letter_queue_url):
        answer = aws_client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        attributes = answer["Attributes"]
        assert url.endswith(".fifo")
        assert (attributes["DeduplicationScope"], attributes["FifoThroughputLimit"]) == (
            "messageGroup",
            "perMessageGroupId",
        )


def test_an_event_is_queued_on_the_first_hop_once_per_target_with_no_idempotency_record(
    first_hop_stack: LocalResources, intake: Handler
) -> None:
    # Given the default fixtures' integration with two targets
    seed_fixture_integrations()

    # When Genesys posts a signed event, and then the same request again
    first = intake(sample("apigw_text.json"), lambda_context("intake"))
    repeat = intake(sample("apigw_text.json"), lambda_context("intake"))

    # Then both are accepted with the same answer, each target's task is on the first hop once, in a
    # group of its own named by its delivery id, and neither the DeliveryQueue nor DynamoDB was used
    assert (first["statusCode"], repeat["statusCode"]) == (202, 202)
    assert repeat["body"] == first["body"]
    records = drain(first_hop_stack.first_hop_queue_url)
    delivery_ids = [str(DeliveryTask.model_validate_json(r["body"]).delivery_id) for r in records]
    assert sorted(delivery_ids) == sorted(json.loads(first["body"])["deliveryIds"])
    assert [r["attributes"]["MessageGroupId"] for r in records] == delivery_ids
    assert drain(first_hop_stack.delivery_queue_url) == []
    table = first_hop_stack.idempotency_table
    assert aws_client("dynamodb").scan(TableName=table)["Items"] == []


def test_concurrent_repeats_are_queued_exactly_once_on_the_first_hop(
    first_hop_stack: LocalResources, intake: Handler
) -> None:
    # Given eight copies of one event arriving at the same time (caches and clients warm)
    seed_fixture_integrations()
    intake(sample("apigw_typing.json"), lambda_context("intake"))
    drain(first_hop_stack.first_hop_queue_url)
    event = sample("apigw_receipt.json")
    barrier = threading.Barrier(8)
    answers: list[dict[str, object]] = []

    def post() -> None:
        barrier.wait()
        answers.append(intake(event, lambda_context("intake")))

    # When they race through the handler
    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then every copy is accepted with one answer, and SQS kept each target's task once
    assert [a["statusCode"] for a in answers] == [202] * 8
    assert len({a["body"] for a in answers}) == 1
    assert len(drain(first_hop_stack.first_hop_queue_url)) == 2


def test_one_instant_spelled_three_ways_is_queued_once_on_the_first_hop(
    first_hop_stack: LocalResources, intake: Handler
) -> None:
    seed_fixture_integrations()
    message = sample("openmessaging_text.json")
    answers = []
    for spelling in ("2026-03-25T10:00:00Z", "2026-03-25T10:00:00.000Z", "2026-03-25T12:00:00+02:00"):
        message["channel"]["time"] = spelling
        answers.append(intake(api_gateway_event(message), lambda_context("intake")))

    assert {a["statusCode"] for a in answers} == {202} and len({a["body"] for a in answers}) == 1
    assert len(drain(first_hop_stack.first_hop_queue_url)) == 2


def tasks(count: int) -> list[OrderedTask]:
    return [
        OrderedTask(f'{{"n":{n}}}', GroupPlacement(f"delivery-{n}", f"delivery-{n}")) for n in range(count)
    ]


def test_a_send_applied_by_sqs_whose_answer_was_lost_is_queued_once(first_hop_stack: LocalResources) -> None:
    # Given an SQS endpoint that applies the first SendMessageBatch but loses its answer, so the SDK
    # sends the batch again (a standard queue would now hold each message twice: docs/intake.md)
    proxy = LosesFirstAnswer(first_hop_stack.endpoint_url, "AmazonSQS.SendMessageBatch")
    try:
        client = new_client(
            "sqs",
            endpoint_url=proxy.url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        queues = SqsQueues(client, first_hop_queue_url=first_hop_stack.first_hop_queue_url)

        # When three tasks are sent to the first hop
        queues.send_first_hop(tasks(3))
    finally:
        proxy.close()

    # Then the answer was lost once, and the first hop holds each task once
    assert proxy.lost == ["AmazonSQS.SendMessageBatch"]
    bodies = sorted(r["body"] for r in drain(first_hop_stack.first_hop_queue_url))
    assert bodies == ['{"n":0}', '{"n":1}', '{"n":2}']


def test_a_first_hop_dispatcher_retries_in_place_and_defers_to_the_standard_queue(
    first_hop_stack: LocalResources,
) -> None:
    # Given a task received from the first hop by its dispatcher's queue operations
    queues = SqsQueues(
        aws_client("sqs"),
        delivery_queue_url=first_hop_stack.first_hop_queue_url,
        requeue_queue_url=first_hop_stack.delivery_queue_url,
    )
    SqsQueues(aws_client("sqs"), first_hop_queue_url=first_hop_stack.first_hop_queue_url).send_first_hop(
        tasks(2)
    )
    received = aws_client("sqs").receive_message(
        QueueUrl=first_hop_stack.first_hop_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=30
    )["Messages"]
    assert len(received) == 2
    retried, deferred = received

    # When one is retried at once and the other deferred
    queues.schedule_retry(retried["ReceiptHandle"], 0)
    queues.defer(deferred["Body"], {}, attempts=1, deferrals=1, delay_seconds=0)

    # Then the retry is on the first hop again (the FIFO queue took the visibility change) and the
    # deferral is a new message on the standard queue, which takes per-message delays
    assert [r["body"] for r in drain(first_hop_stack.first_hop_queue_url)] == [retried["Body"]]
    (requeued,) = drain(first_hop_stack.delivery_queue_url)
    assert requeued["body"] == deferred["Body"]

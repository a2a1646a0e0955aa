"""The slow lane against moto: the fast lane's dispatcher hands a slow target's records to the
SlowDeliveryQueue (batched, attempts unchanged), the slow lane's dispatcher delivers them from there,
and the lane itself lives in the target's BreakerTable item."""

from __future__ import annotations

import json

import pytest
from support.handlers import LoadHandler
from support.lambda_context import lambda_context
from support.queues import drain
from test_dispatch_support import INTEGRATION_ID, PLAIN_TARGET, attr, seed_target, task_record

from relay.adapters.sqs import SqsQueues
from relay.local.aws_stack import LocalResources
from relay.local.receiver import Behaviour, Receiver
from relay.models.breaker import DeliveryLane, LaneState, target_key
from relay.models.delivery import ATTR_ATTEMPTS, ATTR_DEFERRALS, ATTR_DLQ_REASON
from relay.models.queue import Requeue
from relay.settings import Settings, get_settings
from relay.wiring import aws_client, breaker_store
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration


def slow_lane_settings(resources: LocalResources) -> Settings:
    """The slow lane's dispatcher: the deployment's settings on its own queue (as template.yaml sets)."""
    assert resources.slow_delivery_queue_url is not None
    return get_settings().model_copy(
        update={"dispatch_lane": DeliveryLane.SLOW, "delivery_queue_url": resources.slow_delivery_queue_url}
    )


def test_records_go_to_the_slow_lane_in_batches_with_their_attempts(aws_stack: LocalResources) -> None:
    # Given twelve records, one of them redriven from the DLQ with its dead-letter notes still on
    assert aws_stack.slow_delivery_queue_url is not None
    queues = SqsQueues(aws_client("sqs"), slow_queue_url=aws_stack.slow_delivery_queue_url)
    redriven = {ATTR_DLQ_REASON: {"dataType": "String", "stringValue": "exhausted"}}
    messages = [
        Requeue(f'{{"n":{i}}}', redriven if i == 0 else {}, attempts=i % 3, deferrals=1) for i in range(12)
    ]

    # When the fast lane hands them over
    accepted = queues.to_slow_lane(messages)

    # Then SQS took all of them, each with its counters and without the notes of an earlier run
    assert accepted == set(range(12))
    received = {record["body"]: record for record in drain(aws_stack.slow_delivery_queue_url)}
    assert len(received) == 12
    for i in range(12):
        record = received[f'{{"n":{i}}}']
        assert (attr(record, ATTR_ATTEMPTS), attr(record, ATTR_DEFERRALS)) == (str(i % 3), "1")
        assert attr(record, ATTR_DLQ_REASON) is None


def test_a_slow_lane_that_cannot_be_reached_keeps_the_records_with_the_caller(
    aws_stack: LocalResources,
) -> None:
    missing = aws_stack.slow_delivery_queue_url.replace("SlowDeliveryQueue", "NoSuchQueue")  # type: ignore[union-attr]
    queues = SqsQueues(aws_client("sqs"), slow_queue_url=missing)

    assert queues.to_slow_lane([Requeue("{}", {}, attempts=0, deferrals=0)]) == set()


def test_the_fast_lane_routes_a_slow_target_and_the_slow_lane_delivers_it(
    aws_stack: LocalResources, receiver: Receiver, function_handler: LoadHandler
) -> None:
    # Given a target whose lane is slow in the BreakerTable
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    key = target_key(INTEGRATION_ID, PLAIN_TARGET)
    assert breaker_store(get_settings()).save_lane(
        key, LaneState(DeliveryLane.SLOW, 1, 0.0), expected_version=0
    )
    record = task_record(attempts=1, receive_count=1)

    # When the fast lane's handler (the template's DispatcherFunction) gets one of its records
    response = function_handler("dispatcher")({"Records": [record]}, lambda_context("dispatcher"))

    # Then nothing was sent to the target, the record is done here and waits in the slow lane's queue
    assert response == {"batchItemFailures": []}
    assert receiver.requests == []
    assert aws_stack.slow_delivery_queue_url is not None
    (routed,) = drain(aws_stack.slow_delivery_queue_url)
    assert routed["body"] == record["body"] and attr(routed, ATTR_ATTEMPTS) == "1"

    # And the slow lane's dispatcher delivers it as the attempt it was (2: one made before)
    receiver.behaviour = Behaviour(status=503)
    slow = build_dispatcher(slow_lane_settings(aws_stack))
    try:
        failed = slow.handle_batch([routed])
    finally:
        slow.close()
    assert failed == {"batchItemFailures": [{"itemIdentifier": routed["messageId"]}]}  # retry: 2 of 3
    assert len(receiver.requests) == 1
    assert receiver.requests[0].headers["webhook-id"] == json.loads(record["body"])["deliveryId"]

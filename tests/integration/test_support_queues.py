"""support.queues against moto: what ``drain`` takes, and what it leaves."""

from __future__ import annotations

import pytest
from support.queues import drain, receive

from relay.local.aws_stack import LocalResources
from relay.wiring import aws_client as client

pytestmark = pytest.mark.integration


def _send(queue_url: str, count: int, **kwargs: object) -> list[str]:
    bodies = [f"m{i}" for i in range(count)]
    for body in bodies:
        client("sqs").send_message(QueueUrl=queue_url, MessageBody=body, **kwargs)
    return bodies


def _depth(queue_url: str) -> dict[str, int]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return {name: int(attributes[name]) for name in names}


def test_drain_takes_every_visible_message_as_lambda_records_and_deletes_them(
    aws_stack: LocalResources,
) -> None:
    # Given more messages than one receive returns, one with a message attribute
    url = aws_stack.dead_letter_queue_url
    bodies = _send(url, 23)
    client("sqs").send_message(
        QueueUrl=url,
        MessageBody="tagged",
        MessageAttributes={"relay-dlq-reason": {"DataType": "String", "StringValue": "poison"}},
    )

    # When the queue is drained
    drained = drain(url)

    # Then every message came back once, shaped as Lambda hands it over, and none is left behind
    assert sorted(r["body"] for r in drained) == sorted([*bodies, "tagged"])
    (tagged,) = [r for r in drained if r["body"] == "tagged"]
    assert tagged["messageAttributes"]["relay-dlq-reason"]["stringValue"] == "poison"
    assert tagged["eventSource"] == "aws:sqs" and tagged["eventSourceARN"].endswith(url.rsplit("/", 1)[1])
    assert _depth(url) == {"ApproximateNumberOfMessages": 0, "ApproximateNumberOfMessagesNotVisible": 0}
    assert drain(url) == []


def test_drain_leaves_delayed_and_in_flight_messages_alone(aws_stack: LocalResources) -> None:
    # Given one message in flight (received, not deleted) and one delayed
    url = aws_stack.delivery_queue_url
    _send(url, 1)
    (taken,) = receive(url, visibility_timeout=300)
    client("sqs").send_message(QueueUrl=url, MessageBody="later", DelaySeconds=900)

    # When the queue is drained, then neither is taken, and the one in flight is still in flight
    assert drain(url) == []
    assert _depth(url)["ApproximateNumberOfMessagesNotVisible"] == 1
    assert taken["attributes"]["ApproximateReceiveCount"] == "1"


def test_drain_refuses_a_queue_that_does_not_empty(aws_stack: LocalResources) -> None:
    url = aws_stack.dead_letter_queue_url
    _send(url, 12)
    with pytest.raises(AssertionError, match="more than 5 messages"):
        drain(url, limit=5)

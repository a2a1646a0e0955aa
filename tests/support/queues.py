"""Reading an SQS queue (in moto) the way the tests need it, with records shaped as Lambda hands them over."""

from __future__ import annotations

from typing import Any

from relay.local.poller import lambda_record
from relay.wiring import aws_client as client

DRAIN_LIMIT = 1_000


def receive(
    queue_url: str, max_messages: int = 10, *, visibility_timeout: int | None = None
) -> list[dict[str, Any]]:
    """One ReceiveMessage (no waiting), as Lambda's SQS event records: real receipt handles, every
    attribute. The messages stay in the queue, invisible for the visibility timeout."""
    sqs = client("sqs")
    kwargs: dict[str, Any] = {
        "QueueUrl": queue_url,
        "MaxNumberOfMessages": max_messages,
        "AttributeNames": ["All"],
        "MessageAttributeNames": ["All"],
        "WaitTimeSeconds": 0,
    }
    if visibility_timeout is not None:
        kwargs["VisibilityTimeout"] = visibility_timeout
    messages = sqs.receive_message(**kwargs).get("Messages", [])
    if not messages:
        return []
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return [lambda_record(message, arn, arn.split(":")[3]) for message in messages]


def drain(queue_url: str, *, limit: int = DRAIN_LIMIT) -> list[dict[str, Any]]:
    """Every message visible in the queue now, received and deleted: the queue holds none of them after.

    Receives until a receive comes back empty (delayed and in-flight messages are not visible, so not
    drained). Returns Lambda SQS records (``body``, ``attributes``, ``messageAttributes``...). Fails if
    more than ``limit`` messages turn up: something is refilling the queue as fast as it is drained.
    """
    sqs = client("sqs")
    drained: list[dict[str, Any]] = []
    while batch := receive(queue_url, 10):
        deleted = sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(batch)],
        )
        assert not deleted.get("Failed"), deleted["Failed"]
        drained.extend(batch)
        if len(drained) > limit:
            raise AssertionError(f"draining {queue_url} found more than {limit} messages")
    return drained

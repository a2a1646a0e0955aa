"""The local stack's FIFO queues hand a message group out as SQS does (relay.local.moto_fifo): from its
oldest message, in order, and nothing of it while one of its messages is in flight. Raw SQS calls on
the moto server every test uses; the control runs the same calls on a moto server left as it is."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest

from relay.local.aws_stack import MotoServer

pytestmark = pytest.mark.integration
_names = itertools.count(1)


class Fifo:
    """One FIFO queue of its own on a moto server; message bodies are their names."""

    def __init__(self, endpoint: str, attributes: dict[str, str] | None = None) -> None:
        self.sqs = boto3.client(
            "sqs",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        name = f"moto-fifo-{time.monotonic_ns()}-{next(_names)}.fifo"
        self.url = self.sqs.create_queue(
            QueueName=name, Attributes={"FifoQueue": "true", **(attributes or {})}
        )["QueueUrl"]

    def arn(self) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])

    def send(self, group: str, *bodies: str) -> None:
        for body in bodies:
            self.sqs.send_message(
                QueueUrl=self.url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=body
            )

    def receive(self, count: int = 10, *, visibility: int = 30, wait: int = 0) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=count, VisibilityTimeout=visibility, WaitTimeSeconds=wait
        ).get("Messages", [])
        return messages

    def delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])


def bodies(messages: list[dict[str, Any]], prefix: str = "") -> list[str]:
    return [m["Body"] for m in messages if m["Body"].startswith(prefix)]


@pytest.fixture(scope="module")
def moto_as_is() -> Iterator[str]:
    with MotoServer(fifo_as_sqs=False) as server:
        yield server.url


def held_group_comes_back(endpoint: str) -> list[str]:
    """A group received whole and held for 1 s; what a long poll made during the hold returns."""
    fifo = Fifo(endpoint)
    fifo.send("g", "g-0", "g-1", "g-2")
    assert bodies(fifo.receive(visibility=1)) == ["g-0", "g-1", "g-2"]
    return bodies(fifo.receive(wait=5))


def test_a_held_group_comes_back_from_its_oldest_message(moto_endpoint: str) -> None:
    assert held_group_comes_back(moto_endpoint) == ["g-0", "g-1", "g-2"]


def test_moto_as_it_is_hands_out_a_held_groups_last_message_alone(moto_as_is: str) -> None:
    # The control: the check above fails on moto's own receive.
    assert held_group_comes_back(moto_as_is) == ["g-2"]


def test_nothing_of_a_group_goes_out_while_one_of_its_messages_is_in_flight(moto_endpoint: str) -> None:
    fifo = Fifo(moto_endpoint)
    fifo.send("a", "a-0", "a-1")
    fifo.send("b", "b-0")
    first = fifo.receive(count=1)
    assert bodies(first) == ["a-0"]

    assert bodies(fifo.receive()) == ["b-0"]  # a-1 waits behind a-0, in flight

    fifo.delete(first[0])
    assert bodies(fifo.receive()) == ["a-1"]


def long_poll_while_a_group_settles(endpoint: str) -> list[str]:
    """Group a's head in flight and h-0 held for 2 s; a long poll waits (nothing is there for it), the
    head is deleted, and the long poll returns: group a's messages in what it returned."""
    fifo = Fifo(endpoint)
    fifo.send("a", "a-0", "a-1", "a-2")
    fifo.send("h", "h-0")  # its visibility runs out while the long poll waits
    fifo.send("a", "a-3")
    head = fifo.receive(count=1)
    assert bodies(head) == ["a-0"]
    assert bodies(fifo.receive(count=1, visibility=2)) == ["h-0"]
    polled: list[list[dict[str, Any]]] = []
    poll = threading.Thread(target=lambda: polled.append(fifo.receive(wait=5)))
    poll.start()
    poll.join(timeout=1)
    assert poll.is_alive(), "a long poll returned while group a's head was in flight"

    fifo.delete(head[0])
    poll.join(timeout=10)

    assert polled, "the long poll did not return"
    return bodies(polled[0], "a-")


def test_a_long_poll_waiting_on_a_group_in_flight_hands_it_out_in_order(moto_endpoint: str) -> None:
    assert long_poll_while_a_group_settles(moto_endpoint) == ["a-1", "a-2", "a-3"]


def test_moto_as_it_is_hands_out_a_later_message_after_a_long_poll_on_a_group_in_flight(
    moto_as_is: str,
) -> None:
    # The control. moto kept a long poll's view of the groups in flight from its start, and refreshed
    # it only when its scan met a message whose visibility had run out (h-0): after the refresh, a
    # message of a group whose earlier ones the scan had skipped went out first (a-3 before a-1 and
    # a-2; in the ordering proof, message 8 of a conversation before 6 and 7).
    assert long_poll_while_a_group_settles(moto_as_is) == ["a-3"]


def test_the_redrive_policy_moves_a_message_received_too_often_and_its_group_goes_on(
    moto_endpoint: str,
) -> None:
    dead_letters = Fifo(moto_endpoint)
    policy = json.dumps({"deadLetterTargetArn": dead_letters.arn(), "maxReceiveCount": 2})
    fifo = Fifo(moto_endpoint, {"RedrivePolicy": policy})
    fifo.send("g", "g-0", "g-1")
    for _ in range(2):  # received, and shown again at once, as often as the policy allows
        assert bodies(fifo.receive(count=1, visibility=0)) == ["g-0"]

    assert bodies(fifo.receive()) == ["g-1"]
    assert bodies(dead_letters.receive()) == ["g-0"]


def sent_again_after_delete(endpoint: str) -> list[str]:
    """A message received and deleted, then sent again with its deduplication id: what a receive finds."""
    fifo = Fifo(endpoint, {"DeduplicationScope": "messageGroup", "FifoThroughputLimit": "perMessageGroupId"})
    fifo.send("d-1", "d-1")
    (first,) = fifo.receive()
    fifo.delete(first)
    fifo.send("d-1", "d-1")  # a retried webhook, after the first was delivered
    return bodies(fifo.receive())


def test_a_repeat_sent_after_the_first_was_deleted_is_dropped_within_the_window(moto_endpoint: str) -> None:
    assert sent_again_after_delete(moto_endpoint) == []


def test_moto_as_it_is_queues_a_repeat_again_once_the_first_was_deleted(moto_as_is: str) -> None:
    assert sent_again_after_delete(moto_as_is) == ["d-1"]


def test_with_message_group_scope_one_id_in_two_groups_is_two_messages(moto_endpoint: str) -> None:
    fifo = Fifo(
        moto_endpoint, {"DeduplicationScope": "messageGroup", "FifoThroughputLimit": "perMessageGroupId"}
    )
    for group in ("a", "b"):
        fifo.sqs.send_message(
            QueueUrl=fifo.url, MessageBody=group, MessageGroupId=group, MessageDeduplicationId="same"
        )

    assert sorted(bodies(fifo.receive())) == ["a", "b"]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"MessageDeduplicationId": "x"}, "MissingParameter"),  # no group
        ({"MessageGroupId": "g"}, "InvalidParameterValue"),  # no deduplication id, none content-based
        ({"MessageGroupId": "g", "MessageDeduplicationId": "x", "DelaySeconds": 5}, "InvalidParameterValue"),
    ],
)
def test_a_fifo_send_missing_what_sqs_requires_is_refused(
    moto_endpoint: str, fields: dict[str, Any], error: str
) -> None:
    fifo = Fifo(moto_endpoint)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        fifo.sqs.send_message(QueueUrl=fifo.url, MessageBody="b", **fields)
    assert refused.value.response["Error"]["Code"].endswith(error)
    assert fifo.receive() == []

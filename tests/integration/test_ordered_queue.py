"""The ordered lane's FIFO queues on moto: the SQS adapter's ordered operations, and the local event
source handing a message group to the function in order, as Lambda's does from SQS."""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

import pytest
from support.waiting import wait_until

from relay.adapters.sqs import SqsQueues
from relay.local.aws_stack import LocalResources
from relay.local.lambda_runtime import LocalFunction
from relay.local.poller import SqsEventSource, SqsPoller
from relay.models.delivery import DeadLetterNote, DlqReason
from relay.models.queue import GroupPlacement, OrderedTask
from relay.wiring import aws_client

pytestmark = pytest.mark.integration
ORDERED = "OrderedDispatcherFunction"


def ordered_queues(resources: LocalResources) -> SqsQueues:
    return SqsQueues(
        aws_client("sqs"),
        ordered_queue_url=resources.ordered_queue_url,
        ordered_dead_letter_queue_url=resources.ordered_dead_letter_queue_url,
    )


def receive_all(queue_url: str) -> list[dict[str, Any]]:
    return list(
        aws_client("sqs")
        .receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        .get("Messages", [])
    )


# --- the adapter ---------------------------------------------------------------------------------------


def test_the_template_makes_both_ordered_queues_fifo(aws_stack: LocalResources) -> None:
    for url in (aws_stack.ordered_queue_url, aws_stack.ordered_dead_letter_queue_url):
        attributes = aws_client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
            "Attributes"
        ]
        assert url.endswith(".fifo")
        assert (
            attributes["FifoQueue"],
            attributes["DeduplicationScope"],
            attributes["FifoThroughputLimit"],
        ) == (
            "true",
            "messageGroup",
            "perMessageGroupId",
        )


def test_a_repeated_ordered_send_is_dropped_within_its_group(aws_stack: LocalResources) -> None:
    queues = ordered_queues(aws_stack)
    first = OrderedTask('{"n":1}', GroupPlacement("g-1", "delivery-1"))

    queues.send_ordered([first, OrderedTask('{"n":2}', GroupPlacement("g-1", "delivery-2"))])
    queues.send_ordered([first])  # a retried webhook: the same delivery id

    received = receive_all(aws_stack.ordered_queue_url)
    assert [m["Body"] for m in received] == ['{"n":1}', '{"n":2}']
    assert {m["Attributes"]["MessageGroupId"] for m in received} == {"g-1"}


def test_a_released_group_hands_out_its_next_message_and_a_second_delete_succeeds(
    aws_stack: LocalResources,
) -> None:
    # Given a conversation's first message received (its second is not handed out meanwhile)
    queues = ordered_queues(aws_stack)
    queues.send_ordered([OrderedTask(f'{{"n":{n}}}', GroupPlacement("g-1", f"d-{n}")) for n in range(2)])
    sqs = aws_client("sqs")
    first = sqs.receive_message(QueueUrl=aws_stack.ordered_queue_url, MaxNumberOfMessages=1)["Messages"]
    assert receive_all(aws_stack.ordered_queue_url) == []

    # When the dispatcher deletes it before its invocation ends
    queues.delete([first[0]["ReceiptHandle"]])

    # Then the next one is handed out, and the event source's own delete afterwards still succeeds
    assert [m["Body"] for m in receive_all(aws_stack.ordered_queue_url)] == ['{"n":1}']
    again = sqs.delete_message_batch(
        QueueUrl=aws_stack.ordered_queue_url,
        Entries=[{"Id": "0", "ReceiptHandle": first[0]["ReceiptHandle"]}],
    )
    assert again.get("Failed", []) == [] and len(again["Successful"]) == 1


def test_a_hold_shows_the_groups_messages_again_together_and_a_letter_keeps_its_group(
    aws_stack: LocalResources,
) -> None:
    queues = ordered_queues(aws_stack)
    queues.send_ordered([OrderedTask(f'{{"n":{n}}}', GroupPlacement("g-1", f"d-{n}")) for n in range(2)])
    received = receive_all(aws_stack.ordered_queue_url)

    queues.hold([m["ReceiptHandle"] for m in received], 0)
    assert [m["Body"] for m in receive_all(aws_stack.ordered_queue_url)] == ['{"n":0}', '{"n":1}']

    queues.dead_letter_in_order(
        GroupPlacement("g-1", received[0]["MessageId"]),
        received[0]["Body"],
        {},
        DeadLetterNote(
            DlqReason.EXHAUSTED,
            3,
            integration_id="i-1",
            target_id="t-1",
            last_status=503,
            last_error="http-503",
        ),
    )
    (letter,) = receive_all(aws_stack.ordered_dead_letter_queue_url)
    assert letter["Attributes"]["MessageGroupId"] == "g-1"
    assert letter["MessageAttributes"]["relay-dlq-reason"]["StringValue"] == "exhausted"


# --- the local event source ------------------------------------------------------------------------------


class HoldingConsumer:
    """A function over the ordered queue that holds a group once at a chosen message (visibility 1 s for
    it and the rest of its group in the batch, all reported failed) and settles everything else. It
    records every batch and whether a group's records ever started past its oldest unsettled one."""

    def __init__(self, queue_url: str, hold_at: set[str]) -> None:
        self.queue_url = queue_url
        self.hold_at = set(hold_at)
        self.lock = threading.Lock()
        self.settled: list[str] = []
        self.out_of_order: list[tuple[str, list[str]]] = []

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        by_group: dict[str, list[dict[str, Any]]] = {}
        for record in event["Records"]:
            by_group.setdefault(record["attributes"]["MessageGroupId"], []).append(record)
        failed: list[str] = []
        for group, records in by_group.items():
            bodies = [r["body"] for r in records]
            with self.lock:
                pending = [b for b in sorted(SENT[group]) if b not in self.settled]
                if bodies != pending[: len(bodies)]:
                    self.out_of_order.append((group, bodies))
            for index, record in enumerate(records):
                if record["body"] in self.hold_at:
                    self.hold_at.discard(record["body"])
                    held = records[index:]
                    aws_client("sqs").change_message_visibility_batch(
                        QueueUrl=self.queue_url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": r["receiptHandle"], "VisibilityTimeout": 1}
                            for i, r in enumerate(held)
                        ],
                    )
                    failed += [r["messageId"] for r in held]
                    break
                with self.lock:
                    self.settled.append(record["body"])
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


SENT = {"a": [f"a-{n}" for n in range(5)], "b": [f"b-{n}" for n in range(3)]}


def test_the_ordered_event_source_comes_from_the_template(aws_stack: LocalResources) -> None:
    source = SqsEventSource.from_template(aws_stack.template, ORDERED)
    assert source.queue_url == aws_stack.ordered_queue_url
    queue = aws_client("sqs").get_queue_attributes(
        QueueUrl=source.queue_url, AttributeNames=["FifoQueue", "RedrivePolicy"]
    )["Attributes"]
    assert queue["FifoQueue"] == "true" and json.loads(queue["RedrivePolicy"])["maxReceiveCount"] >= 100
    assert source.batching_window_seconds == 0 and source.report_batch_item_failures


def test_a_held_group_comes_back_from_its_oldest_message_in_order(aws_stack: LocalResources) -> None:
    queues = ordered_queues(aws_stack)
    for group, bodies in SENT.items():
        queues.send_ordered([OrderedTask(body, GroupPlacement(group, body)) for body in bodies])
    consumer = HoldingConsumer(aws_stack.ordered_queue_url, {"a-1", "a-3"})
    source = SqsEventSource.from_template(aws_stack.template, ORDERED)
    function = LocalFunction.from_template(aws_stack.template, ORDERED, handler=consumer)

    with SqsPoller(source, function, aws_client("sqs")):
        wait_until(lambda: len(consumer.settled) == 8, what="every message settled", timeout=60)

    assert consumer.out_of_order == []
    assert [b for b in consumer.settled if b.startswith("a")] == SENT["a"]
    assert [b for b in consumer.settled if b.startswith("b")] == SENT["b"]


class LateHoldConsumer:
    """First batch: makes moto forget its records were received (visibility 0), then holds the head
    alone, and reports them all failed: the group's head invisible but no longer in flight for moto,
    as after a hold sent late through an older receipt handle (an invocation that outran its timeout
    on a busy machine). Later batches are settled; arrivals and receive counts are recorded."""

    def __init__(self, queue_url: str, held_seconds: int) -> None:
        self.queue_url, self.held_seconds = queue_url, held_seconds
        self.lock = threading.Lock()
        self.late_hold_done = False
        self.arrived: list[str] = []
        self.receive_counts: dict[str, int] = {}

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        records = event["Records"]
        with self.lock:
            if not self.late_hold_done:
                self.late_hold_done = True
                queues = SqsQueues(aws_client("sqs"), ordered_queue_url=self.queue_url)
                queues.hold([r["receiptHandle"] for r in records], 0)
                queues.hold([records[0]["receiptHandle"]], self.held_seconds)
                return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in records]}
            for record in records:
                self.arrived.append(record["body"])
                self.receive_counts[record["body"]] = int(record["attributes"]["ApproximateReceiveCount"])
        return {"batchItemFailures": []}


def test_a_group_whose_head_is_held_outside_any_receive_is_not_received_in_a_spin(
    aws_stack: LocalResources,
) -> None:
    # moto's own receive handed out the later message of a group whose head was held but no longer in
    # flight for it; given back and received again at once, it was received hundreds of times a second,
    # and at the queue's maxReceiveCount moved to the DLQ unattempted. The queue holds it back now.
    held_seconds = 3
    ordered_queues(aws_stack).send_ordered([OrderedTask(b, GroupPlacement("g", b)) for b in ("g-0", "g-1")])
    consumer = LateHoldConsumer(aws_stack.ordered_queue_url, held_seconds)
    # One slot: no other receive is waiting while the consumer moves the head out of flight.
    source = dataclasses.replace(
        SqsEventSource.from_template(aws_stack.template, ORDERED), maximum_concurrency=1
    )
    function = LocalFunction.from_template(aws_stack.template, ORDERED, handler=consumer)

    with SqsPoller(source, function, aws_client("sqs")):
        wait_until(lambda: len(consumer.arrived) == 2, what="both messages delivered", timeout=60)

    assert consumer.arrived == ["g-0", "g-1"]
    # One receive before the hold, none while the head was held, one that is invoked.
    assert consumer.receive_counts["g-1"] == 2, consumer.receive_counts

"""The local SQS event source mapping against moto: batches, window, concurrency, partial failures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.config import Config
from support.waiting import wait_until

from relay.local.aws_stack import LocalResources, local_client
from relay.local.lambda_runtime import LocalFunction
from relay.local.poller import SqsEventSource, SqsPoller
from relay.wiring import aws_client, aws_clients

pytestmark = pytest.mark.integration


class Consumer:
    """A test function: records what it got, optionally fails some records or raises."""

    def __init__(
        self,
        fail: Callable[[dict[str, Any], int], bool] = lambda record, seen: False,
        delay: float = 0.0,
        answer: Callable[[list[dict[str, Any]], int], Any] | None = None,
    ) -> None:
        self.fail = fail
        self.delay = delay
        self.answer = answer
        self.lock = threading.Lock()
        self.batches: list[list[dict[str, Any]]] = []
        self.seen: dict[str, int] = {}
        self.running = 0
        self.max_running = 0

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        records = event["Records"]
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.batches.append(records)
            call = len(self.batches)
            for record in records:
                self.seen[record["body"]] = self.seen.get(record["body"], 0) + 1
        try:
            time.sleep(self.delay)  # not a wait: the work an invocation takes
            if self.answer is not None:
                return self.answer(records, call)
            failed = [r for r in records if self.fail(r, self.seen[r["body"]])]
            return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in failed]}
        finally:
            with self.lock:
                self.running -= 1

    @property
    def bodies(self) -> list[str]:
        with self.lock:
            return [r["body"] for batch in self.batches for r in batch]


def send(queue_url: str, *bodies: str, **attributes: str) -> None:
    message_attributes = {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}
    for body in bodies:
        aws_client("sqs").send_message(
            QueueUrl=queue_url, MessageBody=body, MessageAttributes=message_attributes
        )


def in_flight(queue_url: str) -> int:
    """Messages received and not yet deleted (invisible)."""
    attrs = aws_client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesNotVisible"])


def queue_depth(queue_url: str) -> int:
    attrs = (
        aws_clients()
        .client("sqs")
        .get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    )
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def fast_queue(aws_stack: LocalResources) -> LocalResources:
    """The template's delivery queue with a 2 s visibility timeout and redrive after 2 receives."""
    redrive = json.loads(
        aws_clients()
        .client("sqs")
        .get_queue_attributes(QueueUrl=aws_stack.delivery_queue_url, AttributeNames=["RedrivePolicy"])[
            "Attributes"
        ]["RedrivePolicy"]
    )
    redrive["maxReceiveCount"] = 2
    aws_client("sqs").set_queue_attributes(
        QueueUrl=aws_stack.delivery_queue_url,
        Attributes={"VisibilityTimeout": "2", "RedrivePolicy": json.dumps(redrive)},
    )
    return aws_stack


@pytest.fixture
def make_poller(aws_stack: LocalResources) -> Iterator[Callable[..., SqsPoller]]:
    pollers: list[SqsPoller] = []

    def make(consumer: Consumer, **overrides: Any) -> SqsPoller:
        source = dataclasses.replace(SqsEventSource.from_template(aws_stack.template), **overrides)
        function = LocalFunction.from_template(aws_stack.template, "DispatcherFunction", handler=consumer)
        poller = SqsPoller(source, function, aws_client("sqs"))
        pollers.append(poller)
        poller.start()
        return poller

    yield make
    for poller in pollers:
        poller.stop()


def test_event_source_settings_come_from_the_template(aws_stack: LocalResources) -> None:
    # Given the dispatcher's SQS event in template.yaml
    template = aws_stack.template
    event = template.resolve(template.properties("DispatcherFunction")["Events"]["Deliveries"]["Properties"])

    # When the poller reads its configuration
    source = SqsEventSource.from_template(template)

    # Then it polls the created delivery queue with the template's settings
    assert source.queue_url == aws_stack.delivery_queue_url
    assert source.batch_size == int(event["BatchSize"])
    assert source.batching_window_seconds == float(event["MaximumBatchingWindowInSeconds"])
    assert source.maximum_concurrency == int(event["ScalingConfig"]["MaximumConcurrency"])
    assert source.report_batch_item_failures is True


def test_records_have_the_lambda_sqs_shape(aws_stack: LocalResources, make_poller: Any) -> None:
    # Given a message with a message attribute
    consumer = Consumer()
    send(aws_stack.delivery_queue_url, '{"hello": "world"}', **{"relay-attempts": "2"})

    # When the poller hands it to the function
    make_poller(consumer)
    wait_until(lambda: len(consumer.bodies) == 1, what="the message handed to the function")

    # Then the record is what Lambda's SQS event source sends
    record = consumer.batches[0][0]
    arn = (
        aws_clients()
        .client("sqs")
        .get_queue_attributes(QueueUrl=aws_stack.delivery_queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
    )
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == arn
    assert record["awsRegion"] == "us-east-1"
    assert record["body"] == '{"hello": "world"}'
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"SentTimestamp", "ApproximateFirstReceiveTimestamp"} <= set(record["attributes"])
    assert record["messageAttributes"]["relay-attempts"] == {
        "stringValue": "2",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    assert record["messageId"] and record["receiptHandle"]


def test_batches_never_exceed_the_batch_size(aws_stack: LocalResources, make_poller: Any) -> None:
    # Given ten messages already waiting
    bodies = [f"m{i}" for i in range(10)]
    send(aws_stack.delivery_queue_url, *bodies)
    consumer = Consumer()

    # When a poller with batch size 4 drains the queue
    make_poller(consumer, batch_size=4, batching_window_seconds=1, maximum_concurrency=2)
    wait_until(
        lambda: len(consumer.bodies) >= 10 and queue_depth(aws_stack.delivery_queue_url) == 0,
        what="all ten messages handled and deleted",
    )

    # Then each message was handled once, in batches of at most four, and a full batch was formed
    assert sorted(consumer.bodies) == sorted(bodies)
    sizes = [len(b) for b in consumer.batches]
    assert max(sizes) == 4
    assert all(size <= 4 for size in sizes)


def test_the_batching_window_gathers_messages_sent_apart(aws_stack: LocalResources, make_poller: Any) -> None:
    # Given a poller with a 3 s window and room for ten records
    consumer = Consumer()
    make_poller(consumer, batch_size=10, batching_window_seconds=3, maximum_concurrency=1)

    # When three messages arrive apart, each after the poller took the ones before (it is gathering)
    for count, body in enumerate(("w1", "w2", "w3"), start=1):
        send(aws_stack.delivery_queue_url, body)
        wait_until(lambda count=count: in_flight(aws_stack.delivery_queue_url) == count, what=f"{body} taken")
    wait_until(lambda: len(consumer.bodies) == 3, what="the batch handed to the function")

    # Then they reach the function as one batch
    assert [[r["body"] for r in batch] for batch in consumer.batches] == [["w1", "w2", "w3"]]


def test_a_window_longer_than_the_clients_read_timeout_still_hands_the_batch(
    aws_stack: LocalResources,
) -> None:
    # Given a poller whose SQS client gives up reading after 2 s, gathering for 5 s
    sqs = local_client("sqs", aws_stack.endpoint_url, Config(read_timeout=2, retries={"max_attempts": 1}))
    source = dataclasses.replace(
        SqsEventSource.from_template(aws_stack.template), batch_size=10, batching_window_seconds=5
    )
    consumer = Consumer()
    function = LocalFunction.from_template(aws_stack.template, "DispatcherFunction", handler=consumer)

    # When one message arrives and nothing follows it while the window is open
    with SqsPoller(source, function, sqs):
        send(aws_stack.delivery_queue_url, "alone")

        # Then no receive outwaits the client (its messages would stay hidden, invoked by no one)
        wait_until(lambda: consumer.bodies == ["alone"], what="the message handed to the function")


def test_a_client_too_impatient_to_long_poll_is_refused(aws_stack: LocalResources) -> None:
    sqs = local_client("sqs", aws_stack.endpoint_url, Config(read_timeout=1))
    function = LocalFunction.from_template(aws_stack.template, "DispatcherFunction", handler=Consumer())

    with pytest.raises(ValueError, match=r"read timeout \(1 s\) is too short to long-poll"):
        SqsPoller(SqsEventSource.from_template(aws_stack.template), function, sqs)


def test_maximum_concurrency_is_never_exceeded(aws_stack: LocalResources, make_poller: Any) -> None:
    # Given more single-record work than two slots can run at once
    bodies = [f"c{i}" for i in range(8)]
    send(aws_stack.delivery_queue_url, *bodies)
    consumer = Consumer(delay=0.3)

    # When a poller with maximum concurrency 2 runs it
    poller = make_poller(consumer, batch_size=1, batching_window_seconds=0, maximum_concurrency=2)
    wait_until(lambda: len(consumer.bodies) == 8, what="all eight messages handled")
    assert poller.wait_idle(10), "an invocation still running"

    # Then two invocations ran side by side, never more
    assert consumer.max_running == 2
    assert poller.stats().max_in_flight == 2
    assert sorted(consumer.bodies) == sorted(bodies)


def test_each_message_goes_to_one_invocation_even_with_every_slot_polling(
    aws_stack: LocalResources, make_poller: Any
) -> None:
    # Given five idle slots all waiting on the queue
    consumer = Consumer(delay=0.05)
    poller = make_poller(consumer, batch_size=2, batching_window_seconds=0, maximum_concurrency=5)

    # When twenty messages arrive
    bodies = [f"u{i}" for i in range(20)]
    send(aws_stack.delivery_queue_url, *bodies)
    wait_until(
        lambda: len(consumer.bodies) >= 20 and queue_depth(aws_stack.delivery_queue_url) == 0,
        what="all twenty messages handled and deleted",
    )
    assert poller.wait_idle(10), "an invocation still running"

    # Then each was handed to exactly one invocation, once
    assert sorted(consumer.bodies) == sorted(bodies)
    assert set(consumer.seen.values()) == {1}


def test_partial_batch_response_deletes_successes_and_redelivers_failures(
    fast_queue: LocalResources, make_poller: Any
) -> None:
    # Given a function that fails record "b" the first time it sees it
    send(fast_queue.delivery_queue_url, "a", "b", "c")
    consumer = Consumer(fail=lambda record, seen: record["body"] == "b" and seen == 1)

    # When the poller runs until the queue is empty
    poller = make_poller(consumer, batch_size=10, batching_window_seconds=0, maximum_concurrency=2)
    wait_until(
        lambda: consumer.seen.get("b") == 2 and queue_depth(fast_queue.delivery_queue_url) == 0,
        what="b redelivered once and the queue empty",
    )
    assert poller.wait_idle(10), "an invocation still running"

    # Then "a" and "c" were deleted after one delivery and "b" came back after its visibility timeout
    assert consumer.seen == {"a": 1, "b": 2, "c": 1}
    retried = [r for batch in consumer.batches for r in batch if r["body"] == "b"]
    assert [r["attributes"]["ApproximateReceiveCount"] for r in retried] == ["1", "2"]
    assert poller.stats().records_deleted == 3


@pytest.mark.parametrize(
    "first_answer",
    [
        pytest.param("raise", id="handler-exception"),
        pytest.param({"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}, id="unknown-id"),
        pytest.param({"batchItemFailures": "all"}, id="not-a-list"),
    ],
)
def test_an_error_or_invalid_answer_fails_the_whole_batch(
    fast_queue: LocalResources, make_poller: Any, first_answer: Any
) -> None:
    # Given a function whose first answer is an error or an invalid batch response
    def answer(records: list[dict[str, Any]], call: int) -> Any:
        if call == 1 and first_answer == "raise":
            raise RuntimeError("boom")
        return first_answer if call == 1 else {"batchItemFailures": []}

    send(fast_queue.delivery_queue_url, "x", "y")
    consumer = Consumer(answer=answer)

    # When the poller runs until the queue is empty
    poller = make_poller(consumer, batch_size=10, batching_window_seconds=0, maximum_concurrency=1)
    wait_until(
        lambda: queue_depth(fast_queue.delivery_queue_url) == 0 and len(consumer.bodies) >= 4,
        what="both records delivered twice and the queue empty",
    )
    assert poller.wait_idle(10), "an invocation still running"

    # Then both records came back for a second delivery (nothing was deleted after the first)
    assert consumer.seen == {"x": 2, "y": 2}
    assert poller.stats().failed_invocations == 1


def test_records_that_keep_failing_reach_the_dlq_by_the_redrive_policy(
    fast_queue: LocalResources, make_poller: Any
) -> None:
    # Given a function that always fails record "poison"
    send(fast_queue.delivery_queue_url, "ok", "poison")
    consumer = Consumer(fail=lambda record, seen: record["body"] == "poison")

    # When the poller runs past maxReceiveCount (2) receives of it
    make_poller(consumer, batch_size=10, batching_window_seconds=0, maximum_concurrency=2)
    sqs = aws_client("sqs")
    wait_until(lambda: queue_depth(fast_queue.dead_letter_queue_url) == 1, what="poison in the DLQ")

    # Then the DLQ holds "poison", received twice, and "ok" was delivered once and deleted
    dead = sqs.receive_message(QueueUrl=fast_queue.dead_letter_queue_url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in dead] == ["poison"]
    assert consumer.seen == {"ok": 1, "poison": 2}
    assert queue_depth(fast_queue.delivery_queue_url) == 0


def test_stop_waits_for_invocations_in_flight(aws_stack: LocalResources, make_poller: Any) -> None:
    # Given an invocation that is running
    send(aws_stack.delivery_queue_url, "slow")
    consumer = Consumer(delay=1.0)
    poller = make_poller(consumer, batch_size=1, batching_window_seconds=0, maximum_concurrency=2)
    wait_until(lambda: consumer.running == 1, what="the invocation running")

    # When the poller is stopped
    poller.stop()

    # Then the invocation finished, its record was deleted, and no poller thread is left
    assert consumer.running == 0
    assert poller.stats().records_deleted == 1
    assert queue_depth(aws_stack.delivery_queue_url) == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("sqs-poller")]

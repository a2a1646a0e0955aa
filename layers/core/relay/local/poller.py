"""A local SQS event source mapping: reads the queue and invokes a function the way Lambda does.

Configured from the function's ``SQS`` event in template.yaml (``Queue``, ``BatchSize``,
``MaximumBatchingWindowInSeconds``, ``ScalingConfig.MaximumConcurrency``, ``FunctionResponseTypes``):

- at most ``MaximumConcurrency`` invocations run at once: one worker thread per slot, each gathering
  its own batch (long-poll ``ReceiveMessage``), invoking, then deleting, so a message is only taken
  off the queue when a slot is free to run it;
- a batch closes when it holds ``BatchSize`` records or the batching window (counted from its first
  record) has passed; with a window of 0 it is invoked with whatever the first receive returned, as
  soon as a message is there (the long poll returns the moment one arrives);
- with ``ReportBatchItemFailures`` the listed records stay on the queue and every other one is
  deleted (``DeleteMessageBatch``); a handler error, or an answer that is not a valid
  ``batchItemFailures`` list, fails the whole batch, as in AWS;
- records left on the queue come back after their visibility timeout; moving them to the DLQ after
  ``maxReceiveCount`` receives is the queue's redrive policy (moto applies it on receive);
- on a FIFO queue, a message group's messages reach the function in order, never past an earlier one
  in flight: the queue's own doing, as in SQS (the moto server's FIFO receive is put right for that,
  relay.local.moto_fifo).

``stop()`` stops receiving, waits for the invocations in flight, and hands any records received
but not yet invoked straight back to the queue. ``add_receive_observer`` lets a measurement see when
each message was received (the demo's latency breakdown).
"""

from __future__ import annotations

import base64
import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.adapters import sqs as sqs_adapter
from relay.local.lambda_runtime import LocalFunction
from relay.local.log import log
from relay.local.template import Template

MAX_RECEIVE = 10  # ReceiveMessage's MaxNumberOfMessages ceiling
# Told the messages one ReceiveMessage returned and when (time.time()).
ReceiveObserver = Callable[[Sequence[Mapping[str, Any]], float], None]
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"


@dataclass(frozen=True)
class SqsEventSource:
    """The settings of one ``SQS`` event of a function."""

    queue_url: str
    queue_arn: str
    batch_size: int = 10
    batching_window_seconds: float = 0.0
    maximum_concurrency: int = 1000
    report_batch_item_failures: bool = False
    region: str = "us-east-1"

    @classmethod
    def from_template(
        cls, template: Template, logical_id: str = "DispatcherFunction", event_name: str | None = None
    ) -> SqsEventSource:
        """Read the function's SQS event; the queue must already exist (``create_resources``)."""
        events = template.properties(logical_id).get("Events", {})
        sqs_events = {n: e for n, e in events.items() if e.get("Type") == "SQS"}
        if not sqs_events:
            raise ValueError(f"{logical_id} has no SQS event in the template")
        name = event_name or next(iter(sqs_events))
        props: dict[str, Any] = template.resolve(sqs_events[name]["Properties"])
        queue_arn = str(props["Queue"])
        queue_id = next(
            (lid for lid, res in template.physical.items() if res.attributes.get("Arn") == queue_arn), None
        )
        if queue_id is None:
            raise ValueError(f"{logical_id}.{name}: queue {queue_arn} was not created locally")
        return cls(
            queue_url=template.physical[queue_id].ref,
            queue_arn=queue_arn,
            batch_size=int(props.get("BatchSize", 10)),
            batching_window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            maximum_concurrency=int(props.get("ScalingConfig", {}).get("MaximumConcurrency", 1000)),
            report_batch_item_failures=REPORT_BATCH_ITEM_FAILURES in props.get("FunctionResponseTypes", []),
            region=template.pseudo["AWS::Region"],
        )


@dataclass
class PollerStats:
    """Counters the demo and tests read; ``in_flight`` is invocations running right now."""

    invocations: int = 0
    failed_invocations: int = 0  # the whole batch failed (error or invalid answer)
    records: int = 0  # records handed to the function
    records_deleted: int = 0
    records_failed: int = 0  # records left on the queue to come back
    in_flight: int = 0
    max_in_flight: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    invocation_ms: float = 0.0  # the invocations' durations, summed (what Lambda bills)


class SqsPoller:
    """``SqsPoller(source, function, sqs_client)``; ``start()``/``stop()`` or a context manager."""

    def __init__(
        self,
        source: SqsEventSource,
        function: LocalFunction,
        sqs: Any,
        *,
        poll_wait_seconds: int = 1,
    ) -> None:
        self.source = source
        self.function = function
        self.sqs = sqs
        # A long poll must answer inside the client's read timeout: one that times out has still taken
        # its messages, and they stay hidden until their visibility timeout, invoked by no one.
        self.longest_wait_seconds = longest_wait_seconds(sqs)
        # Long-poll wait while a batch is empty; short so that stop() is prompt.
        self.poll_wait_seconds = max(1, min(self.longest_wait_seconds, poll_wait_seconds))
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._lock = threading.Condition()
        self._receive_lock = threading.Lock()
        self._stats = PollerStats()
        self._workers: list[threading.Thread] = []
        self._observers: list[ReceiveObserver] = []

    def add_receive_observer(self, observer: ReceiveObserver) -> None:
        self._observers.append(observer)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        for slot in range(self.source.maximum_concurrency):
            worker = threading.Thread(target=self._run, name=f"sqs-poller-{slot}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop_receiving(self) -> None:
        """Receive no more, without waiting: ``stop()`` then waits for what is in flight."""
        self._stopping.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop receiving and wait for the invocations in flight to finish."""
        self.stop_receiving()
        wait = timeout if timeout is not None else self.function.spec.timeout_seconds + 30
        deadline = time.monotonic() + wait
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [w.name for w in self._workers if w.is_alive()]
        self._workers = []
        if alive:
            raise RuntimeError(f"poller threads still running after {wait:.0f} s: {alive}")

    def pause(self, timeout: float = 60.0) -> None:
        """Stop receiving until ``resume()``, and wait for the invocations in flight. The slots' threads
        stay, only idle; the function's warm workers stay warm either way (they belong to the function,
        not to the thread that first needed one: relay.local.function_worker)."""
        self._paused.set()
        if not self.wait_idle(timeout):
            raise RuntimeError(f"invocations still running after {timeout:.0f} s")

    def resume(self) -> None:
        self._paused.clear()

    def __enter__(self) -> SqsPoller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- observation -----------------------------------------------------------------------------
    def stats(self) -> PollerStats:
        with self._lock:
            return PollerStats(**{**self._stats.__dict__, "batch_sizes": list(self._stats.batch_sizes)})

    def wait_idle(self, timeout: float) -> bool:
        """Block until no invocation is running (True) or ``timeout`` passes (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._stats.in_flight == 0, timeout=timeout)

    # --- the worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._paused.is_set():
                self._stopping.wait(0.05)  # paused: look again shortly
                continue
            try:
                gather_started = time.monotonic()
                batch = self._gather()
                if batch:
                    log.debug("batch of %d gathered in %.0f ms", len(batch), _ms_since(gather_started))
                if batch and (self._stopping.is_set() or self._paused.is_set()):
                    self._release(batch)
                elif batch:
                    self._invoke(batch)
            except Exception:  # noqa: BLE001 - keep polling, as the managed poller does
                log.exception("SQS call failed; polling again shortly")
                self._stopping.wait(1.0)

    def _gather(self) -> list[dict[str, Any]]:
        """Up to BatchSize messages: wait for the first, then fill until the window closes."""
        batch = self._receive(min(MAX_RECEIVE, self.source.batch_size), self.poll_wait_seconds)
        window_ends = time.monotonic() + self.source.batching_window_seconds
        while batch and len(batch) < self.source.batch_size and not self._stopping.is_set():
            remaining = window_ends - time.monotonic()
            if remaining <= 0:
                break
            want = min(MAX_RECEIVE, self.source.batch_size - len(batch))
            if remaining < 1:
                # ReceiveMessage waits whole seconds: sleep out the fraction, then take what is there
                # (unless another slot is polling right now: then what arrives is for that one).
                self._stopping.wait(remaining)
                batch += self._receive(want, 0, turn_timeout=0)
                break
            wait = min(self.longest_wait_seconds, math.floor(remaining))
            batch += self._receive(want, wait, turn_timeout=remaining)
        return batch

    def _receive(
        self, count: int, wait_seconds: int, *, turn_timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """One ReceiveMessage; ``turn_timeout``: how long to wait for another slot's call to end.

        One call at a time: moto scans and marks messages without a lock, so two calls at once can
        both take the same message, far more often than SQS's rare at-least-once repeats.
        """
        if not self._receive_lock.acquire(timeout=-1 if turn_timeout is None else max(0.0, turn_timeout)):
            return []
        try:
            if self._stopping.is_set():
                return []
            response = self.sqs.receive_message(
                QueueUrl=self.source.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait_seconds,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
        finally:
            self._receive_lock.release()
        messages: list[dict[str, Any]] = response.get("Messages", [])
        if messages:
            received_at = time.time()
            for observer in self._observers:
                observer(messages, received_at)
        return messages

    def _invoke(self, batch: list[dict[str, Any]]) -> None:
        records = [lambda_record(m, self.source.queue_arn, self.source.region) for m in batch]
        with self._lock:
            self._stats.in_flight += 1
            self._stats.max_in_flight = max(self._stats.max_in_flight, self._stats.in_flight)
            self._stats.invocations += 1
            self._stats.records += len(records)
            self._stats.batch_sizes.append(len(records))
        whole_batch_failed, deleted, duration_ms = True, 0, 0.0
        try:
            invocation = self.function.invoke({"Records": records})
            duration_ms = invocation.duration_ms
            log.debug("invocation of %d records took %.0f ms", len(records), invocation.duration_ms)
            failed_ids = None if invocation.error else self._failed_ids(invocation.result, records)
            whole_batch_failed = failed_ids is None
            keep = {r["messageId"] for r in records} if failed_ids is None else failed_ids
            deleted = len(self._delete([m for m in batch if m["MessageId"] not in keep]))
        finally:
            with self._lock:
                self._stats.failed_invocations += int(whole_batch_failed)
                self._stats.records_deleted += deleted
                self._stats.records_failed += len(batch) - deleted
                self._stats.invocation_ms += duration_ms
                self._stats.in_flight -= 1
                self._lock.notify_all()

    def _failed_ids(self, result: Any, records: list[dict[str, Any]]) -> set[str] | None:
        """The records to leave on the queue; None means the whole batch failed."""
        if not self.source.report_batch_item_failures or result is None:
            return set()
        if not isinstance(result, Mapping):
            log.error("invalid batch response (not an object): the whole batch fails")
            return None
        failures = result.get("batchItemFailures")
        if failures is None:
            return set()
        if not isinstance(failures, list):
            log.error("invalid batchItemFailures (not a list): the whole batch fails")
            return None
        known = {r["messageId"] for r in records}
        failed: set[str] = set()
        for item in failures:
            identifier = item.get("itemIdentifier") if isinstance(item, Mapping) else None
            if not isinstance(identifier, str) or identifier not in known:
                log.error("invalid batchItemFailures entry: the whole batch fails")
                return None
            failed.add(identifier)
        return failed

    def _delete(self, messages: list[dict[str, Any]]) -> set[str]:
        """Delete ``messages``; the ids of those deleted."""
        deleted: set[str] = set()
        for start in range(0, len(messages), MAX_RECEIVE):
            chunk = messages[start : start + MAX_RECEIVE]
            response = self.sqs.delete_message_batch(
                QueueUrl=self.source.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
            deleted.update(chunk[int(entry["Id"])]["MessageId"] for entry in response.get("Successful", []))
            for failure in response.get("Failed", []):
                log.error("DeleteMessageBatch entry failed: %s", failure.get("Code"))
        return deleted

    def _release(self, messages: list[dict[str, Any]]) -> None:
        """Make messages received but not invoked visible again at once (stopping or paused)."""
        for start in range(0, len(messages), MAX_RECEIVE):
            chunk = messages[start : start + MAX_RECEIVE]
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.source.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)
                ],
            )


def longest_wait_seconds(sqs: Any) -> int:
    """The adapter's rule (relay.adapters.sqs.longest_wait_seconds), and at least a second: a poller
    that could not long-poll would spin on empty answers."""
    wait = sqs_adapter.longest_wait_seconds(sqs)
    if wait < 1:
        read_timeout = float(sqs.meta.config.read_timeout)
        raise ValueError(
            f"the SQS client's read timeout ({read_timeout:g} s) is too short to long-poll (2 s or more)"
        )
    return wait


def lambda_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """A ReceiveMessage message as Lambda hands it to the function (one ``Records`` entry)."""
    attributes = dict(message.get("Attributes", {}))
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": {
            name: _lambda_message_attribute(value)
            for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),  # noqa: S324
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    # Lambda's shape: camelCase keys, list fields always present, binary values base64 text.
    converted: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [_b64(v) for v in value.get("BinaryListValues", [])],
        "dataType": value["DataType"],
    }
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        converted["binaryValue"] = _b64(value["BinaryValue"])
    return converted


def _b64(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else base64.b64encode(raw).decode()


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000

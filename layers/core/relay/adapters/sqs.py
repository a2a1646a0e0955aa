"""The one SQS adapter: the delivery queues (standard fast and slow lane, ordered FIFO) and their
dead-letter queues.

- the intake's task sends (``send``): SendMessageBatch, all or nothing as seen by the caller. Entries
  SQS refuses in a batch answer are sent again (a few times, with a short pause); if some still fail,
  or SQS cannot be reached, ``DependencyUnavailable`` (the intake answers 503 and the sender retries;
  a repeated send is harmless, receivers deduplicate on the deterministic ``deliveryId``);
- the dispatcher's operations: ``schedule_retry`` (ChangeMessageVisibility: the record comes back
  after its backoff), ``defer`` (re-send with DelaySeconds while the breaker is open, attempts
  unchanged, deferrals + 1), ``to_slow_lane`` (re-send to the slow lane's queue, attempts unchanged),
  ``dead_letter`` (to the DLQ with attributes saying why; the caller then reports the original done,
  so SQS deletes it);
- the first hop's (docs/intake.md, "The first hop"): ``send_first_hop`` (the intake's tasks for
  unordered targets on the FIFO first hop, each its own message group, deduplicated on the delivery
  id); a dispatcher reading the first hop re-sends its deferrals to ``requeue_queue_url``;
- the ordered path's (docs/dispatcher.md, "Ordering"): ``send_ordered`` (the intake's tasks for ordered
  targets, each in its message group, deduplicated on the delivery id), ``hold`` (one group's
  received messages shown again together after a delay: ChangeMessageVisibilityBatch, never a
  re-send) and ``dead_letter_in_order`` (to the FIFO DLQ in the same message group);
- ``relay dlq``'s operations, on the queue URLs it names: receive without deleting, batch send and
  delete, release, and the move task.

Every boto error becomes ``DependencyUnavailable`` (or ``MoveTaskUnavailable``) carrying the error
code only: SQS error messages can quote request content, and nothing here may echo a message body.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.aws_errors import AWS_ERRORS
from relay.errors import ConfigurationError, DependencyUnavailable, MoveTaskUnavailable
from relay.models.delivery import (
    ATTR_ATTEMPTS,
    ATTR_DEFERRALS,
    ATTR_DLQ_REASON,
    ATTR_INTEGRATION_ID,
    ATTR_LAST_ERROR,
    ATTR_LAST_STATUS,
    ATTR_TARGET_ID,
    DEAD_LETTER_ATTRIBUTES,
    DeadLetterNote,
)
from relay.models.queue import (
    MAX_BATCH_ENTRIES,
    GroupPlacement,
    MoveTaskStatus,
    OrderedTask,
    OutgoingMessage,
    ReceivedMessage,
    Requeue,
    plan_batches,
)

MAX_ATTRIBUTE_TEXT = 256
# Error codes that mean "this endpoint does not offer the move task" rather than "it failed".
# moto answers HTTP 500 with an HTML page (botocore reports the code "500"): NotImplementedError.
_MOVE_TASK_MISSING = frozenset(
    {"500", "NotImplemented", "NotImplementedError", "InvalidAction", "UnknownOperationException"}
)


class SqsQueues:
    """The delivery queue, the DLQ and (for the fast lane's dispatcher) the slow lane's queue. ``sqs``
    is a boto3 SQS client; ``sleep`` paces the task-send retries (tests pass one that does not wait)."""

    def __init__(
        self,
        sqs: Any,
        *,
        delivery_queue_url: str | None = None,
        dead_letter_queue_url: str | None = None,
        slow_queue_url: str | None = None,
        ordered_queue_url: str | None = None,
        ordered_dead_letter_queue_url: str | None = None,
        first_hop_queue_url: str | None = None,
        requeue_queue_url: str | None = None,
        attempts: int = 3,
        backoff_seconds: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._sqs = sqs
        self._delivery_queue_url = delivery_queue_url
        self._dead_letter_queue_url = dead_letter_queue_url
        self._slow_queue_url = slow_queue_url
        self._ordered_queue_url = ordered_queue_url
        self._ordered_dead_letter_queue_url = ordered_dead_letter_queue_url
        self._first_hop_queue_url = first_hop_queue_url
        self._requeue_queue_url = requeue_queue_url
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._sleep = sleep

    # --- the intake's task sends --------------------------------------------------------------------
    def send(self, bodies: Sequence[str]) -> None:
        """Queue every body (one message each) on the delivery queue, or raise DependencyUnavailable."""
        queue_url = self._delivery_queue()
        messages = [OutgoingMessage(str(i), body) for i, body in enumerate(bodies)]
        for batch in plan_batches(messages):
            self._send_until_accepted(queue_url, batch)

    def send_ordered(self, tasks: Sequence[OrderedTask]) -> None:
        """Queue every task on the ordered queue in its message group, or raise DependencyUnavailable.
        One event gives each group at most one task, so a batch never holds two of one group and a
        refused entry sent again cannot overtake a later one of its group."""
        self._send_placed(_required(self._ordered_queue_url, "ORDERED_QUEUE_URL"), tasks)

    def send_first_hop(self, tasks: Sequence[OrderedTask]) -> None:
        """Queue every task on the FIFO first hop, each in its own message group, deduplicated on its
        delivery id, or raise DependencyUnavailable. A send repeated after SQS applied it (an answer
        lost on the way back, a retried webhook) is dropped by SQS within its 5-minute window."""
        self._send_placed(_required(self._first_hop_queue_url, "FIRST_HOP_QUEUE_URL"), tasks)

    def _send_placed(self, queue_url: str, tasks: Sequence[OrderedTask]) -> None:
        messages = [OutgoingMessage(str(i), t.body, placement=t.placement) for i, t in enumerate(tasks)]
        for batch in plan_batches(messages):
            self._send_until_accepted(queue_url, batch)

    def _send_until_accepted(self, queue_url: str, batch: list[OutgoingMessage]) -> None:
        pending, last_error = batch, "no attempt made"
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._backoff * (2 ** (attempt - 1)))
            try:
                answer = self._sqs.send_message_batch(QueueUrl=queue_url, Entries=_entries(pending))
            except AWS_ERRORS as exc:
                last_error = type(exc).__name__
                continue
            failed = answer.get("Failed", [])
            refused = {str(entry["Id"]) for entry in failed}
            pending = [m for m in pending if m.entry_id in refused]
            if not pending:
                return
            last_error = "per-entry failures: " + ", ".join(sorted({str(e.get("Code", "?")) for e in failed}))
        raise DependencyUnavailable(f"delivery queue unavailable ({last_error})")

    # --- the dispatcher's operations ------------------------------------------------------------------
    def schedule_retry(self, receipt_handle: str, delay_seconds: int) -> None:
        self._call(
            "change_message_visibility",
            QueueUrl=self._delivery_queue(),
            ReceiptHandle=receipt_handle,
            VisibilityTimeout=delay_seconds,
        )

    def defer(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        *,
        attempts: int,
        deferrals: int,
        delay_seconds: int,
    ) -> None:
        # A first-hop dispatcher's own queue is FIFO, which takes no per-message delay: its deferrals
        # go to the standard queue (REQUEUE_QUEUE_URL).
        self._call(
            "send_message",
            QueueUrl=self._requeue_queue_url or self._delivery_queue(),
            MessageBody=body,
            DelaySeconds=delay_seconds,
            MessageAttributes=requeued_attributes(message_attributes, attempts, deferrals),
        )

    def to_slow_lane(self, messages: Sequence[Requeue]) -> set[int]:
        if not self._slow_queue_url:
            raise ConfigurationError("setting SLOW_DELIVERY_QUEUE_URL is required here but not set")
        outgoing = [
            OutgoingMessage(str(i), m.body, requeued_attributes(m.attributes, m.attempts, m.deferrals))
            for i, m in enumerate(messages)
        ]
        accepted: set[int] = set()
        for batch in plan_batches(outgoing):
            try:
                accepted |= {int(entry_id) for entry_id in self.send_batch(self._slow_queue_url, batch)}
            except DependencyUnavailable:
                continue  # these stay with the caller, who delivers them itself
        return accepted

    def dead_letter(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        note: DeadLetterNote,
    ) -> None:
        self._call(
            "send_message",
            QueueUrl=self._dead_letter_queue(),
            MessageBody=body,
            MessageAttributes=_dead_letter_attributes(message_attributes, note),
        )

    # --- the ordered dispatcher's operations ------------------------------------------------------------
    def hold(self, receipt_handles: Sequence[str], delay_seconds: int) -> None:
        self._on_ordered("change_message_visibility_batch", receipt_handles, VisibilityTimeout=delay_seconds)

    def delete(self, receipt_handles: Sequence[str]) -> None:
        self._on_ordered("delete_message_batch", receipt_handles)

    def _on_ordered(self, operation: str, receipt_handles: Sequence[str], **each: Any) -> None:
        """``operation`` on received messages of the ordered queue, ten to a call (``each``: fields of
        every entry); raises DependencyUnavailable when SQS refused any of them."""
        queue_url = _required(self._ordered_queue_url, "ORDERED_QUEUE_URL")
        for start in range(0, len(receipt_handles), MAX_BATCH_ENTRIES):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, **each}
                for i, handle in enumerate(receipt_handles[start : start + MAX_BATCH_ENTRIES])
            ]
            answer = self._call(operation, QueueUrl=queue_url, Entries=entries)
            refused = ", ".join(sorted({str(entry.get("Code", "?")) for entry in answer.get("Failed", [])}))
            if refused:
                raise DependencyUnavailable(f"SQS {operation} refused ({refused})")

    def dead_letter_in_order(
        self,
        placement: GroupPlacement,
        body: str,
        message_attributes: Mapping[str, Any],
        note: DeadLetterNote,
    ) -> None:
        self._call(
            "send_message",
            QueueUrl=_required(self._ordered_dead_letter_queue_url, "ORDERED_DEAD_LETTER_QUEUE_URL"),
            MessageBody=body,
            MessageAttributes=_dead_letter_attributes(message_attributes, note),
            MessageGroupId=placement.group_id,
            MessageDeduplicationId=placement.deduplication_id,
        )

    # --- relay dlq -------------------------------------------------------------------------------------
    def queue_arn(self, queue_url: str) -> str:
        answer = self._call("get_queue_attributes", QueueUrl=queue_url, AttributeNames=["QueueArn"])
        return str(answer["Attributes"]["QueueArn"])

    def approximate_depth(self, queue_url: str) -> int:
        """Visible plus in-flight messages (both are still in the queue)."""
        answer = self._call(
            "get_queue_attributes",
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        attributes = answer.get("Attributes", {})
        return int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
            attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
        )

    def receive(self, queue_url: str, *, visibility_seconds: int, wait_seconds: int) -> list[ReceivedMessage]:
        """Up to 10 messages, waiting at most ``wait_seconds`` (less where the client's read timeout is
        too short to outlast that wait: ``longest_wait_seconds``)."""
        answer = self._call(
            "receive_message",
            QueueUrl=queue_url,
            MaxNumberOfMessages=MAX_BATCH_ENTRIES,
            VisibilityTimeout=visibility_seconds,
            WaitTimeSeconds=min(wait_seconds, longest_wait_seconds(self._sqs)),
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp", "MessageGroupId"],
        )
        received = []
        for message in answer.get("Messages", []):
            system = message.get("Attributes", {})
            sent = system.get("SentTimestamp")
            received.append(
                ReceivedMessage(
                    message_id=str(message["MessageId"]),
                    receipt_handle=str(message["ReceiptHandle"]),
                    body=str(message.get("Body", "")),
                    attributes=message.get("MessageAttributes") or {},
                    sent_timestamp_ms=int(sent) if sent is not None else None,
                    group_id=system.get("MessageGroupId"),
                )
            )
        return received

    def send_batch(self, queue_url: str, messages: Sequence[OutgoingMessage]) -> set[str]:
        """Send one batch; the entry ids SQS accepted (raises if the call itself failed)."""
        answer = self._call("send_message_batch", QueueUrl=queue_url, Entries=_entries(messages))
        return {str(entry["Id"]) for entry in answer.get("Successful", [])}

    def delete_batch(self, queue_url: str, receipt_handles: Mapping[str, str]) -> set[str]:
        """Delete by {entry id: receipt handle}; the entry ids SQS deleted."""
        if not receipt_handles:
            return set()
        entries = [{"Id": entry_id, "ReceiptHandle": handle} for entry_id, handle in receipt_handles.items()]
        answer = self._call("delete_message_batch", QueueUrl=queue_url, Entries=entries)
        return {str(entry["Id"]) for entry in answer.get("Successful", [])}

    def release(self, queue_url: str, receipt_handles: Sequence[str]) -> None:
        """Make received messages visible again at once (best effort: they return anyway on timeout)."""
        for start in range(0, len(receipt_handles), MAX_BATCH_ENTRIES):
            chunk = receipt_handles[start : start + MAX_BATCH_ENTRIES]
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for i, handle in enumerate(chunk)
            ]
            try:
                self._call("change_message_visibility_batch", QueueUrl=queue_url, Entries=entries)
            except DependencyUnavailable:
                pass  # the visibility timeout brings them back anyway

    def start_move_task(self, source_arn: str, destination_arn: str, max_per_second: int | None) -> str:
        kwargs: dict[str, Any] = {"SourceArn": source_arn, "DestinationArn": destination_arn}
        if max_per_second:
            kwargs["MaxNumberOfMessagesPerSecond"] = max_per_second
        try:
            answer = self._sqs.start_message_move_task(**kwargs)
        except AWS_ERRORS as exc:
            code = _code(exc)
            if code in _MOVE_TASK_MISSING:
                raise MoveTaskUnavailable(f"StartMessageMoveTask is not available here ({code})") from None
            raise DependencyUnavailable(f"SQS start_message_move_task failed ({code})") from None
        return str(answer.get("TaskHandle", ""))

    def latest_move_task(self, source_arn: str) -> MoveTaskStatus | None:
        answer = self._call("list_message_move_tasks", SourceArn=source_arn, MaxResults=1)
        results = answer.get("Results", [])
        if not results:
            return None
        task = results[0]
        to_move = task.get("ApproximateNumberOfMessagesToMove")
        return MoveTaskStatus(
            status=str(task.get("Status", "UNKNOWN")),
            moved=int(task.get("ApproximateNumberOfMessagesMoved", 0)),
            to_move=int(to_move) if to_move is not None else None,
            failure_reason=task.get("FailureReason"),
            task_handle=task.get("TaskHandle"),
        )

    # --- one wrapper around every call --------------------------------------------------------------
    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._sqs, operation)(**kwargs)
        except AWS_ERRORS as exc:
            code = _code(exc)
            if code in _NO_SUCH_QUEUE:  # a setting or an argument naming the wrong queue, not an outage
                raise DependencyUnavailable(
                    f"SQS {operation} failed: no queue {kwargs.get('QueueUrl', '')} ({code})"
                ) from None
            raise DependencyUnavailable(f"SQS {operation} failed ({code})") from None

    def _delivery_queue(self) -> str:
        return _required(self._delivery_queue_url, "DELIVERY_QUEUE_URL")

    def _dead_letter_queue(self) -> str:
        return _required(self._dead_letter_queue_url, "DEAD_LETTER_QUEUE_URL")


def _required(queue_url: str | None, setting: str) -> str:
    if not queue_url:
        raise ConfigurationError(f"setting {setting} is required here but not set")
    return queue_url


def _dead_letter_attributes(
    message_attributes: Mapping[str, Any], note: DeadLetterNote
) -> dict[str, dict[str, str]]:
    """The carried attributes plus the dead-letter notes saying why."""
    attributes = carried_attributes(message_attributes)
    attributes[ATTR_DLQ_REASON] = _string(note.reason.value)
    attributes[ATTR_ATTEMPTS] = _number(note.attempts)
    if note.last_status is not None:
        attributes[ATTR_LAST_STATUS] = _number(note.last_status)
    if note.last_error:
        attributes[ATTR_LAST_ERROR] = _string(note.last_error)
    if note.target_id:
        attributes[ATTR_TARGET_ID] = _string(note.target_id)
    if note.integration_id:
        attributes[ATTR_INTEGRATION_ID] = _string(note.integration_id)
    return attributes


def requeued_attributes(
    message_attributes: Mapping[str, Any], attempts: int, deferrals: int
) -> dict[str, dict[str, str]]:
    """A re-sent copy's attributes: the record's own, the attempts and deferrals so far, and no
    dead-letter notes (a redriven message's notes describe an earlier run)."""
    attributes = {
        name: value
        for name, value in carried_attributes(message_attributes).items()
        if name not in DEAD_LETTER_ATTRIBUTES
    }
    attributes[ATTR_ATTEMPTS] = _number(attempts)
    attributes[ATTR_DEFERRALS] = _number(deferrals)
    return attributes


def carried_attributes(message_attributes: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """A Lambda event record's String/Number attributes in SendMessage form (binary ones dropped)."""
    carried: dict[str, dict[str, str]] = {}
    for name, raw in message_attributes.items():
        if not isinstance(raw, Mapping):
            continue
        data_type = str(raw.get("dataType", raw.get("DataType", "String")))
        value = raw.get("stringValue", raw.get("StringValue"))
        if value is not None and not data_type.startswith("Binary"):
            carried[name] = {"DataType": data_type, "StringValue": str(value)}
    return carried


def _entries(messages: Sequence[OutgoingMessage]) -> list[dict[str, Any]]:
    """SendMessageBatch entries (receive answers' attributes also carry empty list fields: dropped)."""
    return [
        {
            "Id": m.entry_id,
            "MessageBody": m.body,
            **(
                {
                    "MessageGroupId": m.placement.group_id,
                    "MessageDeduplicationId": m.placement.deduplication_id,
                }
                if m.placement
                else {}
            ),
            **(
                {"MessageAttributes": {k: _clean_attribute(v) for k, v in m.attributes.items()}}
                if m.attributes
                else {}
            ),
        }
        for m in messages
    ]


def _clean_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}


def _number(value: int) -> dict[str, str]:
    return {"DataType": "Number", "StringValue": str(value)}


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value[:MAX_ATTRIBUTE_TEXT] or "-"}


# The codes SQS answers a call on a queue that does not exist with (query and JSON protocols).
_NO_SUCH_QUEUE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def longest_wait_seconds(sqs: Any) -> int:
    """The longest ReceiveMessage wait (whole seconds, at most SQS's 20) that leaves ``sqs``'s client a
    second of its read timeout for the answer: a longer one would end in a read timeout and its retries,
    not an empty answer, when the queue stays empty (0 for a client with 1 s or less: no long poll)."""
    return max(0, min(20, math.floor(float(sqs.meta.config.read_timeout)) - 1))


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__

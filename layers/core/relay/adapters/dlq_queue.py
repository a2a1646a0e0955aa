"""The SQS calls behind ``relay dlq``: receive without deleting, re-send, delete, and the move task.

Every call maps boto errors to ``DependencyUnavailable`` (or ``MoveTaskUnavailable``) with the error
code only: SQS error messages can quote request content, and nothing here may echo a message body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from relay.adapters.aws import client
from relay.errors import DependencyUnavailable, MoveTaskUnavailable
from relay.models.queue import MAX_BATCH_ENTRIES, MoveTaskStatus, OutgoingMessage, ReceivedMessage

# Error codes that mean "this endpoint does not offer the move task" rather than "it failed".
# moto answers HTTP 500 with an HTML page (botocore reports the code "500"): NotImplementedError.
_UNAVAILABLE_CODES = frozenset(
    {"500", "NotImplemented", "NotImplementedError", "InvalidAction", "UnknownOperationException"}
)


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def _clean_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    """An attribute as SendMessage accepts it (receive answers also carry empty list fields)."""
    return {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}


class SqsDlqQueues:
    """SQS operations on the dead-letter and delivery queues. ``sqs`` is injectable (tests)."""

    def __init__(self, *, sqs: Any = None) -> None:
        self._sqs = sqs

    @property
    def _client(self) -> Any:
        return self._sqs or client("sqs")

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailable(f"SQS {operation} failed ({_code(exc)})") from None

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
        answer = self._call(
            "receive_message",
            QueueUrl=queue_url,
            MaxNumberOfMessages=MAX_BATCH_ENTRIES,
            VisibilityTimeout=visibility_seconds,
            WaitTimeSeconds=wait_seconds,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp"],
        )
        received = []
        for message in answer.get("Messages", []):
            sent = message.get("Attributes", {}).get("SentTimestamp")
            received.append(
                ReceivedMessage(
                    message_id=str(message["MessageId"]),
                    receipt_handle=str(message["ReceiptHandle"]),
                    body=str(message.get("Body", "")),
                    attributes=message.get("MessageAttributes") or {},
                    sent_timestamp_ms=int(sent) if sent is not None else None,
                )
            )
        return received

    def send_batch(self, queue_url: str, messages: Sequence[OutgoingMessage]) -> set[str]:
        """Send one batch; the entry ids SQS accepted (raises if the call itself failed)."""
        entries = [
            {
                "Id": m.entry_id,
                "MessageBody": m.body,
                **(
                    {"MessageAttributes": {k: _clean_attribute(v) for k, v in m.attributes.items()}}
                    if m.attributes
                    else {}
                ),
            }
            for m in messages
        ]
        answer = self._call("send_message_batch", QueueUrl=queue_url, Entries=entries)
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
                self._client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
            except (ClientError, BotoCoreError):
                pass  # the visibility timeout brings them back anyway

    def start_move_task(self, source_arn: str, destination_arn: str, max_per_second: int | None) -> str:
        kwargs: dict[str, Any] = {"SourceArn": source_arn, "DestinationArn": destination_arn}
        if max_per_second:
            kwargs["MaxNumberOfMessagesPerSecond"] = max_per_second
        try:
            answer = self._client.start_message_move_task(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            code = _code(exc)
            if code in _UNAVAILABLE_CODES:
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

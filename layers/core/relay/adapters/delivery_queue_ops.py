"""What the dispatcher does to delivery-queue messages besides reporting them failed.

- ``schedule_retry``: ChangeMessageVisibility, so a failed record comes back after its backoff;
- ``defer``: re-send the body to the delivery queue with DelaySeconds (breaker open), carrying the
  attempt count unchanged and the deferral count + 1, so deferrals never use up attempts;
- ``dead_letter``: send the body to the DLQ with attributes saying why (reason, last status and
  error, attempts, target). The caller then reports the original as done, so SQS deletes it.
- ``S3ClaimCheckReader.load``: the event's JSON text an intake stored in S3 because it was too large
  for SQS, as stored (the dispatcher checks it is a JSON object before sending it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from relay.adapters.aws import client
from relay.errors import DependencyUnavailable, UnreadableEvent
from relay.models.delivery import (
    ATTR_ATTEMPTS,
    ATTR_DEFERRALS,
    ATTR_DLQ_REASON,
    ATTR_INTEGRATION_ID,
    ATTR_LAST_ERROR,
    ATTR_LAST_STATUS,
    ATTR_TARGET_ID,
    DEAD_LETTER_ATTRIBUTES,
    S3Ref,
)

MAX_ATTRIBUTE_TEXT = 256


def _number(value: int) -> dict[str, str]:
    return {"DataType": "Number", "StringValue": str(value)}


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value[:MAX_ATTRIBUTE_TEXT] or "-"}


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


class SqsDeliveryQueueOps:
    def __init__(self, delivery_queue_url: str, dead_letter_queue_url: str, *, sqs: Any = None) -> None:
        self._delivery_queue_url = delivery_queue_url
        self._dead_letter_queue_url = dead_letter_queue_url
        self._sqs = sqs

    @property
    def _client(self) -> Any:
        return self._sqs or client("sqs")

    def schedule_retry(self, receipt_handle: str, delay_seconds: int) -> None:
        self._call(
            "change_message_visibility",
            QueueUrl=self._delivery_queue_url,
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
        # A redriven message's dead-letter notes describe an earlier run: the deferred copy drops them.
        attributes = {
            name: value
            for name, value in carried_attributes(message_attributes).items()
            if name not in DEAD_LETTER_ATTRIBUTES
        }
        attributes[ATTR_ATTEMPTS] = _number(attempts)
        attributes[ATTR_DEFERRALS] = _number(deferrals)
        self._call(
            "send_message",
            QueueUrl=self._delivery_queue_url,
            MessageBody=body,
            DelaySeconds=delay_seconds,
            MessageAttributes=attributes,
        )

    def dead_letter(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        *,
        reason: str,
        attempts: int,
        integration_id: str | None,
        target_id: str | None,
        last_status: int | None,
        last_error: str | None,
    ) -> None:
        attributes = carried_attributes(message_attributes)
        attributes[ATTR_DLQ_REASON] = _string(reason)
        attributes[ATTR_ATTEMPTS] = _number(attempts)
        if last_status is not None:
            attributes[ATTR_LAST_STATUS] = _number(last_status)
        if last_error:
            attributes[ATTR_LAST_ERROR] = _string(last_error)
        if target_id:
            attributes[ATTR_TARGET_ID] = _string(target_id)
        if integration_id:
            attributes[ATTR_INTEGRATION_ID] = _string(integration_id)
        self._call(
            "send_message",
            QueueUrl=self._dead_letter_queue_url,
            MessageBody=body,
            MessageAttributes=attributes,
        )

    def _call(self, operation: str, **kwargs: Any) -> None:
        try:
            getattr(self._client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailable(f"SQS {operation} failed ({type(exc).__name__})") from None


class S3ClaimCheckReader:
    def __init__(self, *, s3: Any = None) -> None:
        self._s3 = s3

    def load(self, ref: S3Ref) -> str:
        """The stored text, byte for byte (for an HTTP event: the body Genesys sent); UnreadableEvent if
        it is not UTF-8."""
        try:
            body: bytes = (self._s3 or client("s3")).get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailable(f"claim check unreadable ({type(exc).__name__})") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableEvent("the claim-checked event is not UTF-8") from None

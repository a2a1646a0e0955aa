"""Sending delivery tasks to the delivery queue (SQS SendMessageBatch), all or nothing as seen by the caller.

``send`` returns only once every body is in the queue. Entries SQS refuses in a batch answer are sent
again (a few times, with a short pause); if some still fail, or SQS cannot be reached, it raises
``DependencyUnavailable`` so the intake answers 503 and the sender (Genesys, or Lambda's async retry)
tries again. A repeated send is harmless: the dispatcher and the receivers deduplicate on the
deterministic ``deliveryId`` inside each body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from relay.adapters.aws import client
from relay.errors import DependencyUnavailable
from relay.models.delivery import S3Ref
from relay.models.queue import MAX_INLINE_BODY_BYTES, OutgoingMessage, plan_batches

__all__ = ["MAX_INLINE_BODY_BYTES", "SqsDeliveryQueue"]


class SqsDeliveryQueue:
    """The delivery queue. ``sqs`` and ``sleep`` are injectable (tests, benchmarks)."""

    def __init__(
        self,
        queue_url: str,
        *,
        sqs: Any = None,
        attempts: int = 3,
        backoff_seconds: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._queue_url = queue_url
        self._sqs = sqs
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._sleep = sleep

    @property
    def _client(self) -> Any:
        return self._sqs or client("sqs")

    def send(self, bodies: Sequence[str]) -> None:
        """Queue every body (one message each) or raise DependencyUnavailable."""
        messages = [OutgoingMessage(str(i), body) for i, body in enumerate(bodies)]
        for batch in plan_batches(messages):
            self._send_batch({m.entry_id: m.body for m in batch})

    def _send_batch(self, pending: dict[str, str]) -> None:
        last_error = "no attempt made"
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._backoff * (2 ** (attempt - 1)))
            entries = [{"Id": entry_id, "MessageBody": body} for entry_id, body in pending.items()]
            try:
                answer = self._client.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                last_error = type(exc).__name__
                continue
            failed = {entry["Id"] for entry in answer.get("Failed", [])}
            pending = {entry_id: body for entry_id, body in pending.items() if entry_id in failed}
            if not pending:
                return
            last_error = "per-entry failures: " + ", ".join(
                sorted({str(entry.get("Code", "?")) for entry in answer.get("Failed", [])})
            )
        raise DependencyUnavailable(f"delivery queue unavailable ({last_error})")


class S3ClaimCheckStore:
    """Claim check: an event too large for one SQS message is stored once in the audit bucket.

    Keys are deterministic (``events/<integrationId>/<event key hash>.json``), so a retried intake
    overwrites the same object. The bucket's lifecycle rule expires ``events/`` after the queue's
    retention period.
    """

    def __init__(self, bucket: str, *, s3: Any = None) -> None:
        self._bucket = bucket
        self._s3 = s3

    def put(self, key: str, body: bytes) -> S3Ref:
        s3 = self._s3 or client("s3")
        try:
            s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="application/json")
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailable(f"audit bucket unavailable ({type(exc).__name__})") from None
        return S3Ref(bucket=self._bucket, key=key)

"""The audit trail of a batch: one line per attempt (and per record handled without one), written
as one JSON Lines object per target. Never a header, never a secret: a target's own secret values are
scrubbed from a response body it echoed, and an encrypting target's response body is not kept at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from relay.errors import DependencyUnavailable
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.records import Item, SqsRecord
from relay.logic.envelope import TargetSecrets
from relay.models.breaker import Phase
from relay.models.delivery import DeliveryTask
from relay.models.timestamps import iso_utc
from relay.observability import logger
from relay.ports import AuditSink

# Audit outcomes.
DELIVERED = "delivered"
RETRY_SCHEDULED = "retry-scheduled"
DEAD_LETTERED = "dead-lettered"
DEFERRED = "deferred"
LEFT_FOR_REDELIVERY = "left-for-redelivery"  # a settle step failed: SQS shows it again
ROUTED = "routed-to-slow-lane"  # handed to the slow lane's queue, unattempted

REDACTED = "[redacted]"


def base_line(
    record: SqsRecord, task: DeliveryTask | None, batch: Batch, started: datetime, finished: datetime
) -> dict[str, Any]:
    """The fields every audit line has."""
    return {
        "invocationId": batch.invocation_id,
        "messageId": record.message_id,
        "deliveryId": str(task.delivery_id) if task else None,
        "eventId": task.event_id if task else None,
        "integrationId": task.integration_id if task else None,
        "targetId": task.target_id if task else None,
        "startedAt": iso_utc(started),
        "finishedAt": iso_utc(finished),
    }


def item_line(
    item: Item, batch: Batch, started: datetime, finished: datetime, *, error: str | None
) -> dict[str, Any]:
    """The line of a record that reached its target's lane (attempted or deferred)."""
    outcome = item.outcome
    return {
        **base_line(item.record, item.task, batch, started, finished),
        "urlHost": urlsplit(item.target.url).hostname,
        "attempt": item.attempt,
        "probe": item.probe,
        "status": outcome.status if outcome else None,
        "latencyMs": None,
        "outcome": None,
        "errorCode": outcome.error_code if outcome else None,
        "error": error,
        "breakerState": Phase.HALF_OPEN.value if item.probe else item.breaker_phase,
    }


def scrub(text: str, secrets: TargetSecrets | None) -> str:
    """Remove the target's own secret values from a response body an endpoint may have echoed."""
    if secrets is None:
        return text
    for secret in (secrets.auth, secrets.signing):
        for value in secret.values() if secret else []:
            if len(value) >= 4:
                text = text.replace(value, REDACTED)
    return text


def write_audit(batch: Batch, sink: AuditSink | None) -> None:
    """One object per target; a failed write is logged, never fails the batch."""
    if sink is None:
        return
    date = batch.started.strftime("%Y-%m-%d")
    for target_id, lines in batch.audit.items():
        try:
            sink.write(date, target_id, batch.invocation_id, lines)
        except DependencyUnavailable as exc:
            logger.warning("audit object not written", extra={"targetId": target_id, "error": str(exc)})

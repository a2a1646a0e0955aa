"""The audit trail of a batch: one line per attempt (and per record handled without one), written
as one JSON Lines object per target. Never a header, never a secret: a target's own secret values are
scrubbed from a response body it echoed, and an encrypting target's response body is not kept at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from relay.errors import DependencyUnavailable
from relay.logic.dispatch.batch import DELIVERED as DELIVERED  # re-exported: one of the outcomes below
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.records import Item, SqsRecord
from relay.logic.envelope import TargetSecrets
from relay.models.breaker import Phase
from relay.models.delivery import DeliveryTask
from relay.models.timestamps import iso_utc
from relay.observability import logger
from relay.ports import AuditSink

# Audit outcomes (DELIVERED lives with Batch, which logs every line but a delivery's).
RETRY_SCHEDULED = "retry-scheduled"
DEAD_LETTERED = "dead-lettered"
DEFERRED = "deferred"
LEFT_FOR_REDELIVERY = "left-for-redelivery"  # a settle step failed: SQS shows it again

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
        "receivedAt": iso_utc(task.received_at) if task else None,  # when the intake accepted the event
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
    """One object per target, then the batch's summary line in the log. An object that cannot be
    written (or no audit bucket) is logged with its lines instead, so the trail stays whole; it never
    fails the batch."""
    date = batch.started.strftime("%Y-%m-%d")
    for target_id, lines in batch.audit.items():
        try:
            if sink is None:  # no audit bucket: the log is the whole audit trail
                raise DependencyUnavailable("no audit bucket configured")
            sink.write(date, target_id, batch.invocation_id, lines)
        except DependencyUnavailable as exc:
            logger.warning(
                "audit object not written",
                extra={"targetId": target_id, "error": str(exc), "lines": _without_bodies(lines)},
            )
    logger.info("batch", extra=summary(batch))


def summary(batch: Batch) -> dict[str, Any]:
    """What the batch came to, per target and outcome: the log's one line about deliveries."""
    outcomes: dict[str, dict[str, int]] = {}
    for target_id, lines in batch.audit.items():
        counts = outcomes.setdefault(target_id, {})
        for line in lines:
            outcome = str(line.get("outcome"))
            counts[outcome] = counts.get(outcome, 0) + 1
    return {
        "invocationId": batch.invocation_id,
        "outcomes": outcomes,
        "reportedFailed": len(batch.failures),
    }


def _without_bodies(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "responseBody"} for line in lines]

"""The audit trail of a batch: one line per attempt (and per record handled without one), written
as one JSON Lines object per target. Never a header, never a secret, never the event: what a line
keeps of a response body is relay.logic.dispatch.kept_answers' to decide, and an encrypting target's
response body is not kept at all. The event's text goes to the event archive, one object per
invocation under its own prefix (relay.models.archive), written here too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from relay.errors import DependencyUnavailable
from relay.logic.dispatch.batch import DELIVERED as DELIVERED  # re-exported: one of the outcomes below
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.records import Item, SqsRecord
from relay.models.archive import records_of
from relay.models.breaker import Phase
from relay.models.delivery import DeliveryTask
from relay.models.timestamps import iso_utc
from relay.observability import logger
from relay.ports import AuditSink, EventArchive

# Audit outcomes (DELIVERED lives with Batch, which logs every line but a delivery's).
RETRY_SCHEDULED = "retry-scheduled"
DEAD_LETTERED = "dead-lettered"
DEFERRED = "deferred"
LEFT_FOR_REDELIVERY = "left-for-redelivery"  # a settle step failed: SQS shows it again
ROUTED = "routed-to-slow-lane"  # handed to the slow lane's queue, unattempted (standard records only)
# The ordered path only: shown again later with its conversation, never re-sent.
HELD = "held"  # not attempted now (behind an earlier record, breaker open, out of time)
BLOCKED = "blocked"  # exhausted or refused, and its target blocks the conversation behind it

# The errorCode of a record whose delivery step raised: a bug, not an outcome (SQS shows it again).
INTERNAL_ERROR = "internal-error"


def base_line(
    record: SqsRecord, task: DeliveryTask | None, batch: Batch, started: datetime, finished: datetime
) -> dict[str, Any]:
    """The fields every audit line has: those of an attempt are null on a line without one, so that
    every line has one shape (an Athena query filtering on ``attempt`` or ``status`` sees them all)."""
    return {
        "invocationId": batch.invocation_id,
        "messageId": record.message_id,
        "deliveryId": str(task.delivery_id) if task else None,
        "eventId": task.event_id if task else None,
        "conversationId": task.conversation_id if task else None,
        "integrationId": task.integration_id if task else None,
        "targetId": task.target_id if task else None,
        "receivedAt": iso_utc(task.received_at) if task else None,  # when the intake accepted the event
        "urlHost": None,
        "attempt": None,
        "probe": None,
        "status": None,
        "latencyMs": None,
        "outcome": None,
        "errorCode": None,
        "error": None,
        "breakerState": None,
        "startedAt": iso_utc(started),
        "finishedAt": iso_utc(finished),
        "retryInSeconds": None,
        "deferredSeconds": None,
        "dlqReason": None,
        "encrypted": None,
        "responseBytes": None,
        "responseTruncated": None,
        "responseBody": None,
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


def write_audit(batch: Batch, sink: AuditSink | None) -> None:
    """One object per target, then the batch's summary line in the log. An object that cannot be
    written (or no audit bucket) is logged with its lines instead, so the trail stays whole; it never
    fails the batch. Lines already written (``write_early``) are left out; the summary counts them."""
    _write_audit_objects(batch, sink, batch.invocation_id, lambda message_id: message_id not in batch.written)
    logger.info("batch", extra=summary(batch))


def write_archive(batch: Batch, archive: EventArchive | None) -> None:
    """One archive object for the invocation: the events of the records it attempted or dead-lettered.

    Every attempt, not only the first: the retry of a record whose invocation crashed (and so wrote
    no archive object) is archived too; a retry costs bytes in this one object, never a PUT. A record
    only deferred is archived when it is attempted. A failed write is logged, never fails the batch.
    """
    _write_archive_object(
        batch, archive, batch.invocation_id, lambda message_id: message_id not in batch.written
    )


def write_early(
    batch: Batch, message_ids: set[str], sink: AuditSink | None, archive: EventArchive | None
) -> None:
    """The audit lines and archived events of ``message_ids`` now, in objects of their own, before
    their records are deleted while the invocation still runs (an ordered conversation released early):
    a crash after that delete can no longer lose their trail. The invocation's own objects leave them
    out."""
    name = f"{batch.invocation_id}-early-{len(batch.written)}"  # written grows with every call
    _write_audit_objects(batch, sink, name, message_ids.__contains__)
    _write_archive_object(batch, archive, name, message_ids.__contains__)
    with batch.lock:
        batch.written |= message_ids


def _write_audit_objects(
    batch: Batch, sink: AuditSink | None, name: str, chosen: Callable[[str], bool]
) -> None:
    date = batch.started.strftime("%Y-%m-%d")
    with batch.lock:  # groups still running may be adding lines
        per_target = {
            target_id: [line for line in lines if chosen(line["messageId"])]
            for target_id, lines in batch.audit.items()
        }
    for target_id, lines in per_target.items():
        if not lines:
            continue
        try:
            if sink is None:  # no audit bucket: the log is the whole audit trail
                raise DependencyUnavailable("no audit bucket configured")
            sink.write(date, target_id, name, lines)
        except DependencyUnavailable as exc:
            logger.warning(
                "audit object not written",
                extra={"targetId": target_id, "error": str(exc), "lines": _without_bodies(lines)},
            )


def _write_archive_object(
    batch: Batch, archive: EventArchive | None, name: str, chosen: Callable[[str], bool]
) -> None:
    if archive is None:
        return
    with batch.lock:
        handled = {
            line["messageId"]
            for lines in batch.audit.values()
            for line in lines
            if line.get("outcome") not in (DEFERRED, None) and chosen(line["messageId"])
        }
        tasks = [task for message_id, task in batch.tasks.items() if message_id in handled]
    if not tasks:
        return
    records = records_of(tasks, invocation_id=batch.invocation_id, archived_at=batch.started)
    try:
        archive.write(batch.started.strftime("%Y-%m-%d"), name, records)
    except DependencyUnavailable as exc:
        logger.warning("archive object not written", extra={"events": len(records), "error": str(exc)})


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

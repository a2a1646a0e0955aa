"""``relay dlq redrive --queue eventbridge|intake-failures``: each failed event goes back through the
intake's own EventBridge path, in-process.

The intake checks the event again, queues one task per target and records the event in its
idempotency table, so an event already queued (an earlier redrive, or a Lambda retry that got through
after all) queues nothing new. The rules that keep this lossless: a message is deleted only after the
intake accepted its event; an event the intake refuses stays in its queue and is reported with the
intake's reason; when a dependency fails (DynamoDB, SQS) the run ends and keeps what it has not sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from relay.errors import DependencyUnavailable, RelayError
from relay.logic.dlq import scan as scans
from relay.logic.dlq.failed_events import (
    FailedEvent,
    FailedEventGroup,
    FailedEventGroups,
    FailureQueue,
)
from relay.logic.dlq.scan import Progress, ProgressSink, Scan, no_progress, now_ms, work_through
from relay.models.queue import ReceivedMessage
from relay.ports import DeadLetterQueues, EventBridgeIntake

NO_EVENT = "the message holds no EventBridge event (nothing to send)"


@dataclass(frozen=True)
class ResubmitOptions:
    max_messages: int | None = None
    dry_run: bool = False
    visibility_seconds: int = 120  # how long a message in hand stays hidden (the intake's work fits easily)
    wait_seconds: int = 1


@dataclass(frozen=True)
class Refusal:
    """An event that stays in its queue, and the intake's reason (a relay error's message: no values)."""

    message_id: str
    event_id: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"messageId": self.message_id, "eventId": self.event_id, "reason": self.reason}


@dataclass
class ResubmitResult:
    queue: FailureQueue
    mode: Literal["resubmit", "dry-run"]
    scanned: int = 0
    matched: int = 0  # taken by this run (all, or the first --max)
    accepted: int = 0  # the intake accepted the event (queued now, or already queued) and it was deleted
    refused: list[Refusal] = field(default_factory=list)  # left in the queue
    not_deleted: int = 0  # accepted but still in the queue: a second redrive queues nothing new
    skipped: int = 0  # past --max
    groups: list[FailedEventGroup] = field(default_factory=list)
    error: str | None = None
    now_ms: int = 0

    @property
    def ok(self) -> bool:
        return not (self.error or self.refused or self.not_deleted)

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "mode": self.mode,
            "ok": self.ok,
            "scanned": self.scanned,
            "matched": self.matched,
            "accepted": self.accepted,
            "refused": [refusal.to_json() for refusal in self.refused],
            "notDeleted": self.not_deleted,
            "skipped": self.skipped,
            "groups": [group.to_json(self.now_ms) for group in self.groups],
            "error": self.error,
        }


def resubmit(
    queues: DeadLetterQueues,
    queue: FailureQueue,
    queue_url: str,
    intake: EventBridgeIntake,
    options: ResubmitOptions,
    *,
    progress: ProgressSink = no_progress,
    now: Callable[[], float] = time.time,
    stop: scans.StopRequested = scans.never,
) -> ResubmitResult:
    """Send the failed events of ``queue`` back through ``intake`` (see the module docstring)."""
    result = ResubmitResult(queue=queue, mode="dry-run" if options.dry_run else "resubmit")
    depth = queues.approximate_depth(queue_url)
    groups = FailedEventGroups(queue)

    def send(batch: list[ReceivedMessage], scan: Scan) -> bool:
        taken = _take(batch, options, groups, result)
        if taken and not options.dry_run and not _send(queues, queue_url, intake, taken, scan, result):
            return False  # a dependency stopped answering: keep what was not sent
        progress(
            Progress("redrive", result.scanned, depth, moved=result.accepted, failed=len(result.refused))
        )
        return options.max_messages is None or result.matched < options.max_messages

    work_through(
        queues,
        queue_url,
        send,
        visibility_seconds=options.visibility_seconds,
        wait_seconds=options.wait_seconds,
        stop=stop,
    )
    result.groups = groups.sorted()
    result.now_ms = now_ms(now)
    return result


def _take(
    batch: Sequence[ReceivedMessage],
    options: ResubmitOptions,
    groups: FailedEventGroups,
    result: ResubmitResult,
) -> list[tuple[ReceivedMessage, FailedEvent]]:
    """The messages of ``batch`` this run handles (all, up to --max), with their events."""
    taken = []
    for message in batch:
        result.scanned += 1
        if options.max_messages is not None and result.matched >= options.max_messages:
            result.skipped += 1
            continue
        result.matched += 1
        failed = groups.read(message)
        taken.append((message, failed))
    return taken


def _send(
    queues: DeadLetterQueues,
    queue_url: str,
    intake: EventBridgeIntake,
    taken: Sequence[tuple[ReceivedMessage, FailedEvent]],
    scan: Scan,
    result: ResubmitResult,
) -> bool:
    """Run each event through the intake, then delete exactly the messages whose event it accepted.
    False when a dependency failed (``result.error`` says which): the run ends."""
    accepted: list[ReceivedMessage] = []
    going_on = True
    for message, failed in taken:
        if failed.event is None:
            result.refused.append(Refusal(message.message_id, None, NO_EVENT))
            continue
        try:
            intake.handle_eventbridge(failed.event)
        except DependencyUnavailable as exc:
            result.error = f"{type(exc).__name__}: {exc}; the events not yet sent stay in their queue"
            going_on = False
            break
        except RelayError as exc:  # refused: invalid event, unknown integration, being accepted right now
            result.refused.append(
                Refusal(message.message_id, failed.event_id, f"{type(exc).__name__}: {exc}")
            )
            continue
        accepted.append(message)
    return _delete(queues, queue_url, accepted, scan, result) and going_on


def _delete(
    queues: DeadLetterQueues,
    queue_url: str,
    accepted: Sequence[ReceivedMessage],
    scan: Scan,
    result: ResubmitResult,
) -> bool:
    by_entry = {str(i): message for i, message in enumerate(accepted)}
    try:
        deleted = queues.delete_batch(queue_url, {i: m.receipt_handle for i, m in by_entry.items()})
    except DependencyUnavailable as exc:
        result.not_deleted += len(accepted)
        result.error = result.error or f"{exc}; {len(accepted)} accepted events are still in their queue too"
        return False
    for entry_id in deleted:
        scan.deleted(by_entry[entry_id].message_id)
    result.accepted += len(deleted)
    result.not_deleted += len(accepted) - len(deleted)
    return True

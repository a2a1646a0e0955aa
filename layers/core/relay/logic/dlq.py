"""Dead-letter queue inspection and redrive (``relay dlq list`` / ``relay dlq redrive``).

Listing receives without deleting and puts every message back when it is done. Redrive either asks
SQS to move everything (StartMessageMoveTask, polled until it ends) or receives, re-sends and deletes
the matching messages itself. The rule that keeps redrive lossless: a DLQ message is deleted only
after SQS accepted its copy on the delivery queue; a failed send leaves it where it is.

Only ids ever leave this module: event bodies may hold customer messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from relay.adapters.dlq_queue import SqsDlqQueues
from relay.errors import DependencyUnavailable, MoveTaskUnavailable
from relay.models.delivery import (
    ATTR_ATTEMPTS,
    ATTR_DEFERRALS,
    ATTR_DLQ_REASON,
    ATTR_INTEGRATION_ID,
    ATTR_LAST_STATUS,
    ATTR_TARGET_ID,
    BACKSTOP_REASON,
    DEAD_LETTER_ATTRIBUTES,
    DeliveryTask,
    DlqReason,
)
from relay.models.queue import MoveTaskStatus, OutgoingMessage, ReceivedMessage, plan_batches

# Stands in for the target and integration of a body that is not a DeliveryTask.
UNPARSEABLE = "unparseable"
# What ``relay dlq`` lists and filters by: the relay's own reasons, and the backstop's pseudo reason.
DLQ_REASONS = (*(reason.value for reason in DlqReason), BACKSTOP_REASON)

RedriveMethod = Literal["auto", "move-task", "resend"]


@dataclass(frozen=True)
class DeadLetter:
    """What may be shown about one DLQ message: ids and bookkeeping, never the body."""

    message_id: str
    reason: str
    integration_id: str
    target_id: str
    delivery_id: str | None
    last_status: str | None
    sent_timestamp_ms: int | None


def _string_attribute(attributes: Mapping[str, Mapping[str, Any]], name: str) -> str | None:
    value = attributes.get(name, {}).get("StringValue")
    return str(value) if value else None


def classify(message: ReceivedMessage) -> DeadLetter:
    """Reason, integration and target of a DLQ message: its attributes first, then its body."""
    attributes = message.attributes
    try:
        task: DeliveryTask | None = DeliveryTask.model_validate_json(message.body)
    except ValidationError:
        task = None
    last_status = _string_attribute(attributes, ATTR_LAST_STATUS)
    return DeadLetter(
        message_id=message.message_id,
        reason=_string_attribute(attributes, ATTR_DLQ_REASON) or BACKSTOP_REASON,
        integration_id=_string_attribute(attributes, ATTR_INTEGRATION_ID)
        or (task.integration_id if task else UNPARSEABLE),
        target_id=_string_attribute(attributes, ATTR_TARGET_ID) or (task.target_id if task else UNPARSEABLE),
        delivery_id=str(task.delivery_id) if task else None,
        # A status is a number; anything else is not shown (it is not ours to trust).
        last_status=last_status if last_status and last_status.isdigit() else None,
        sent_timestamp_ms=message.sent_timestamp_ms,
    )


@dataclass(frozen=True)
class RedriveFilter:
    """Empty sets match everything; a value set must contain the message's value."""

    targets: frozenset[str] = frozenset()
    integrations: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        targets: Sequence[str] | None = None,
        integrations: Sequence[str] | None = None,
        reasons: Sequence[str] | None = None,
    ) -> RedriveFilter:
        return cls(frozenset(targets or ()), frozenset(integrations or ()), frozenset(reasons or ()))

    @property
    def active(self) -> bool:
        return bool(self.targets or self.integrations or self.reasons)

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (not self.targets or letter.target_id in self.targets)
            and (not self.integrations or letter.integration_id in self.integrations)
            and (not self.reasons or letter.reason in self.reasons)
        )


@dataclass
class DeadLetterGroup:
    reason: str
    integration_id: str
    target_id: str
    count: int = 0
    oldest_sent_ms: int | None = None
    sample_delivery_id: str | None = None
    sample_message_id: str | None = None
    last_statuses: set[str] = field(default_factory=set)

    def add(self, letter: DeadLetter) -> None:
        self.count += 1
        if letter.sent_timestamp_ms is not None and (
            self.oldest_sent_ms is None or letter.sent_timestamp_ms < self.oldest_sent_ms
        ):
            self.oldest_sent_ms = letter.sent_timestamp_ms
        if self.sample_delivery_id is None and letter.delivery_id is not None:
            self.sample_delivery_id = letter.delivery_id
        if self.sample_message_id is None:
            self.sample_message_id = letter.message_id
        if letter.last_status:
            self.last_statuses.add(letter.last_status)

    def oldest_age_seconds(self, now_ms: int) -> int | None:
        return None if self.oldest_sent_ms is None else max(0, (now_ms - self.oldest_sent_ms) // 1000)

    def to_json(self, now_ms: int) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "integrationId": self.integration_id,
            "targetId": self.target_id,
            "count": self.count,
            "oldestAgeSeconds": self.oldest_age_seconds(now_ms),
            "sampleDeliveryId": self.sample_delivery_id,
            "sampleMessageId": self.sample_message_id,
            "lastStatuses": sorted(self.last_statuses),
        }


class DeadLetterGroups:
    """Dead letters grouped by (reason, integration, target); a target id is unique per integration."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str, str], DeadLetterGroup] = {}

    def add(self, letter: DeadLetter) -> None:
        key = (letter.reason, letter.integration_id, letter.target_id)
        if key not in self._groups:
            self._groups[key] = DeadLetterGroup(*key)
        self._groups[key].add(letter)

    @property
    def total(self) -> int:
        return sum(group.count for group in self._groups.values())

    def sorted(self) -> list[DeadLetterGroup]:
        """Largest groups first, then by reason, integration and target."""
        return sorted(
            self._groups.values(), key=lambda g: (-g.count, g.reason, g.integration_id, g.target_id)
        )


def group_dead_letters(letters: Sequence[DeadLetter]) -> list[DeadLetterGroup]:
    groups = DeadLetterGroups()
    for letter in letters:
        groups.add(letter)
    return groups.sorted()


def redrive_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The attributes of a redriven copy: a fresh try, so no attempts, deferrals or dead-letter notes."""
    kept = {
        name: value
        for name, value in attributes.items()
        if name not in DEAD_LETTER_ATTRIBUTES and name not in (ATTR_ATTEMPTS, ATTR_DEFERRALS)
    }
    kept[ATTR_ATTEMPTS] = {"DataType": "Number", "StringValue": "0"}
    return kept


class _Scan:
    """Receive every message of a queue once, without deleting; ``release`` puts the rest back.

    Received messages stay invisible for ``visibility_seconds`` so each receive brings new ones; a
    message seen again (its visibility ran out in a long run) is not yielded twice. The scan ends at
    an empty receive, or after a few receives that brought nothing new.
    """

    IDLE_RECEIVES = 3

    def __init__(
        self, queues: SqsDlqQueues, queue_url: str, visibility_seconds: int, wait_seconds: int
    ) -> None:
        self._queues = queues
        self._queue_url = queue_url
        self._visibility = visibility_seconds
        self._wait = wait_seconds
        self._seen: set[str] = set()
        self._held: dict[str, str] = {}  # message id -> latest receipt handle, until deleted

    def batches(self) -> Iterator[list[ReceivedMessage]]:
        idle = 0
        while idle < self.IDLE_RECEIVES:
            received = self._queues.receive(
                self._queue_url, visibility_seconds=self._visibility, wait_seconds=self._wait
            )
            if not received:
                return
            for message in received:
                self._held[message.message_id] = message.receipt_handle
            fresh = [m for m in received if m.message_id not in self._seen]
            self._seen.update(m.message_id for m in fresh)
            idle = 0 if fresh else idle + 1
            if fresh:
                yield fresh

    def deleted(self, message_id: str) -> None:
        self._held.pop(message_id, None)

    def release(self) -> None:
        self._queues.release(self._queue_url, list(self._held.values()))
        self._held.clear()


@dataclass(frozen=True)
class DeadLetterReport:
    scanned: int
    depth: int
    groups: list[DeadLetterGroup]
    now_ms: int
    limited: bool  # --max stopped the scan before the queue was exhausted

    def to_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "approximateDepth": self.depth,
            "limited": self.limited,
            "groups": [group.to_json(self.now_ms) for group in self.groups],
        }


@dataclass(frozen=True)
class Progress:
    """Where a long run is; ``total`` is SQS's approximate depth when the run started."""

    phase: str
    done: int
    total: int | None
    moved: int = 0
    failed: int = 0


ProgressSink = Callable[[Progress], None]


def _no_progress(progress: Progress) -> None:
    return None


def _now_ms(now: Callable[[], float]) -> int:
    return int(now() * 1000)


def list_dead_letters(
    queues: SqsDlqQueues,
    dlq_url: str,
    *,
    max_messages: int | None = None,
    visibility_seconds: int = 30,
    wait_seconds: int = 1,
    progress: ProgressSink = _no_progress,
    now: Callable[[], float] = time.time,
) -> DeadLetterReport:
    """Group the DLQ's messages by reason and target; every message is put back when done."""
    depth = queues.approximate_depth(dlq_url)
    groups = DeadLetterGroups()
    scan = _Scan(queues, dlq_url, visibility_seconds, wait_seconds)
    limited = False
    try:
        for batch in scan.batches():
            for message in batch:
                if max_messages is not None and groups.total >= max_messages:
                    limited = True
                    break
                groups.add(classify(message))
            progress(Progress("scan", groups.total, depth))
            if limited:
                break
    finally:
        scan.release()
    return DeadLetterReport(groups.total, depth, groups.sorted(), _now_ms(now), limited)


@dataclass(frozen=True)
class RedriveOptions:
    filter: RedriveFilter = field(default_factory=RedriveFilter)
    max_messages: int | None = None
    dry_run: bool = False
    method: RedriveMethod = "auto"
    max_per_second: int | None = None  # move task rate; None lets SQS choose
    visibility_seconds: int = 120  # how long a message in hand stays hidden (send + delete fit easily)
    wait_seconds: int = 1
    poll_seconds: float = 2.0

    def wants_move_task(self) -> bool:
        """The move task moves everything, unchanged: only for an unfiltered, unbounded, real run."""
        if self.method == "resend":
            return False
        return self.method == "move-task" or not (
            self.filter.active or self.max_messages is not None or self.dry_run
        )


@dataclass
class RedriveResult:
    mode: Literal["move-task", "resend", "dry-run"]
    fallback_reason: str | None = None
    scanned: int = 0
    matched: int = 0
    moved: int = 0
    send_failed: int = 0
    not_deleted: int = 0  # re-sent but still in the DLQ too: a duplicate the receivers dedupe
    skipped: int = 0  # did not match the filter, or past --max
    arrived_during_run: int = 0  # left for the next run, so a failing target cannot ping-pong
    task: MoveTaskStatus | None = None
    groups: list[DeadLetterGroup] = field(default_factory=list)
    error: str | None = None
    now_ms: int = 0

    @property
    def ok(self) -> bool:
        if self.error or self.send_failed or self.not_deleted:
            return False
        return self.task is None or self.task.status == "COMPLETED"

    def to_json(self) -> dict[str, Any]:
        task = self.task
        return {
            "mode": self.mode,
            "ok": self.ok,
            "fallbackReason": self.fallback_reason,
            "scanned": self.scanned,
            "matched": self.matched,
            "moved": self.moved,
            "sendFailed": self.send_failed,
            "notDeleted": self.not_deleted,
            "skipped": self.skipped,
            "arrivedDuringRun": self.arrived_during_run,
            "task": None
            if task is None
            else {
                "status": task.status,
                "moved": task.moved,
                "toMove": task.to_move,
                "failureReason": task.failure_reason,
            },
            "groups": [group.to_json(self.now_ms) for group in self.groups],
            "error": self.error,
        }


class _SendAborted(Exception):
    """The delivery queue or the DLQ stopped answering: end the run, keep what was not moved."""


def redrive(
    queues: SqsDlqQueues,
    dlq_url: str,
    queue_url: str,
    options: RedriveOptions,
    *,
    progress: ProgressSink = _no_progress,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> RedriveResult:
    """Move DLQ messages back to the delivery queue (see the module docstring for the rules)."""
    fallback_reason = None
    if options.wants_move_task():
        try:
            return _run_move_task(queues, dlq_url, queue_url, options, progress, sleep)
        except MoveTaskUnavailable as exc:
            if options.method == "move-task":
                raise
            fallback_reason = f"{exc}; re-sending message by message instead"
    result = _resend(queues, dlq_url, queue_url, options, progress, now)
    result.fallback_reason = fallback_reason
    return result


def _run_move_task(
    queues: SqsDlqQueues,
    dlq_url: str,
    queue_url: str,
    options: RedriveOptions,
    progress: ProgressSink,
    sleep: Callable[[float], None],
) -> RedriveResult:
    source_arn = queues.queue_arn(dlq_url)
    destination_arn = queues.queue_arn(queue_url)
    queues.start_move_task(source_arn, destination_arn, options.max_per_second)
    result = RedriveResult(mode="move-task")
    while True:
        task = queues.latest_move_task(source_arn)
        if task is None:
            result.error = "the move task started but SQS lists no task for the DLQ"
            return result
        result.task = task
        result.moved = task.moved
        progress(Progress(f"move task {task.status.lower()}", task.moved, task.to_move, moved=task.moved))
        if task.done:
            if task.status == "FAILED":
                result.error = f"move task failed: {task.failure_reason or 'no reason given'}"
            return result
        sleep(options.poll_seconds)


def _resend(
    queues: SqsDlqQueues,
    dlq_url: str,
    queue_url: str,
    options: RedriveOptions,
    progress: ProgressSink,
    now: Callable[[], float],
) -> RedriveResult:
    result = RedriveResult(mode="dry-run" if options.dry_run else "resend")
    started_ms = _now_ms(now)
    depth = queues.approximate_depth(dlq_url)
    groups = DeadLetterGroups()
    scan = _Scan(queues, dlq_url, options.visibility_seconds, options.wait_seconds)
    try:
        for batch in scan.batches():
            chosen = _choose(batch, options, groups, result, started_ms)
            if chosen and not options.dry_run:
                _move(queues, dlq_url, queue_url, chosen, scan, result)
            progress(
                Progress("redrive", result.scanned, depth, moved=result.moved, failed=result.send_failed)
            )
            if options.max_messages is not None and result.matched >= options.max_messages:
                break
    except _SendAborted:
        pass
    finally:
        scan.release()
    result.groups = groups.sorted()
    result.now_ms = _now_ms(now)
    return result


def _choose(
    batch: Sequence[ReceivedMessage],
    options: RedriveOptions,
    groups: DeadLetterGroups,
    result: RedriveResult,
    started_ms: int,
) -> list[ReceivedMessage]:
    """The messages of ``batch`` to move, counting the others in ``result``."""
    chosen = []
    for message in batch:
        result.scanned += 1
        if message.sent_timestamp_ms is not None and message.sent_timestamp_ms > started_ms:
            result.arrived_during_run += 1
            continue
        letter = classify(message)
        full = options.max_messages is not None and result.matched >= options.max_messages
        if full or not options.filter.matches(letter):
            result.skipped += 1
            continue
        result.matched += 1
        groups.add(letter)
        chosen.append(message)
    return chosen


def _move(
    queues: SqsDlqQueues,
    dlq_url: str,
    queue_url: str,
    messages: Sequence[ReceivedMessage],
    scan: _Scan,
    result: RedriveResult,
) -> None:
    """Send copies, then delete from the DLQ exactly the messages whose copy SQS accepted."""
    by_entry = {str(i): m for i, m in enumerate(messages)}
    outgoing = [
        OutgoingMessage(entry_id, m.body, redrive_attributes(m.attributes))
        for entry_id, m in by_entry.items()
    ]
    for batch in plan_batches(outgoing):
        try:
            sent = queues.send_batch(queue_url, batch)
        except DependencyUnavailable as exc:
            result.send_failed += len(batch)
            result.error = f"{exc}; nothing unsent was deleted from the DLQ"
            raise _SendAborted from None
        result.send_failed += len(batch) - len(sent)
        try:
            deleted = queues.delete_batch(dlq_url, {i: by_entry[i].receipt_handle for i in sent})
        except DependencyUnavailable as exc:
            result.not_deleted += len(sent)
            result.error = f"{exc}; {len(sent)} sent messages are still in the DLQ too"
            raise _SendAborted from None
        for entry_id in deleted:
            scan.deleted(by_entry[entry_id].message_id)
        result.moved += len(deleted)
        result.not_deleted += len(sent) - len(deleted)

"""From an SQS event record to what the dispatcher can attempt: the task, its target and the attempt
number, the reason it cannot be attempted at all (dead-lettered without an attempt), or that its
target's record cannot be read (retried as a configuration failure until it is fixed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from relay.errors import UnreadableRecord
from relay.logic import retry
from relay.logic.outcomes import Outcome
from relay.models.breaker import LaneState, target_key
from relay.models.delivery import DeliveryTask, DlqReason
from relay.models.targets import Target
from relay.ports import TargetDirectory


@dataclass(frozen=True)
class SqsRecord:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    message_attributes: Mapping[str, Any]
    # Set on records of a FIFO queue: a conversation on the ordered queue (relay.logic.dispatch.fifo),
    # a single delivery on the first hop.
    group_id: str | None = None
    # When SQS first took the message (SentTimestamp, epoch seconds): its retention counts from here.
    sent_at: float | None = None

    @classmethod
    def from_event(cls, record: Mapping[str, Any]) -> SqsRecord:
        attributes = record.get("attributes") or {}
        try:
            receive_count = int(attributes.get("ApproximateReceiveCount", "1"))
        except (TypeError, ValueError):
            receive_count = 1
        return cls(
            message_id=str(record.get("messageId", "")),
            receipt_handle=str(record.get("receiptHandle", "")),
            body=str(record.get("body", "")),
            receive_count=receive_count,
            message_attributes=record.get("messageAttributes") or {},
            group_id=attributes.get("MessageGroupId") or None,
            sent_at=_epoch_seconds(attributes.get("SentTimestamp")),
        )

    @property
    def attempt(self) -> int:
        """The number of the attempt this receive makes (relay.logic.retry.attempt_number)."""
        return retry.attempt_number(self.message_attributes, self.receive_count)

    @property
    def attempts_before(self) -> int:
        """Attempts made before this receive (earlier receives and earlier messages of a deferral chain)."""
        return self.attempt - 1

    @property
    def deferrals_before(self) -> int:
        return retry.deferrals_before(self.message_attributes)


def _epoch_seconds(milliseconds: object) -> float | None:
    try:
        return int(str(milliseconds)) / 1000.0
    except ValueError:
        return None


@dataclass
class Item:
    """One record on its way through the batch."""

    record: SqsRecord
    task: DeliveryTask
    target: Target
    key: str
    attempt: int
    outcome: Outcome | None = None
    # When the attempt that gave ``outcome`` was sent (epoch seconds, the engine's clock): the breaker
    # folds results in the order they were sent. None: not known (reported as of now).
    sent_at: float | None = None
    probe: bool = False
    breaker_phase: str = "unknown"  # as read for this batch; "unknown" when the store failed
    lane: LaneState = field(default_factory=LaneState)  # the target's lane as read for this batch
    # Epoch seconds before which it must not be sent: its rate-limit booking paces it (None: at once).
    not_before: float | None = None

    @property
    def judges_endpoint(self) -> bool:
        """The attempt got as far as the endpoint's own answer or failure: what the breaker judges."""
        return self.outcome is not None and self.outcome.judges_endpoint


@dataclass(frozen=True)
class Unattempted:
    """A record dead-lettered without an attempt: ``why`` becomes its ``relay-last-error``."""

    record: SqsRecord
    task: DeliveryTask | None
    reason: DlqReason
    why: str
    target: Target | None = None  # when it is known (disabled or gone): an ordered one may hold instead

    @classmethod
    def gone(cls, item: Item) -> Unattempted:
        """Its target answered 410 Gone earlier in this batch: it is gone for this record too."""
        why = "target answered 410 Gone earlier in this batch"
        return cls(item.record, item.task, DlqReason.TARGET_GONE, why, item.target)

    def as_item(self) -> Item | None:
        """The record as an item of its target (to hold it in its conversation), if the target is known."""
        if self.task is None or self.target is None:
            return None
        return _item(self.record, self.task, self.target)


@dataclass(frozen=True)
class Unusable:
    """A record whose target's record (or its integration's) cannot be validated: nothing can be sent,
    and nothing says the target is gone, so it fails as a retryable ``configuration`` problem (settle:
    ``Settler.unusable``; the ordered path holds its conversation) until the record is fixed. ``why``:
    "target record unreadable: <fields at fault>", for the audit and the DLQ."""

    record: SqsRecord
    task: DeliveryTask
    why: str


def resolve(
    record: SqsRecord, targets: TargetDirectory, read: dict[str, DeliveryTask]
) -> Item | Unattempted | Unusable:
    """The record's task and target, or why it cannot be attempted; the task is kept in ``read`` by
    message id (the batch's: the event archive keeps the events of both lanes from there). Raises
    DependencyUnavailable when the targets table cannot be read (the record is then left for SQS to
    show again)."""
    try:
        task = DeliveryTask.model_validate_json(record.body)
    except ValidationError:
        return Unattempted(record, None, DlqReason.POISON, "body is not a DeliveryTask")
    read[record.message_id] = task
    try:
        target = targets.get_target(task.integration_id, task.target_id)
    except UnreadableRecord as exc:
        return Unusable(record, task, exc.why)
    if target is None:
        return Unattempted(record, task, DlqReason.UNKNOWN_TARGET, "no such target")
    if not target.enabled:
        return Unattempted(record, task, DlqReason.TARGET_DISABLED, "target is disabled", target)
    return _item(record, task, target)


def _item(record: SqsRecord, task: DeliveryTask, target: Target) -> Item:
    key = target_key(task.integration_id, task.target_id)
    return Item(record=record, task=task, target=target, key=key, attempt=record.attempt)

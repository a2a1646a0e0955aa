"""Settling ordered records: the engine's Settler, bound to one message group's run.

    retryable failure of record n    hold n and every later record of its group with one delay
                                     (ChangeMessageVisibilityBatch), reported failed: SQS hands the
                                     group out again after the backoff, in order
    dead-letter                      to the ordered (FIFO) DLQ in the same message group, deduplicated
                                     on the SQS message id; the group moves on
    exhausted or refused, and the    held for ORDERED_BLOCK_HOLD_SECONDS instead of dead-lettered, the
    target blocks (onExhausted)      group behind it too; OrderedGroupBlocked (the alarm)
    defer (a re-send)                never: it would put the record behind later ones of its group

The rest is the Settler's (relay.logic.dispatch.settle): the same verdicts, metrics and audit lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.errors import ConfigurationError, DependencyUnavailable
from relay.logic import retry
from relay.logic.dispatch import audit
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.metrics import Metric
from relay.logic.dispatch.records import Item, SqsRecord
from relay.logic.dispatch.settle import Settler
from relay.logic.outcomes import Outcome
from relay.models.delivery import DeadLetterNote, DlqReason
from relay.models.queue import GroupPlacement, Requeue
from relay.models.targets import OnExhausted, Ordering, Target
from relay.observability import logger
from relay.ports import OrderedQueueOps

# The dead-letter reasons an ordered target with onExhausted block holds instead: what its own
# answers decided, held for ORDERED_BLOCK_HOLD_SECONDS ...
BLOCKING_REASONS = frozenset({DlqReason.EXHAUSTED, DlqReason.PERMANENT_STATUS})
# ... and the target being disabled (`relay targets disable`, or a 410): held until it is enabled
# again, looked at every ENABLE_RECHECK_SECONDS. Dead-lettered, a record would be overtaken by the
# records behind it wherever a dispatcher's target cache still said enabled, and a redrive would put
# it after them. Records that cannot be attempted at all (poison, unknown target) would block
# forever: they are dead-lettered in their group.
WAITS_FOR_ENABLE = frozenset({DlqReason.TARGET_DISABLED, DlqReason.TARGET_GONE})
ENABLE_RECHECK_SECONDS = 60
# Every hold is one more receive, counted against the queue's redrive backstop (maxReceiveCount): holds
# stay as asked while the receives left, this far apart, would still outlast the message's retention.
SPREAD_HOLD_SECONDS = 3_600


def holds_while_disabled(target: Target) -> bool:
    """Whether the target's records wait for it to be enabled again rather than being dead-lettered."""
    return target.ordering is not Ordering.NONE and target.on_exhausted is OnExhausted.BLOCK


def holds_for(target: Target, reason: DlqReason, *, block_hold_seconds: int) -> int | None:
    """How long a target's ordered record is held instead of dead-lettered for ``reason`` (None: it is
    dead-lettered)."""
    if target.on_exhausted is not OnExhausted.BLOCK:
        return None
    if reason in BLOCKING_REASONS:
        return block_hold_seconds
    return ENABLE_RECHECK_SECONDS if reason in WAITS_FOR_ENABLE else None


def hold_within_backstop(
    seconds: int, records: Sequence[SqsRecord], *, now: float, max_receive_count: int | None
) -> int:
    """``seconds``, or longer once the receives left before the redrive backstop run short: a
    conversation waiting for hours on a disabled target or an open breaker, looked at every minute,
    would otherwise reach maxReceiveCount within hours and be moved to the DLQ by SQS, without the
    relay's reason and ahead of its later records. Its looks then spread evenly over the retention left,
    so the backstop fires only in the retention's last minutes (a FIFO DLQ keeps what it moves another
    14 days; expiry would delete it unseen). ``now`` is epoch seconds, ``records`` those held together."""
    if max_receive_count is None or not records:
        return seconds
    looks_left = max_receive_count - max(record.receive_count for record in records)
    sent = [record.sent_at for record in records if record.sent_at is not None]
    left = retry.retention_left_seconds(min(sent), now) if sent else None
    if left is None or looks_left <= 0 or (looks_left - 1) * SPREAD_HOLD_SECONDS >= left:
        return seconds
    return max(seconds, math.ceil(max(0.0, left - retry.RETENTION_MARGIN_SECONDS) / looks_left))


class GroupQueue:
    """The engine's queue operations (relay.ports.DeliveryQueueOps) for one message group's run,
    positioned at its current record with ``at``: a retry holds that record and every later one of
    the group; a dead-letter keeps the group."""

    def __init__(
        self,
        ordered: OrderedQueueOps,
        group_id: str,
        lasting: Callable[[int, Sequence[SqsRecord]], int],
    ) -> None:
        """``lasting``: the delay a hold of these records asks for (hold_within_backstop, bound to the
        batch and the queue's maxReceiveCount)."""
        self._ordered = ordered
        self.group_id = group_id
        self._lasting = lasting
        self._current: SqsRecord | None = None
        self._behind: Sequence[SqsRecord] = ()

    def at(self, current: SqsRecord, behind: Sequence[SqsRecord]) -> None:
        self._current, self._behind = current, behind

    def lasting(self, seconds: int) -> int:
        """The delay a hold of the current record and the rest of its group asks for (``lasting``)."""
        assert self._current is not None, "GroupQueue.at() names the record first"
        return self._lasting(seconds, [self._current, *self._behind])

    def schedule_retry(self, receipt_handle: str, delay_seconds: int) -> None:
        handles = [receipt_handle, *(record.receipt_handle for record in self._behind)]
        self._ordered.hold(handles, delay_seconds)

    def defer(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        *,
        attempts: int,
        deferrals: int,
        delay_seconds: int,
    ) -> None:
        raise ConfigurationError("an ordered record is held, never re-sent: a re-send would reorder it")

    def to_slow_lane(self, messages: Sequence[Requeue]) -> set[int]:
        raise ConfigurationError("an ordered record never goes to the slow lane: a re-send would reorder it")

    def dead_letter(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        note: DeadLetterNote,
    ) -> None:
        assert self._current is not None, "GroupQueue.at() names the record first"
        # The message id, not the delivery id: a redriven copy dead-lettered again within SQS's
        # 5-minute deduplication window must not be dropped as a repeat of the first.
        placement = GroupPlacement(self.group_id, self._current.message_id)
        self._ordered.dead_letter_in_order(placement, body, message_attributes, note)


class OrderedSettler(Settler):
    """The Settler over a GroupQueue, holding instead of dead-lettering for a target that blocks."""

    def __init__(self, *, queue: GroupQueue, block_hold_seconds: int, **settler: Any) -> None:
        super().__init__(queue=queue, **settler)
        self._group = queue
        self._block_hold_seconds = block_hold_seconds

    def _held_for(self, item: Item, seconds: int) -> int:
        return self._group.lasting(seconds)

    def _dead_letter(
        self, item: Item, reason: DlqReason, outcome: Outcome, batch: Batch, line: dict[str, Any]
    ) -> None:
        wanted = holds_for(item.target, reason, block_hold_seconds=self._block_hold_seconds)
        if wanted is None:
            super()._dead_letter(item, reason, outcome, batch, line)
            return
        wanted = self._held_for(item, wanted)
        if self._outlives_retention(item, wanted):
            # Held again, SQS would delete it before the next look: dead-lettered in its conversation
            # instead, explained (a FIFO DLQ keeps it another 14 days), rather than lost unseen.
            super()._dead_letter(item, reason, outcome, batch, line)
            return
        hold: int | None = wanted
        try:
            self._queue.schedule_retry(item.record.receipt_handle, wanted)
        except DependencyUnavailable:  # the queue's own visibility timeout brings it back
            hold = None
        line.update(outcome=audit.BLOCKED, dlqReason=reason.value, retryInSeconds=hold)
        batch.metrics.service_count(Metric.ORDERED_GROUP_BLOCKED)
        task = item.task
        logger.warning(
            "ordered conversation blocked",
            extra={
                "targetId": item.target.target_id,
                "deliveryId": str(task.delivery_id),  # what `relay deliveries show` finds
                "eventId": task.event_id,
                "conversationId": task.conversation_id,
                "messageId": item.record.message_id,
                "reason": reason,
                "retryInSeconds": hold,
            },
        )
        batch.fail(item.record)

"""SQS messages as the relay handles them outside a Lambda event, and SQS's size limits.

``ReceivedMessage`` is what a receive returns (``relay dlq``), ``OutgoingMessage`` what a batch send
takes; ``plan_batches`` is the one planner that groups outgoing messages within SQS's per-call limits
(the intake's task sends and the DLQ redrive both use it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# SQS limits: 10 entries and 256 KiB in total per SendMessageBatch call; 256 KiB per message, counting
# the message attributes the dispatcher may add later (hence the headroom the intake keeps).
MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 262_144
MAX_MESSAGE_BYTES = 262_144
ATTRIBUTE_HEADROOM_BYTES = 16_384
MAX_INLINE_BODY_BYTES = MAX_MESSAGE_BYTES - ATTRIBUTE_HEADROOM_BYTES
TERMINAL_TASK_STATUSES = frozenset({"COMPLETED", "CANCELLED", "FAILED"})


@dataclass(frozen=True)
class GroupPlacement:
    """Where a message goes in a FIFO queue: its message group (the order it keeps) and its
    deduplication id (SQS drops a second message with the same id in the same group for 5 minutes)."""

    group_id: str
    deduplication_id: str


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    # Message attributes as SQS returns them: {"DataType", "StringValue" | "BinaryValue"}.
    attributes: Mapping[str, Mapping[str, Any]]
    sent_timestamp_ms: int | None
    group_id: str | None = None  # a FIFO queue's message group


@dataclass(frozen=True)
class OutgoingMessage:
    entry_id: str
    body: str
    attributes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    placement: GroupPlacement | None = None  # for a FIFO queue: its group and deduplication id

    @property
    def size(self) -> int:
        """The size SQS counts: the body and every attribute's name, type and value."""
        size = len(self.body.encode("utf-8"))
        for name, value in self.attributes.items():
            size += len(name.encode("utf-8")) + len(str(value.get("DataType", "")).encode("utf-8"))
            size += len(str(value.get("StringValue", "")).encode("utf-8")) + len(
                value.get("BinaryValue", b"")
            )
        return size


@dataclass(frozen=True)
class Requeue:
    """A delivery-queue message to send again as a new message (to the slow lane), carrying the
    attempts and deferrals made so far; ``attributes`` as the Lambda event record had them."""

    body: str
    attributes: Mapping[str, Any]
    attempts: int
    deferrals: int


@dataclass(frozen=True)
class OrderedTask:
    """A delivery task for the ordered (FIFO) queue."""

    body: str
    placement: GroupPlacement


@dataclass(frozen=True)
class MoveTaskStatus:
    status: str  # RUNNING, COMPLETED, CANCELLING, CANCELLED, FAILED
    moved: int
    to_move: int | None
    failure_reason: str | None = None
    task_handle: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_TASK_STATUSES


def plan_batches(messages: Sequence[OutgoingMessage]) -> list[list[OutgoingMessage]]:
    """``messages`` in order, grouped within SQS's per-batch entry count and total size."""
    batches: list[list[OutgoingMessage]] = []
    batch_bytes = 0
    for message in messages:
        size = message.size
        last = batches[-1] if batches else None
        if last is None or len(last) == MAX_BATCH_ENTRIES or batch_bytes + size > MAX_BATCH_BYTES:
            batches.append([message])
            batch_bytes = size
        else:
            last.append(message)
            batch_bytes += size
    return batches

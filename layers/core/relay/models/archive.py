"""The event archive: every accepted event, findable again for ArchiveRetentionDays (default 7).

The dispatcher writes one object per invocation, ``archive/date=YYYY-MM-DD/<invocationId>.jsonl``
(one PUT per invocation, none per event), holding one ``ArchiveRecord`` line per event among the
records it attempted or dead-lettered: the event's text once, its ids, and the (target, deliveryId)
pairs of the batch. Its own prefix, lifecycle rule and IAM statement (template.yaml): audit lines never
carry event text, an archive line carries nothing else a secret could hide in. ``relay deliveries
replay`` reads it back to queue the event again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field, ValidationError

from relay.errors import UnreadableEvent
from relay.models.delivery import DeliveryTask, EventSource, S3Ref
from relay.models.targets import CamelModel

ARCHIVE_PREFIX = "archive/"


def archive_key(date: str, invocation_id: str) -> str:
    return f"{ARCHIVE_PREFIX}date={date}/{invocation_id}.jsonl"


class ArchivedDelivery(CamelModel):
    target_id: str
    delivery_id: UUID


class ArchiveRecord(CamelModel):
    """One event as the dispatcher handled it; exactly one of ``event_json`` and ``event_ref``."""

    schema_version: Literal[1] = 1
    archived_at: datetime
    invocation_id: str
    integration_id: str
    event_id: str
    conversation_id: str | None = None
    event_source: EventSource = "open-messaging"
    received_at: datetime
    # The event's text exactly as the intake queued it; or, for an event too large for SQS, where its
    # claim check is (it lives as long as the audit bucket's ExpireClaimChecks rule keeps it).
    event_json: str | None = None
    event_ref: S3Ref | None = None
    deliveries: list[ArchivedDelivery] = Field(default_factory=list)

    def to_line(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode() + b"\n"


class FoundRecords(list[ArchiveRecord]):
    """The archive records a search found, and how many of the lines it matched were no record: a
    damaged object, or a line another release wrote. A replay refused for want of a record says so."""

    unreadable: int = 0


def read_records(lines: Iterable[str | bytes]) -> FoundRecords:
    found = FoundRecords()
    for line in lines:
        try:
            found.append(ArchiveRecord.model_validate_json(line))
        except ValidationError:
            found.unreadable += 1
    return found


def records_of(
    tasks: Iterable[DeliveryTask], *, invocation_id: str, archived_at: datetime
) -> list[ArchiveRecord]:
    """One record per event among ``tasks`` (tasks of one event share its text: kept once). A task
    whose event cannot be read (a version-1 task holding NaN: poison) has nothing to replay."""
    events: dict[tuple[str, str, datetime], list[DeliveryTask]] = {}
    for task in tasks:
        if task.event_ref is None and task.event_json is None and _text(task) is None:
            continue
        events.setdefault((task.integration_id, task.event_id, task.received_at), []).append(task)
    return [_record(group, invocation_id, archived_at) for group in events.values()]


def _record(tasks: Sequence[DeliveryTask], invocation_id: str, archived_at: datetime) -> ArchiveRecord:
    first = tasks[0]
    deliveries = {t.target_id: t.delivery_id for t in tasks}
    return ArchiveRecord(
        archived_at=archived_at,
        invocation_id=invocation_id,
        integration_id=first.integration_id,
        event_id=first.event_id,
        conversation_id=first.conversation_id,
        event_source=first.event_source,
        received_at=first.received_at,
        event_json=None if first.event_ref else _text(first),
        event_ref=first.event_ref,
        deliveries=[ArchivedDelivery(target_id=t, delivery_id=d) for t, d in sorted(deliveries.items())],
    )


def _text(task: DeliveryTask) -> str | None:
    try:
        return task.inline_event_json()
    except UnreadableEvent:
        return None

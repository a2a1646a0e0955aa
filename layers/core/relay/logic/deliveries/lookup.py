"""The archived event an id names: its event id, one of its delivery ids, or its conversation id.

An event may be in several archive objects (its targets' records were handled in different
invocations, or retried): the records are merged by (integration, event id), keeping for each target
the delivery id first archived (a replay with a fresh id is archived too, later).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from relay.models.archive import ArchiveRecord
from relay.models.delivery import EventSource, S3Ref


@dataclass
class ArchivedEvent:
    integration_id: str
    event_id: str
    conversation_id: str | None
    event_source: EventSource
    received_at: datetime
    event_json: str | None
    event_ref: S3Ref | None
    deliveries: dict[str, UUID] = field(default_factory=dict)  # target id -> delivery id
    # The (target, delivery id) the id looked up was, when it was a delivery id.
    named_delivery: tuple[str, UUID] | None = None

    @property
    def targets(self) -> list[str]:
        return sorted(self.deliveries)


def find_events(records: Iterable[ArchiveRecord], ident: str) -> list[ArchivedEvent]:
    """The events ``ident`` names, oldest archived first. An event or delivery id names its own event
    only, even if another event's conversation id happens to be the same text."""
    events: dict[tuple[str, str], ArchivedEvent] = {}
    exact: set[tuple[str, str]] = set()
    for record in sorted(records, key=lambda r: r.archived_at):
        named = next((d for d in record.deliveries if str(d.delivery_id) == ident), None)
        if ident not in (record.event_id, record.conversation_id) and named is None:
            continue
        if ident == record.event_id or named is not None:
            exact.add((record.integration_id, record.event_id))
        event = events.setdefault(
            (record.integration_id, record.event_id),
            ArchivedEvent(
                integration_id=record.integration_id,
                event_id=record.event_id,
                conversation_id=record.conversation_id,
                event_source=record.event_source,
                received_at=record.received_at,
                event_json=record.event_json,
                event_ref=record.event_ref,
            ),
        )
        for delivery in record.deliveries:
            event.deliveries.setdefault(delivery.target_id, delivery.delivery_id)
        if named is not None:
            event.named_delivery = (named.target_id, named.delivery_id)
    return [event for key, event in events.items() if key in exact] or list(events.values())

"""Which targets an event goes to: each target's event filters (relay.models.event_filters) against what
the event is, read once per event. Pure and cheap: a target without filters costs five attribute
checks, a detail-type glob list is compiled once and cached."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

from relay.models.event_filters import EventFilters
from relay.models.genesys import text_field


class FilterReason(StrEnum):
    """Why a target's filters left an event out: the metric's ``reason`` dimension."""

    TYPE = "type"
    EVENT_TYPE = "event-type"
    DIRECTION = "direction"
    ORIGINATING_ENTITY = "originating-entity"
    DETAIL_TYPE = "detail-type"


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What the filters look at. An Open Messaging message has no detail-type; an EventBridge event
    has nothing but one."""

    message_type: str | None = None
    event_types: tuple[str, ...] = ()
    direction: str | None = None
    originating_entity: str | None = None
    detail_type: str | None = None

    @classmethod
    def of_open_message(cls, message: Mapping[str, Any]) -> EventFacts:
        """From a message that passed the Open Messaging schema (relay.models.genesys). The schema
        lets fields it does not check carry any JSON, so a fact that is not text is no fact."""
        events = message.get("events")
        return cls(
            message_type=text_field(message.get("type")),
            event_types=tuple(
                kind
                for event in (events if isinstance(events, list) else ())
                if isinstance(event, dict) and (kind := text_field(event.get("eventType"))) is not None
            ),
            direction=text_field(message.get("direction")),
            originating_entity=text_field(message.get("originatingEntity")),
        )

    @classmethod
    def of_eventbridge(cls, detail_type: str) -> EventFacts:
        return cls(detail_type=detail_type)


def filtered_out(filters: EventFilters, facts: EventFacts) -> FilterReason | None:
    """The first filter that leaves the event out, or None when the target should get it."""
    if filters.types is not None and facts.message_type not in filters.types:
        return FilterReason.TYPE
    if (
        filters.event_types is not None
        and facts.message_type == "Event"
        and not any(kind in filters.event_types for kind in facts.event_types)
    ):
        return FilterReason.EVENT_TYPE
    if filters.directions is not None and facts.direction not in filters.directions:
        return FilterReason.DIRECTION
    if (
        filters.originating_entities is not None
        and facts.originating_entity not in filters.originating_entities
    ):
        return FilterReason.ORIGINATING_ENTITY
    if filters.detail_types is not None and (
        facts.detail_type is None or not _glob_pattern(filters.detail_types).fullmatch(facts.detail_type)
    ):
        return FilterReason.DETAIL_TYPE
    return None


@lru_cache(maxsize=1024)
def _glob_pattern(globs: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern for a list of globs: ``*`` is any run of characters, the rest is literal."""
    alternatives = (".*".join(re.escape(part) for part in glob.split("*")) for glob in globs)
    return re.compile("|".join(f"(?:{alternative})" for alternative in alternatives), re.DOTALL)

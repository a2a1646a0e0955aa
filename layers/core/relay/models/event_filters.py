"""Which events a target receives: its event filters, part of the target config (docs/config-sync.md).

Every filter is optional; a target that sets none receives every event of its integration. A target
receives an event only if every filter it sets lets the event through:

    types                 Open Messaging message ``type``: Text, Event, Receipt, Structured
    eventTypes            the ``eventType`` of the events inside an ``Event`` message (Typing, Presence);
                          it refines Event messages only, other messages are not affected by it
    directions            Open Messaging ``direction``: Inbound, Outbound
    originatingEntities   Open Messaging ``originatingEntity``: Human, Bot
    detailTypes           globs (``*`` = any run of characters) over an EventBridge event's ``detail-type``

As in EventBridge's event patterns, a filter on a field lets through only events that carry one of
its values: a message without ``direction`` does not pass ``directions``, an EventBridge event does
not pass ``types``, an Open Messaging message does not pass ``detailTypes``. Values are matched as
Genesys spells them; the config may spell them in any case. An unknown value or an empty list is
refused with the reason (an empty list would let nothing through: leave the filter out instead).
The matching itself is relay.logic.intake.filters.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

MAX_FILTER_VALUES = 50
MAX_GLOB_CHARS = 256


class MessageType(StrEnum):
    TEXT = "Text"
    EVENT = "Event"
    RECEIPT = "Receipt"
    STRUCTURED = "Structured"


class MessageEventType(StrEnum):
    TYPING = "Typing"
    PRESENCE = "Presence"


class Direction(StrEnum):
    INBOUND = "Inbound"
    OUTBOUND = "Outbound"


class OriginatingEntity(StrEnum):
    HUMAN = "Human"
    BOT = "Bot"


def _one_of[E: StrEnum](kind: type[E], what: str) -> Any:
    """A validator for a list of ``kind`` values given in any case; unknown values name the known ones."""
    by_folded = {member.value.casefold(): member for member in kind}

    def check(values: Any) -> Any:
        if values is None or not isinstance(values, list | tuple):
            return values  # pydantic says what is wrong with it
        if not values:
            raise ValueError(f"an empty list of {what}s lets no event through; leave the filter out")
        chosen: list[E] = []
        for value in values:
            member = by_folded.get(value.casefold()) if isinstance(value, str) else None
            if member is None:
                known = ", ".join(m.value for m in kind)
                raise ValueError(f"unknown {what} {value!r} (known: {known})")
            if member not in chosen:
                chosen.append(member)
        return tuple(chosen)

    return BeforeValidator(check)


def _globs(values: Any) -> Any:
    """Detail-type globs, each once: repeats count once towards the limit, as in the other filters."""
    if not isinstance(values, list | tuple) or not all(isinstance(value, str) for value in values):
        return values  # pydantic says what is wrong with it
    if not values:
        raise ValueError("an empty list of detail-type globs lets no event through; leave the filter out")
    distinct = tuple(dict.fromkeys(values))
    if len(distinct) > MAX_FILTER_VALUES:
        raise ValueError(
            f"at most {MAX_FILTER_VALUES} detail-type globs (repeats count once), not {len(distinct)}"
        )
    return distinct


_Glob = Annotated[str, StringConstraints(min_length=1, max_length=MAX_GLOB_CHARS)]


def _bounded() -> Any:
    return Field(None, max_length=MAX_FILTER_VALUES)


class EventFilters(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")

    types: Annotated[tuple[MessageType, ...] | None, _one_of(MessageType, "message type")] = _bounded()
    event_types: Annotated[tuple[MessageEventType, ...] | None, _one_of(MessageEventType, "event type")] = (
        _bounded()
    )
    directions: Annotated[tuple[Direction, ...] | None, _one_of(Direction, "direction")] = _bounded()
    originating_entities: Annotated[
        tuple[OriginatingEntity, ...] | None, _one_of(OriginatingEntity, "originating entity")
    ] = _bounded()
    detail_types: Annotated[tuple[_Glob, ...] | None, BeforeValidator(_globs)] = _bounded()

    @property
    def filters_anything(self) -> bool:
        """False for the default: every event passes."""
        return any(
            value is not None
            for value in (
                self.types,
                self.event_types,
                self.directions,
                self.originating_entities,
                self.detail_types,
            )
        )

    def describe(self) -> str:
        """One line for operators, e.g. ``types=Text,Event directions=Outbound``; ``all`` when unset."""
        parts = [
            f"{to_camel(name)}={','.join(str(value) for value in values)}"
            for name, values in self
            if values is not None
        ]
        return " ".join(parts) or "all"

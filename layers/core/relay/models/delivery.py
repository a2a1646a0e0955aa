"""The SQS message contract between the intake (producer) and the dispatcher (consumer).

One message per (event, target), so each target retries and breaks independently. The body is a
``DeliveryTask`` as JSON; delivery bookkeeping rides in message attributes (names below) so that a
deferral re-queue or a dead-letter send can carry it without rewriting the body.

The event travels as its JSON *text* (``eventJson``, a JSON string), never as a re-encoded object, so
the targets receive the bytes Genesys sent. Messages of the earlier shape (``event`` as an object) are
still read.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from relay.errors import JsonTooDeep, NonFiniteNumber, UnreadableEvent
from relay.json_input import load_json

EventSource = Literal["open-messaging", "eventbridge"]

# Message attributes (String or Number) the dispatcher reads and writes.
ATTR_ATTEMPTS = "relay-attempts"  # delivery attempts already made (Number); survives deferral re-queues
ATTR_DEFERRALS = "relay-deferrals"  # times deferred because the target's breaker was open (Number)
# Set only on messages the relay itself dead-letters, so the DLQ says why:
ATTR_DLQ_REASON = "relay-dlq-reason"  # a DlqReason
ATTR_LAST_STATUS = "relay-last-status"
ATTR_LAST_ERROR = "relay-last-error"
ATTR_TARGET_ID = "relay-target-id"
ATTR_INTEGRATION_ID = "relay-integration-id"
# The dead-letter notes: they describe one failed run, so a redrive or a re-queue drops them.
DEAD_LETTER_ATTRIBUTES = frozenset(
    {ATTR_DLQ_REASON, ATTR_LAST_STATUS, ATTR_LAST_ERROR, ATTR_TARGET_ID, ATTR_INTEGRATION_ID}
)


class DlqReason(StrEnum):
    """Why the relay dead-lettered a message itself (``relay-dlq-reason``)."""

    EXHAUSTED = "exhausted"  # the last planned attempt failed
    PERMANENT_STATUS = "permanent-status"  # an answer that will never change (3xx, most 4xx)
    TARGET_GONE = "target-gone"  # the target answered 410
    POISON = "poison"  # the body is not a DeliveryTask, or its event cannot be sent
    UNKNOWN_TARGET = "unknown-target"
    TARGET_DISABLED = "target-disabled"
    # The event's claim-check object is gone from S3 (expired or deleted): no retry can send it.
    CLAIM_CHECK_MISSING = "claim-check-missing"


@dataclass(frozen=True)
class DeadLetterNote:
    """Why the relay dead-letters a message: the attributes it carries in the DLQ (relay-dlq-*)."""

    reason: DlqReason
    attempts: int
    integration_id: str | None = None
    target_id: str | None = None
    last_status: int | None = None
    last_error: str | None = None


# A message the queue's redrive policy moved (the backstop) carries no reason attribute; ``relay dlq``
# lists (and filters) it under this name. Never written by the relay.
BACKSTOP_REASON = "redrive-backstop"


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise NonFiniteNumber(literal)
    return value


# The most digits an integer a 64-bit float holds can have (its maximum is about 1.8e308). Checked
# before int(): Python refuses to convert integers of more than 4,300 digits at all.
_FLOAT_INTEGER_DIGITS = 309


def _finite_int(literal: str) -> int:
    digits = literal.lstrip("-")
    value = int(literal) if len(digits) <= _FLOAT_INTEGER_DIGITS else None
    if value is None or abs(value) > sys.float_info.max:
        raise NonFiniteNumber(literal)
    return value


def _refuse_constant(literal: str) -> float:
    raise NonFiniteNumber(literal)  # Python's json reads NaN and Infinity; JSON has neither


def load_finite_json(text: str | bytes, **options: Any) -> Any:
    """Parse JSON as RFC 8259 defines it: ``NonFiniteNumber`` for NaN, Infinity and numbers beyond a
    64-bit float (Python would read them as nan/inf), ``ValueError`` for anything else that is not JSON
    (``JsonTooDeep`` for nesting deeper than Python's recursion limit). ``options`` go to ``json.loads``
    (an ``object_pairs_hook``)."""
    return load_json(
        text, parse_float=_finite_float, parse_int=_finite_int, parse_constant=_refuse_constant, **options
    )


def check_event_json(text: str) -> str:
    """``text`` if it is one JSON object with finite numbers (what eventJson must be), else
    UnreadableEvent."""
    try:
        event = load_finite_json(text)
    except JsonTooDeep:
        raise UnreadableEvent("the event is nested too deeply") from None
    except ValueError:
        raise UnreadableEvent("the event is not JSON") from None
    if not isinstance(event, dict):
        raise UnreadableEvent("the event is not a JSON object")
    return text


def event_json_of(event: dict[str, Any]) -> str:
    """The one JSON text of an event that arrived without one (EventBridge hands the function a dict):
    compact, UTF-8 (not escaped), refusing NaN and Infinity with ``ValueError``."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class S3Ref(BaseModel):
    """Claim check: where an event too large for SQS was stored."""

    model_config = ConfigDict(frozen=True)
    bucket: str
    key: str


class DeliveryTask(BaseModel):
    """Body of a delivery-queue message: deliver this event to this target."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    # 2: the event as eventJson. 1 (read, no longer written): the event as an object.
    schema_version: Literal[1, 2] = 2
    # Stable across every retry of this (event, target): the envelope's deliveryId and webhook-id,
    # on which receivers deduplicate.
    delivery_id: UUID
    integration_id: str
    target_id: str
    event_id: str
    # The Genesys conversation the event belongs to, when it names one (Open Messaging's top-level
    # conversationId, an EventBridge event body's conversationId): the audit carries it, so an operator
    # can find every delivery of a conversation (relay deliveries show).
    conversation_id: str | None = None
    event_source: EventSource = "open-messaging"
    received_at: datetime
    # The event's JSON text exactly as received (a JSON string in the body, so the body stays ASCII).
    event_json: str | None = None
    event: dict[str, Any] | None = Field(None, description="schemaVersion 1 only: the event as an object")
    event_ref: S3Ref | None = Field(None, description="set instead of eventJson for claim-checked bodies")

    @model_validator(mode="after")
    def _exactly_one_payload(self) -> DeliveryTask:
        if sum(payload is not None for payload in (self.event_json, self.event, self.event_ref)) != 1:
            raise ValueError("exactly one of eventJson, event and eventRef must be set")
        return self

    def inline_event_json(self) -> str | None:
        """The event's JSON text when it travels in the message (None when claim-checked).

        A schemaVersion 1 message has only the parsed object: it is serialised once, as the intake
        would serialise an EventBridge event (UnreadableEvent for NaN or Infinity).
        """
        if self.event is not None:
            try:
                return event_json_of(self.event)
            except ValueError:
                raise UnreadableEvent("the event holds NaN or Infinity, which JSON cannot carry") from None
        return self.event_json

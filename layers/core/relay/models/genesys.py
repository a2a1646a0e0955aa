"""What Genesys Cloud sends the relay: Open Messaging outbound notifications and EventBridge events.

Genesys adds fields over time, so every model keeps fields it does not know (``extra="allow"``) and
the intake queues the event's JSON text exactly as received, never a re-dump of the model: the model
only decides whether an event is acceptable. Field names are Genesys' own (camelCase).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, TypeAdapter, model_validator

ID_MAX_LENGTH = 1024
NonEmpty = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH)]

# What the intake takes for the {integrationId} of a webhook URL (docs/openapi.yaml): Genesys' ids are
# UUIDs, and anything far from one is refused before it reaches DynamoDB (whose keys are limited to
# 2 KiB: a longer one would fail the Query and turn client input into a 5xx). An integration named by
# an id outside it could never be posted to.
INTEGRATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _json_integer(value: Any) -> Any:
    # Lax validation would read "5000" (or true) as an integer and let the text through to the
    # targets, which get the body as sent: the schema's integer must be a JSON number.
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON integer")
    return value


JsonInteger = Annotated[int, BeforeValidator(_json_integer)]

# RFC 3339 section 5.6 date-time: "T" and "Z" in either case, any number of fraction digits, and an
# offset (without one a time names no instant). Ranges are checked by datetime.fromisoformat.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_RFC3339_HINT = "an RFC 3339 date-time with an offset, e.g. 2026-03-25T13:20:05.493Z"


def text_field(value: object) -> str | None:
    """A field of a message, read as text: a non-blank string, else None. The schema leaves the
    fields it does not check free to carry any JSON, so readers of such fields go through this."""
    return value if isinstance(value, str) and value.strip() else None


def utc_instant(text: str) -> str:
    """The instant an RFC 3339 date-time names, spelled one way: UTC, "Z", the fraction kept in full.

    ``…T10:00:00Z``, ``…T10:00:00.000Z`` and ``…T12:00:00+02:00`` are one instant:
    ``…T10:00:00.000Z``. The fraction is padded to milliseconds and loses only zeros beyond them, so
    Genesys' own spelling (UTC, milliseconds) is already the normal form. ``ValueError`` otherwise.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"must be {_RFC3339_HINT}")
    day, clock, fraction, offset = match.groups()
    # RFC 3339 allows a leap second (23:59:60 UTC), which datetime cannot hold: it is read as second
    # 59 and spelled 60 again, so it stays an instant of its own.
    leap = clock.endswith(":60")
    try:
        moment = datetime.fromisoformat(
            f"{day}T{clock[:-2] + '59' if leap else clock}{'+00:00' if offset in 'Zz' else offset}"
        )
    except ValueError:
        raise ValueError(f"must be {_RFC3339_HINT} (a real date and time)") from None
    try:
        utc = moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # 9999-12-31T23:59:59-01:00, say: valid, but its UTC instant is in year 10000
        raise ValueError(
            "names an instant outside years 0001 to 9999 in UTC, which the relay cannot hold"
        ) from None
    if leap and (utc.hour, utc.minute) != (23, 59):
        raise ValueError(f"must be {_RFC3339_HINT} (a leap second is 23:59:60 UTC)")
    spelled = utc.isoformat()
    digits = (fraction or "").ljust(3, "0")
    digits = digits[:3] + digits[3:].rstrip("0")
    # Offsets are whole minutes, so the fraction is the same in every zone.
    return f"{spelled[:-2] + '60' if leap else spelled}.{digits}Z"


def _rfc3339(value: Any) -> Any:
    if not isinstance(value, str):  # pydantic's datetime would read a number as a Unix time
        raise ValueError(f"must be a string, {_RFC3339_HINT}")
    utc_instant(value)
    return value


# Kept as sent (a string): the identity needs its full precision, which datetime would cut to micros.
Rfc3339DateTime = Annotated[str, BeforeValidator(_rfc3339)]


class GenesysModel(BaseModel):
    """Tolerant of new fields and keeps them (they reach the targets untouched). A field is read only
    under Genesys' own name (its alias where it has one): ``event_type`` or ``detail_type`` is not
    ``eventType`` or ``detail-type`` to a target, so it must not satisfy the schema either."""

    model_config = ConfigDict(extra="allow")


# --- Open Messaging outbound notification -------------------------------------------------------------


class Participant(GenesysModel):
    id: NonEmpty
    id_type: str | None = Field(None, alias="idType")
    nickname: str | None = None
    first_name: str | None = Field(None, alias="firstName")
    last_name: str | None = Field(None, alias="lastName")


class Channel(GenesysModel):
    # The Open Messaging integration id.
    id: NonEmpty
    platform: str = "Open"
    type: str = "Private"
    to: Participant | None = None
    from_: Participant | None = Field(None, alias="from")
    # With ``id`` the message's identity: Genesys retries re-send both unchanged.
    time: Rfc3339DateTime
    message_id: str | None = Field(None, alias="messageId")
    metadata: dict[str, Any] | None = None


class Attachment(GenesysModel):
    id: str | None = None
    media_type: str = Field(alias="mediaType")  # Image | Video | Audio | File | Link
    url: str | None = None
    mime: str | None = None
    filename: str | None = None
    content_size_bytes: JsonInteger | None = Field(None, alias="contentSizeBytes", ge=0)


class Content(GenesysModel):
    content_type: str = Field(alias="contentType")  # "Attachment" (others appear for structured messages)
    attachment: Attachment | None = None


class Typing(GenesysModel):
    type: str = "On"
    duration: JsonInteger | None = Field(None, ge=0)


class MessageEvent(GenesysModel):
    event_type: NonEmpty = Field(alias="eventType")  # "Typing"
    typing: Typing | None = None


class _OpenMessageBase(GenesysModel):
    id: NonEmpty
    channel: Channel
    direction: str | None = None
    originating_entity: str | None = Field(None, alias="originatingEntity")
    # Bounded like the ids: an accepted event's conversation is kept whole (the audit, `deliveries show`).
    conversation_id: str | None = Field(None, alias="conversationId", max_length=ID_MAX_LENGTH)


class TextMessage(_OpenMessageBase):
    type: Literal["Text"]
    text: str | None = None
    content: list[Content] = Field(default_factory=list)

    @model_validator(mode="after")
    def _text_or_content(self) -> TextMessage:
        if not self.text and not self.content:
            raise ValueError("a Text message needs text or content")
        return self


class EventMessage(_OpenMessageBase):
    type: Literal["Event"]
    events: list[MessageEvent] = Field(min_length=1)


class ReceiptMessage(_OpenMessageBase):
    type: Literal["Receipt"]
    status: NonEmpty  # Sent | Delivered | Read | Failed | Published | Removed
    is_final_receipt: StrictBool | None = Field(None, alias="isFinalReceipt")  # "yes" is not true
    reasons: list[dict[str, Any]] = Field(default_factory=list)


class StructuredMessage(_OpenMessageBase):
    """Quick replies, cards, carousels: not documented for the webhook, accepted so none is lost."""

    type: Literal["Structured"]
    text: str | None = None
    content: list[Content] = Field(default_factory=list)


OPEN_MESSAGE_MODELS = (TextMessage, EventMessage, ReceiptMessage, StructuredMessage)
OpenMessage = Annotated[
    TextMessage | EventMessage | ReceiptMessage | StructuredMessage, Field(discriminator="type")
]
OPEN_MESSAGE = TypeAdapter(OpenMessage)


# --- Amazon EventBridge integration ------------------------------------------------------------------

PARTNER_SOURCE_PREFIX = "aws.partner/genesys.com"


class EventBridgeDetail(GenesysModel):
    """What the relay reads of ``detail``. Its other members (``version``, ``metadata``,
    ``timestamp``, ...) are kept whatever their JSON value: typed, a shape the relay never reads would
    refuse a genuine event, and the intake-failures queue could never redrive it."""

    topic_name: NonEmpty = Field(alias="topicName")
    event_body: dict[str, Any] = Field(alias="eventBody")


class GenesysEventBridgeEvent(GenesysModel):
    """An EventBridge event from Genesys' partner event source ``aws.partner/genesys.com/...``."""

    version: str = "0"
    id: NonEmpty
    detail_type: NonEmpty = Field(alias="detail-type")
    source: NonEmpty
    account: str | None = None
    time: datetime | None = None
    region: str | None = None
    resources: list[str] = Field(default_factory=list)
    detail: EventBridgeDetail

    @model_validator(mode="after")
    def _genesys_source(self) -> GenesysEventBridgeEvent:
        if not self.source.startswith(PARTNER_SOURCE_PREFIX):
            raise ValueError(f"source must start with {PARTNER_SOURCE_PREFIX}")
        return self

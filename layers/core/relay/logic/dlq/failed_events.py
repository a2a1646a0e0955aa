"""The EventBridge path's two failure queues: the event each message holds and why it is there, and
their groups for ``relay dlq list --queue eventbridge|intake-failures`` (``FailedEventGroups``).

- ``eventbridge``: the Genesys rule's dead-letter queue (EventBridgeDeadLetterQueue). EventBridge
  could not hand the event to the IntakeFunction at all. The body is the event as EventBridge would
  have delivered it; the message attributes ``RULE_ARN``, ``TARGET_ARN``, ``ERROR_CODE`` and
  ``ERROR_MESSAGE`` say why (``ERROR_CODE`` is the reason shown).
- ``intake-failures``: the IntakeFunction's on-failure destination (IntakeFailureQueue). The intake
  ran and failed every try. The body is a Lambda destination record ``{version, timestamp,
  requestContext{requestId, functionArn, condition, approximateInvokeCount}, requestPayload,
  responseContext{statusCode, executedVersion, functionError}, responsePayload}``; ``requestPayload``
  is the event, ``<condition>/<functionError>`` the reason shown and ``responsePayload.errorType``
  the intake's error.

Only ids, reasons, error types and counts leave this module, never a body or an error message: events
hold customer messages. relay.local.eventbridge writes exactly these records locally.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from relay.json_input import load_json
from relay.logic.dlq.letters import UNPARSEABLE
from relay.logic.intake.http_api import is_eventbridge_event
from relay.models.queue import ReceivedMessage

FailureQueue = Literal["eventbridge", "intake-failures"]
FAILURE_QUEUES: tuple[FailureQueue, ...] = ("eventbridge", "intake-failures")
ATTR_ERROR_CODE = "ERROR_CODE"  # the rule's dead-letter queue: why EventBridge gave up
UNKNOWN = "unknown"
# What a reason, an error type or an event id may look like to be shown (AWS codes, Python class names,
# UUIDs); anything else is written by someone we need not trust with the terminal.
_SHOWABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/$-]{0,99}")


@dataclass(frozen=True)
class FailedEvent:
    """One failure-queue message: why it is there, and the EventBridge event it holds."""

    message_id: str
    reason: str
    error_type: str | None
    event: dict[str, Any] | None  # None: the message holds no EventBridge event
    sent_timestamp_ms: int | None

    @property
    def event_id(self) -> str | None:
        return _showable(self.event.get("id")) if self.event is not None else None


def read_failed_event(queue: FailureQueue, message: ReceivedMessage) -> FailedEvent:
    """The event a message of ``queue`` holds, and why it is there."""
    try:
        body: Any = load_json(message.body)
    except ValueError:
        body = None
    if queue == "eventbridge":
        code = message.attributes.get(ATTR_ERROR_CODE, {}).get("StringValue")
        reason, error_type, event = _showable(code) or UNKNOWN, None, body
    elif isinstance(body, dict):
        reason = "/".join(
            _showable(_field(body, context, name)) or UNKNOWN
            for context, name in (("requestContext", "condition"), ("responseContext", "functionError"))
        )
        error_type, event = (
            _showable(_field(body, "responsePayload", "errorType")),
            body.get("requestPayload"),
        )
    else:
        reason, error_type, event = UNPARSEABLE, None, None
    if not (isinstance(event, dict) and is_eventbridge_event(event)):
        event = None
    return FailedEvent(message.message_id, reason, error_type, event, message.sent_timestamp_ms)


def _field(record: Mapping[str, Any], part: str, name: str) -> Any:
    section = record.get(part)
    return section.get(name) if isinstance(section, dict) else None


def _showable(value: Any) -> str | None:
    return value if isinstance(value, str) and _SHOWABLE.fullmatch(value) else None


@dataclass
class FailedEventGroup:
    """Failed events with the same reason and error type: how many, the oldest, one event id."""

    reason: str
    error_type: str | None
    count: int = 0
    oldest_sent_ms: int | None = None
    sample_event_id: str | None = None
    sample_message_id: str | None = None

    def add(self, failed: FailedEvent) -> None:
        self.count += 1
        sent = failed.sent_timestamp_ms
        if sent is not None and (self.oldest_sent_ms is None or sent < self.oldest_sent_ms):
            self.oldest_sent_ms = sent
        self.sample_event_id = self.sample_event_id or failed.event_id
        self.sample_message_id = self.sample_message_id or failed.message_id

    def to_json(self, now_ms: int) -> dict[str, Any]:
        oldest = self.oldest_sent_ms
        return {
            "reason": self.reason,
            "errorType": self.error_type,
            "count": self.count,
            "oldestAgeSeconds": None if oldest is None else max(0, (now_ms - oldest) // 1000),
            "sampleEventId": self.sample_event_id,
            "sampleMessageId": self.sample_message_id,
        }


class FailedEventGroups:
    """The messages of one failure queue, grouped by reason and error type."""

    def __init__(self, queue: FailureQueue) -> None:
        self._queue = queue
        self._groups: dict[tuple[str, str | None], FailedEventGroup] = {}

    def add_message(self, message: ReceivedMessage) -> None:
        self.read(message)

    def read(self, message: ReceivedMessage) -> FailedEvent:
        """The message's event and why it failed, counted in its group."""
        failed = read_failed_event(self._queue, message)
        key = (failed.reason, failed.error_type)
        self._groups.setdefault(key, FailedEventGroup(*key)).add(failed)
        return failed

    def sorted(self) -> list[FailedEventGroup]:
        """Largest groups first, then by reason and error type."""
        return sorted(self._groups.values(), key=lambda g: (-g.count, g.reason, g.error_type or ""))

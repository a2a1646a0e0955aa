"""What may be shown about a DLQ message (ids and bookkeeping, never the body), grouped by reason,
integration and target; the filter ``relay dlq redrive`` chooses by; a redriven copy's attributes."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from relay.models.delivery import (
    ATTR_ATTEMPTS,
    ATTR_DEFERRALS,
    ATTR_DLQ_REASON,
    ATTR_INTEGRATION_ID,
    ATTR_LAST_ERROR,
    ATTR_LAST_STATUS,
    ATTR_TARGET_ID,
    BACKSTOP_REASON,
    DEAD_LETTER_ATTRIBUTES,
    DeliveryTask,
    DlqReason,
)
from relay.models.queue import ReceivedMessage

# Stands in for the target and integration of a body that is not a DeliveryTask.
UNPARSEABLE = "unparseable"
# What ``relay dlq`` lists and filters by: the relay's own reasons, and the backstop's pseudo reason.
DLQ_REASONS = (*(reason.value for reason in DlqReason), BACKSTOP_REASON)
# What the dispatcher's error codes look like (oauth-token-failed, http-503, connect-timeout): only such
# a token is shown. The attribute is not ours to trust, and an unattempted record's is a sentence.
_ERROR_CODE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


@dataclass(frozen=True)
class DeadLetter:
    """What may be shown about one DLQ message: ids and bookkeeping, never the body."""

    message_id: str
    reason: str
    integration_id: str
    target_id: str
    delivery_id: str | None
    last_status: str | None
    sent_timestamp_ms: int | None
    last_error: str | None = None  # the error code of the last attempt (relay-last-error)
    accepted_at: datetime | None = None  # when the intake accepted its event (None: the body is no task)
    event_id: str | None = None  # the task's event id (None: the body is no task)


def _string_attribute(attributes: Mapping[str, Mapping[str, Any]], name: str) -> str | None:
    value = attributes.get(name, {}).get("StringValue")
    return str(value) if value else None


def classify(message: ReceivedMessage) -> DeadLetter:
    """Reason, integration and target of a DLQ message: its attributes first, then its body."""
    attributes = message.attributes
    try:
        task: DeliveryTask | None = DeliveryTask.model_validate_json(message.body)
    except ValidationError:
        task = None
    last_status = _string_attribute(attributes, ATTR_LAST_STATUS)
    last_error = _string_attribute(attributes, ATTR_LAST_ERROR)
    return DeadLetter(
        message_id=message.message_id,
        reason=_string_attribute(attributes, ATTR_DLQ_REASON) or BACKSTOP_REASON,
        integration_id=_string_attribute(attributes, ATTR_INTEGRATION_ID)
        or (task.integration_id if task else UNPARSEABLE),
        target_id=_string_attribute(attributes, ATTR_TARGET_ID) or (task.target_id if task else UNPARSEABLE),
        delivery_id=str(task.delivery_id) if task else None,
        # A status is a number; anything else is not shown (it is not ours to trust).
        last_status=last_status if last_status and last_status.isdigit() else None,
        sent_timestamp_ms=message.sent_timestamp_ms,
        last_error=last_error if last_error and _ERROR_CODE.fullmatch(last_error) else None,
        accepted_at=task.received_at if task else None,
        event_id=task.event_id if task else None,
    )


def in_acceptance_order(
    letters: Sequence[tuple[ReceivedMessage, DeadLetter]],
) -> list[tuple[ReceivedMessage, DeadLetter]]:
    """``letters`` (each message with what ``classify`` read of it) with each conversation's letters (an
    ordered DLQ's message group) in the order the intake accepted their events, in the places the
    group's letters held.

    A FIFO DLQ holds a conversation's letters in the order they were dead-lettered, not accepted: a
    letter redriven alone (``--max``, a filter) that fails again sits behind later letters of its
    conversation. Letters without a group keep their places, and so does a group with a letter whose
    body is not a task (its place in the conversation is unknown)."""
    places: dict[str, list[int]] = {}
    for index, (message, _) in enumerate(letters):
        if message.group_id:
            places.setdefault(message.group_id, []).append(index)
    ordered = list(letters)
    for indexes in places.values():
        accepted = [(letters[i][1].accepted_at, i) for i in indexes]
        if len(indexes) < 2 or any(at is None for at, _ in accepted):
            continue
        # Ties (one instant) keep the DLQ's order: the index is the second key.
        for place, (_, index) in zip(indexes, sorted(accepted), strict=True):
            ordered[place] = letters[index]
    return ordered


@dataclass(frozen=True)
class RedriveFilter:
    """Empty sets match everything; a value set must contain the message's value."""

    targets: frozenset[str] = frozenset()
    integrations: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        targets: Sequence[str] | None = None,
        integrations: Sequence[str] | None = None,
        reasons: Sequence[str] | None = None,
    ) -> RedriveFilter:
        return cls(frozenset(targets or ()), frozenset(integrations or ()), frozenset(reasons or ()))

    @property
    def active(self) -> bool:
        return bool(self.targets or self.integrations or self.reasons)

    def matches(self, letter: Filtered) -> bool:
        return (
            (not self.targets or letter.target_id in self.targets)
            and (not self.integrations or letter.integration_id in self.integrations)
            and (not self.reasons or letter.reason in self.reasons)
        )

    def named(self) -> set[Named]:
        """Its target and integration values as the command line names them (``("--target", id)``)."""
        return {("--target", t) for t in self.targets} | {("--integration", i) for i in self.integrations}


# A filter value as the command line names it: ("--target", "crm").
Named = tuple[str, str]


class Filtered(Protocol):
    """What a filter reads of a letter (a DeadLetter, or a letter relay dlq discard reads)."""

    @property
    def target_id(self) -> str | None: ...
    @property
    def integration_id(self) -> str | None: ...
    @property
    def reason(self) -> str: ...


def named_by(letter: Filtered) -> set[Named]:
    """The filter values ``letter`` carries, as the command line names them."""
    named = {("--target", letter.target_id), ("--integration", letter.integration_id)}
    return {(flag, value) for flag, value in named if value is not None}


def unmatched(wanted: set[Named], carried: set[Named]) -> list[str]:
    """The filter values no letter read carried (a typo, or a name for an id), as typed."""
    return [f"{flag} {value}" for flag, value in sorted(wanted - carried)]


@dataclass
class DeadLetterGroup:
    reason: str
    integration_id: str
    target_id: str
    count: int = 0
    oldest_sent_ms: int | None = None
    sample_delivery_id: str | None = None
    sample_message_id: str | None = None
    last_statuses: set[str] = field(default_factory=set)
    last_errors: set[str] = field(default_factory=set)

    def add(self, letter: DeadLetter) -> None:
        self.count += 1
        if letter.sent_timestamp_ms is not None and (
            self.oldest_sent_ms is None or letter.sent_timestamp_ms < self.oldest_sent_ms
        ):
            self.oldest_sent_ms = letter.sent_timestamp_ms
        if self.sample_delivery_id is None and letter.delivery_id is not None:
            self.sample_delivery_id = letter.delivery_id
        if self.sample_message_id is None:
            self.sample_message_id = letter.message_id
        if letter.last_status:
            self.last_statuses.add(letter.last_status)
        if letter.last_error:
            self.last_errors.add(letter.last_error)

    def oldest_age_seconds(self, now_ms: int) -> int | None:
        return None if self.oldest_sent_ms is None else max(0, (now_ms - self.oldest_sent_ms) // 1000)

    def to_json(self, now_ms: int) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "integrationId": self.integration_id,
            "targetId": self.target_id,
            "count": self.count,
            "oldestAgeSeconds": self.oldest_age_seconds(now_ms),
            "sampleDeliveryId": self.sample_delivery_id,
            "sampleMessageId": self.sample_message_id,
            "lastStatuses": sorted(self.last_statuses),
            "lastErrors": sorted(self.last_errors),
        }


class DeadLetterGroups:
    """Dead letters grouped by (reason, integration, target); a target id is unique per integration."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str, str], DeadLetterGroup] = {}

    def add_message(self, message: ReceivedMessage) -> None:
        self.add(classify(message))

    def add(self, letter: DeadLetter) -> None:
        key = (letter.reason, letter.integration_id, letter.target_id)
        if key not in self._groups:
            self._groups[key] = DeadLetterGroup(*key)
        self._groups[key].add(letter)

    @property
    def total(self) -> int:
        return sum(group.count for group in self._groups.values())

    def sorted(self) -> list[DeadLetterGroup]:
        """Largest groups first, then by reason, integration and target."""
        return sorted(
            self._groups.values(), key=lambda g: (-g.count, g.reason, g.integration_id, g.target_id)
        )


def group_dead_letters(letters: Sequence[DeadLetter]) -> list[DeadLetterGroup]:
    groups = DeadLetterGroups()
    for letter in letters:
        groups.add(letter)
    return groups.sorted()


def redrive_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The attributes of a redriven copy: a fresh try, so no attempts, deferrals or dead-letter notes."""
    kept = {
        name: value
        for name, value in attributes.items()
        if name not in DEAD_LETTER_ATTRIBUTES and name not in (ATTR_ATTEMPTS, ATTR_DEFERRALS)
    }
    kept[ATTR_ATTEMPTS] = {"DataType": "Number", "StringValue": "0"}
    return kept

"""The SQS message contract between the intake (producer) and the dispatcher (consumer).

One message per (event, target), so each target retries and breaks independently. The body is a
``DeliveryTask`` as JSON; delivery bookkeeping rides in message attributes (names below) so that a
deferral re-queue or a dead-letter send can carry it without rewriting the body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

EventSource = Literal["open-messaging", "eventbridge"]

# Message attributes (String or Number) the dispatcher reads and writes.
ATTR_ATTEMPTS = "relay-attempts"  # delivery attempts already made (Number); survives deferral re-queues
ATTR_DEFERRALS = "relay-deferrals"  # times deferred because the target's breaker was open (Number)
# Set only on messages the relay itself dead-letters, so the DLQ says why:
ATTR_DLQ_REASON = "relay-dlq-reason"  # e.g. exhausted, permanent-status, target-gone, poison, unknown-target
ATTR_LAST_STATUS = "relay-last-status"
ATTR_LAST_ERROR = "relay-last-error"
ATTR_TARGET_ID = "relay-target-id"
ATTR_INTEGRATION_ID = "relay-integration-id"
# The dead-letter notes: they describe one failed run, so a redrive or a re-queue drops them.
DEAD_LETTER_ATTRIBUTES = frozenset(
    {ATTR_DLQ_REASON, ATTR_LAST_STATUS, ATTR_LAST_ERROR, ATTR_TARGET_ID, ATTR_INTEGRATION_ID}
)


class S3Ref(BaseModel):
    """Claim check: where an event too large for SQS was stored."""

    model_config = ConfigDict(frozen=True)
    bucket: str
    key: str


class DeliveryTask(BaseModel):
    """Body of a delivery-queue message: deliver this event to this target."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    schema_version: Literal[1] = 1
    # Stable across every retry of this (event, target): the envelope's deliveryId and webhook-id,
    # on which receivers deduplicate.
    delivery_id: UUID
    integration_id: str
    target_id: str
    event_id: str
    event_source: EventSource = "open-messaging"
    received_at: datetime
    event: dict[str, Any] | None = None
    event_ref: S3Ref | None = Field(None, description="set instead of event for claim-checked bodies")

    @model_validator(mode="after")
    def _exactly_one_payload(self) -> DeliveryTask:
        if (self.event is None) == (self.event_ref is None):
            raise ValueError("exactly one of event and eventRef must be set")
        return self

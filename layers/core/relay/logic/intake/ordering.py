"""Which conversation an event belongs to, and the message group its ordered tasks go to.

An ordered target (``ordering: conversation``) receives a conversation's events one at a time, in the
order the intake accepted them: its tasks go to the FIFO queue in a message group per (target,
conversation). The conversation is the event's ordering key:

- Open Messaging: the top-level ``conversationId`` when present, else the customer's id on the
  channel: ``channel.to.id`` for an outbound message, ``channel.from.id`` for an inbound one;
- EventBridge: the ``conversationId`` in the detail's event body, when there is one.

An event without a key is delivered unordered (the standard queue) and counted (``TasksUnordered``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from relay.models.genesys import text_field


def open_messaging_key(message: Mapping[str, Any]) -> str | None:
    """The conversation of an Open Messaging message (already validated), or None."""
    conversation = text_field(message.get("conversationId"))
    if conversation:
        return f"conversation:{conversation}"
    channel = message.get("channel") or {}
    direction = str(message.get("direction") or "").lower()
    side = {"outbound": "to", "inbound": "from"}.get(direction)
    party = channel.get(side) if side else None
    customer = text_field(party.get("id")) if isinstance(party, Mapping) else None
    return f"customer:{customer}" if customer else None


def eventbridge_key(event: Mapping[str, Any]) -> str | None:
    """The conversation of a Genesys EventBridge event (already validated), or None."""
    detail = event.get("detail") or {}
    body = detail.get("eventBody") if isinstance(detail, Mapping) else None
    conversation = text_field(body.get("conversationId")) if isinstance(body, Mapping) else None
    return f"conversation:{conversation}" if conversation else None


def message_group(integration_id: str, target_id: str, key: str) -> str:
    """The FIFO message group of one conversation of one target: 64 hex characters (SQS allows 128,
    and only some characters; a digest keeps customer ids out of queue metadata)."""
    scoped = "\n".join((integration_id, target_id, key))
    return hashlib.sha256(scoped.encode("utf-8")).hexdigest()

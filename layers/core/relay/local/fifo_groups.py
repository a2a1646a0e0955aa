"""FIFO message groups as Lambda's event source keeps them, for the local poller over moto.

SQS hands out a FIFO group's messages in order and none of a group while an earlier one is in flight.
moto (5.x) keeps the second rule but not the first: when several received messages of one group
become visible again together (the ordered dispatcher holds a group that way), one receive skips the
group's head and returns a later message alone, out of order. ``FifoGroups`` remembers, per group,
the messages handed to the function and not yet deleted; a receive that brings some of a group's
messages without an earlier one still outstanding gives them straight back (visibility 0), so the
next receive returns the group from its head, in order.

A message received ``maxReceiveCount`` times is forgotten: its next receive moves it to the
dead-letter queue (the redrive backstop), and it will not come back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

Message = dict[str, Any]  # a ReceiveMessage message


def group_of(message: Message) -> str | None:
    group = (message.get("Attributes") or {}).get("MessageGroupId")
    return str(group) if group else None


class FifoGroups:
    def __init__(self, max_receive_count: int | None = None) -> None:
        self._max_receive_count = max_receive_count
        self._outstanding: dict[str, set[str]] = {}  # group -> message ids handed out, not deleted
        self._lock = threading.Lock()

    def in_order(self, messages: list[Message]) -> tuple[list[Message], list[Message]]:
        """(what may be invoked, what must go straight back): a group with an outstanding message
        missing from ``messages`` goes back whole."""
        received: dict[str, set[str]] = {}
        for message in messages:
            group = group_of(message)
            if group is not None:
                received.setdefault(group, set()).add(str(message["MessageId"]))
        with self._lock:
            behind = {group for group, ids in received.items() if self._outstanding.get(group, set()) - ids}
        keep = [m for m in messages if group_of(m) not in behind]
        back = [m for m in messages if group_of(m) in behind]
        return keep, back

    def settled(self, invoked: Iterable[Message], deleted: set[str]) -> None:
        """After an invocation: deleted messages are done; the others are outstanding until deleted."""
        with self._lock:
            for message in invoked:
                group, message_id = group_of(message), str(message["MessageId"])
                if group is None:
                    continue
                ids = self._outstanding.setdefault(group, set())
                if message_id in deleted or self._redriven_next(message):
                    ids.discard(message_id)
                else:
                    ids.add(message_id)
                if not ids:
                    del self._outstanding[group]

    def _redriven_next(self, message: Message) -> bool:
        if self._max_receive_count is None:
            return False
        count = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", "1"))
        return count >= self._max_receive_count

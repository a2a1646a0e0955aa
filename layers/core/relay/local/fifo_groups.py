"""FIFO message groups as Lambda's event source keeps them, for the local poller over moto.

SQS hands out a FIFO group's messages in order and none of a group while an earlier one is in flight.
moto (5.x) keeps the second rule but not the first: when several received messages of one group
become visible again together (the ordered dispatcher holds a group that way), one receive skips the
group's head and returns a later message alone, out of order. ``FifoGroups`` remembers, per group,
the messages handed to the function and not yet deleted (``outstanding``, in the order they were
handed out: always the group's oldest messages). A receive may bring a group's messages only from its
head: the first outstanding ones in their order, and anything newer only after all of them. A receive
that does not gives that group's messages straight back (visibility 0), so the next receive returns
the group from its head. A receive that brings only the first few outstanding ones (its ten messages
ran out) is fine: the rest of the group stays blocked behind them, as in SQS.

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
        # group -> ids of the messages handed out and not deleted, oldest first
        self._outstanding: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def in_order(self, messages: list[Message]) -> tuple[list[Message], list[Message]]:
        """(what may be invoked, what must go straight back): a group whose received messages do not
        start at its head goes back whole. What may be invoked is outstanding from now on: a receive
        made while it is in flight must not pass it (moto hands out a held message again as soon as
        its hold ends, even while the invocation that held it is still running)."""
        received: dict[str, list[str]] = {}
        for message in messages:
            group = group_of(message)
            if group is not None:
                received.setdefault(group, []).append(str(message["MessageId"]))
        behind: set[str] = set()
        with self._lock:
            for group, ids in received.items():
                outstanding = self._outstanding.get(group, [])
                if not _from_head(ids, outstanding):
                    behind.add(group)
                elif len(ids) > len(outstanding):
                    self._outstanding[group] = ids
        keep = [m for m in messages if group_of(m) not in behind]
        back = [m for m in messages if group_of(m) in behind]
        return keep, back

    def settled(self, invoked: Iterable[Message], deleted: set[str]) -> None:
        """After an invocation: its deleted messages are done (and those the redrive policy takes
        next); the rest stay outstanding, in their order, until deleted."""
        done: dict[str, set[str]] = {}
        for message in invoked:
            group, message_id = group_of(message), str(message["MessageId"])
            if group is not None and (message_id in deleted or self._redriven_next(message)):
                done.setdefault(group, set()).add(message_id)
        with self._lock:
            for group, ids in done.items():
                left = [i for i in self._outstanding.get(group, []) if i not in ids]
                if left:
                    self._outstanding[group] = left
                else:
                    self._outstanding.pop(group, None)

    def _redriven_next(self, message: Message) -> bool:
        if self._max_receive_count is None:
            return False
        count = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", "1"))
        return count >= self._max_receive_count


def _from_head(received: list[str], outstanding: list[str]) -> bool:
    """Whether ``received`` (one group's, in receive order) starts at the group's head: the first
    outstanding messages in order, and newer ones only once every outstanding one is there."""
    if len(received) <= len(outstanding):
        return received == outstanding[: len(received)]
    return received[: len(outstanding)] == outstanding

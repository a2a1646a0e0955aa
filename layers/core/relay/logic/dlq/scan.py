"""Receive every message of a queue once without deleting (``Scan``, ``work_through``), and
``relay dlq list``: a queue's messages grouped by why they are there, every message put back when done."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay.logic.dlq.letters import DeadLetterGroups
from relay.models.queue import ReceivedMessage
from relay.ports import DeadLetterQueues


class Scan:
    """Receive every message of a queue once, without deleting; ``release`` puts the rest back.

    Received messages stay invisible for ``visibility_seconds`` so each receive brings new ones; a
    message seen again (its visibility ran out in a long run) is not yielded twice. The scan ends at
    an empty receive, or after a few receives that brought nothing new.
    """

    IDLE_RECEIVES = 3

    def __init__(
        self, queues: DeadLetterQueues, queue_url: str, visibility_seconds: int, wait_seconds: int
    ) -> None:
        self._queues = queues
        self._queue_url = queue_url
        self._visibility = visibility_seconds
        self._wait = wait_seconds
        self._seen: set[str] = set()
        self._held: dict[str, str] = {}  # message id -> latest receipt handle, until deleted

    def batches(self, stop: StopRequested) -> Iterator[list[ReceivedMessage]]:
        """Batches until the queue is exhausted, or until ``stop`` says so before a receive."""
        idle = 0
        while idle < self.IDLE_RECEIVES and not stop():
            received = self._queues.receive(
                self._queue_url, visibility_seconds=self._visibility, wait_seconds=self._wait
            )
            if not received:
                return
            for message in received:
                self._held[message.message_id] = message.receipt_handle
            fresh = [m for m in received if m.message_id not in self._seen]
            self._seen.update(m.message_id for m in fresh)
            idle = 0 if fresh else idle + 1
            if fresh:
                yield fresh

    def deleted(self, message_id: str) -> None:
        self._held.pop(message_id, None)

    def release(self) -> None:
        self._queues.release(self._queue_url, list(self._held.values()))
        self._held.clear()


class ReportGroup(Protocol):
    """One row of a listing: a group of messages that failed for the same reason."""

    def to_json(self, now_ms: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DeadLetterReport:
    """What ``relay dlq list`` shows of a queue (the delivery DLQ or a failure queue)."""

    scanned: int
    depth: int
    groups: Sequence[ReportGroup]
    now_ms: int
    limited: bool  # --max stopped the scan before the queue was exhausted

    def to_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "approximateDepth": self.depth,
            "limited": self.limited,
            "groups": [group.to_json(self.now_ms) for group in self.groups],
        }


@dataclass(frozen=True)
class Progress:
    """Where a long run is; ``total`` is SQS's approximate depth when the run started."""

    phase: str
    done: int
    total: int | None
    moved: int = 0
    failed: int = 0


ProgressSink = Callable[[Progress], None]
# Asked between batches: True ends a run early, its batch in hand finished and the rest put back.
StopRequested = Callable[[], bool]


def no_progress(progress: Progress) -> None:
    return None


def now_ms(now: Callable[[], float]) -> int:
    return int(now() * 1000)


def never() -> bool:
    return False


def work_through(
    queues: DeadLetterQueues,
    queue_url: str,
    handle: Callable[[list[ReceivedMessage], Scan], bool],
    *,
    visibility_seconds: int,
    wait_seconds: int,
    stop: StopRequested = never,
) -> None:
    """Hand the queue's messages to ``handle`` a batch at a time, each message once, until the queue is
    exhausted, ``handle`` answers False (enough, or a dependency failed) or ``stop`` asks (the operator
    pressed Ctrl-C: the batch in hand is finished first, so nothing is left half moved or received and
    hidden). Every message it did not delete (``scan.deleted``) is put back at the end."""
    scan = Scan(queues, queue_url, visibility_seconds, wait_seconds)
    try:
        for batch in scan.batches(stop):
            if not handle(batch, scan):
                return
    finally:
        scan.release()


class MessageGroups(Protocol):
    """What ``relay dlq list`` groups a queue's messages into (by reason, and target where there is one)."""

    def add_message(self, message: ReceivedMessage) -> None: ...

    def sorted(self) -> Sequence[ReportGroup]: ...


def list_dead_letters(
    queues: DeadLetterQueues,
    queue_url: str,
    *,
    groups: MessageGroups | None = None,
    max_messages: int | None = None,
    visibility_seconds: int = 30,
    wait_seconds: int = 1,
    progress: ProgressSink = no_progress,
    now: Callable[[], float] = time.time,
    stop: StopRequested = never,
) -> DeadLetterReport:
    """Group a queue's messages (the delivery DLQ's by reason and target, unless ``groups`` says how);
    every message is put back when done."""
    grouped = groups or DeadLetterGroups()
    depth = queues.approximate_depth(queue_url)
    scanned = 0
    limited = False

    def look(batch: list[ReceivedMessage], scan: Scan) -> bool:
        nonlocal scanned, limited
        for message in batch:
            if max_messages is not None and scanned >= max_messages:
                limited = True
                return False
            grouped.add_message(message)
            scanned += 1
        progress(Progress("scan", scanned, depth))
        return True

    work_through(
        queues, queue_url, look, visibility_seconds=visibility_seconds, wait_seconds=wait_seconds, stop=stop
    )
    return DeadLetterReport(scanned, depth, grouped.sorted(), now_ms(now), limited)

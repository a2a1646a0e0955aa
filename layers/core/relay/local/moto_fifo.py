"""SQS FIFO receives as SQS makes them, installed in the moto server's child process (aws_stack).

SQS hands out a FIFO message group only from its oldest message, and nothing of a group while one of
its messages is in flight. moto (5.x) decides which groups are in flight from a snapshot taken when a
ReceiveMessage starts, and refreshes it halfway through a scan whenever it meets a message whose
visibility ran out; a delete made meanwhile by another request is unseen until then. So one long poll
can skip a group's oldest messages under the stale snapshot and, after the refresh, hand out a later
message of the same group: the ordering proof caught message 8 of a conversation delivered before 6
and 7, which had never been received. The same refresh makes moto skip a held group's head when the
head and the messages behind it become visible together, and return a later one alone.

``receive_fifo`` replaces the scan for FIFO queues (standard queues keep moto's): one clock reading per
scan, and a group stops at its first message that is in flight or delayed. A long poll scans again
every POLL_SECONDS until something is there or its wait is over.

SQS drops a message whose deduplication id it has accepted in the last 5 minutes, whatever became of
the first (still queued, received or deleted), within its message group when the queue's
``DeduplicationScope`` is ``messageGroup``. moto compares it only with the messages still in the queue
and ignores the scope, so a repeat sent after the first was delivered and deleted was queued again:
``not_a_repeat`` keeps every accepted id for the window, per queue and scope, as SQS does.
"""

from __future__ import annotations

import threading
import time
from copy import deepcopy
from typing import Any

from moto.core.utils import unix_time_millis
from moto.sqs import models
from moto.sqs.exceptions import InvalidParameterValue, MissingParameter

# How often a waiting FIFO long poll looks again: a held group comes back when its visibility runs
# out, which no request announces.
POLL_SECONDS = 0.05
# SQS's deduplication interval.
DEDUPLICATION_SECONDS = 300


def install() -> None:
    """Route FIFO queues' ReceiveMessage through ``receive_fifo``."""
    moto_receive = models.SQSBackend.receive_message

    def receive_message(
        self: models.SQSBackend,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> list[models.Message]:
        queue = self.get_queue(queue_name)
        if not queue.fifo_queue:
            return moto_receive(
                self, queue_name, count, wait_seconds_timeout, visibility_timeout, message_attribute_names
            )
        return receive_fifo(
            self, queue, count, wait_seconds_timeout, visibility_timeout, message_attribute_names or []
        )

    models.SQSBackend.receive_message = receive_message  # type: ignore[method-assign]

    moto_add = models.Queue.add_message

    def add_message(self: models.Queue, message: models.Message) -> None:
        if not self.fifo_queue:
            moto_add(self, message)
        elif not_a_repeat(self, message):
            # moto's own add would compare the id again, across groups: appended as it appends. (Its
            # Lambda event source mappings, which it would also run, are not used here.)
            with self._messages_lock:
                self._messages.append(message)
                self._messages_lock.notify_all()

    models.Queue.add_message = add_message  # type: ignore[method-assign]

    moto_validate = models.SQSBackend._validate_message

    def validate_message(
        self: models.SQSBackend,
        queue: models.Queue,
        message_body: str,
        delay_seconds: int,
        deduplication_id: str | None = None,
        group_id: str | None = None,
        validate_group_id: bool = True,
    ) -> None:
        if queue.fifo_queue:
            _validate_fifo(queue, message_body, delay_seconds, deduplication_id, group_id)
        else:
            moto_validate(
                self, queue, message_body, delay_seconds, deduplication_id, group_id, validate_group_id
            )

    models.SQSBackend._validate_message = validate_message  # type: ignore[method-assign]


def _validate_fifo(
    queue: models.Queue, body: str, delay_seconds: int, deduplication_id: str | None, group_id: str | None
) -> None:
    """moto's checks of a FIFO send, reading the queue's settings directly: moto's own read its
    ``attributes``, which counts every message in the queue (twice per send): with a backlog of a few
    hundred, the moto server spent a core on it and the first hop fell behind (bench/isolation_bench.py)."""
    if not group_id:
        raise MissingParameter("MessageGroupId")
    if not deduplication_id and str(getattr(queue, "content_based_deduplication", "false")).lower() != "true":
        raise InvalidParameterValue(
            "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId "
            "provided explicitly"
        )
    if delay_seconds > 0:
        raise InvalidParameterValue(
            f"Value {delay_seconds} for parameter DelaySeconds is invalid. Reason: The request include "
            "parameter that is not valid for this queue type."
        )
    if len(body) > int(queue.maximum_message_size):  # type: ignore[attr-defined]
        raise InvalidParameterValue(
            "One or more parameters are invalid. Reason: Message must be shorter than "
            f"{queue.maximum_message_size} bytes."  # type: ignore[attr-defined]
        )


def _past_retention(queue: models.Queue, message: models.Message, now_ms: float) -> bool:
    """moto's retention check, without its per-message read of every queue attribute (see above)."""
    retention_ms = int(queue.message_retention_period) * 1000  # type: ignore[attr-defined]
    return (message.sent_timestamp or 0) + retention_ms <= now_ms


# Per queue (by ARN): {(group or "", deduplication id): when SQS accepted it, epoch ms}.
_accepted: dict[str, dict[tuple[str, str], int]] = {}
_accepted_lock = threading.Lock()


def not_a_repeat(queue: models.Queue, message: models.Message) -> bool:
    """True when ``message`` is to be queued; False when SQS would drop it as a repeat of one it
    accepted less than DEDUPLICATION_SECONDS ago (its sender is still told it was sent, as by SQS)."""
    if not message.deduplication_id:
        return True
    per_group = getattr(queue, "deduplication_scope", None) == "messageGroup"
    key = (message.group_id or "" if per_group else "", message.deduplication_id)
    now = int(unix_time_millis())
    window_ms = DEDUPLICATION_SECONDS * 1000
    with _accepted_lock:
        seen = _accepted.setdefault(queue.queue_arn, {})
        if len(seen) > 10_000:  # forget ids past the window now and then: a long serve sends many
            for stale in [k for k, at in seen.items() if now - at >= window_ms]:
                del seen[stale]
        first = seen.get(key)
        if first is not None and now - first < window_ms:
            return False
        seen[key] = now
    return True


def receive_fifo(
    backend: models.SQSBackend,
    queue: models.Queue,
    count: int,
    wait_seconds: int,
    visibility_timeout: int,
    attribute_names: list[str],
) -> list[models.Message]:
    deadline = time.monotonic() + wait_seconds
    while True:
        received = _scan(backend, queue, count, visibility_timeout, attribute_names)
        if received or time.monotonic() >= deadline:
            return received
        time.sleep(POLL_SECONDS)  # a long poll's wait, in the emulator's server thread


def _scan(
    backend: models.SQSBackend,
    queue: models.Queue,
    count: int,
    visibility_timeout: int,
    attribute_names: list[str],
) -> list[models.Message]:
    now = unix_time_millis()
    stopped: set[Any] = set()  # groups with a message in flight or delayed: nothing behind it goes out
    received: list[models.Message] = []
    exhausted: list[models.Message] = []
    dead_letter_queue, policy = queue.dead_letter_queue, queue.redrive_policy
    for message in list(queue._messages):
        group = message.group_id
        if group in stopped:
            continue
        if now <= message.visible_at or now < message.delayed_until:
            stopped.add(group)
            continue
        queue.pending_messages.discard(message)  # moto's in-flight set: its visibility ran out
        if dead_letter_queue is not None and policy:
            if message.approximate_receive_count >= policy["maxReceiveCount"]:
                exhausted.append(message)  # the redrive policy takes it; its group goes on
                continue
        if _past_retention(queue, message, now):
            break
        queue.pending_messages.add(message)
        message.mark_received(visibility_timeout=visibility_timeout)
        copy = deepcopy(message)  # what is returned is filtered; the stored message keeps everything
        models._filter_message_attributes(copy, attribute_names)
        received.append(copy)
        if len(received) >= count:
            break
    for message in exhausted:
        if message in queue._messages:  # not deleted meanwhile through an older receipt handle
            queue._messages.remove(message)
            assert dead_letter_queue is not None
            dead_letter_queue.add_message(message)
    return received

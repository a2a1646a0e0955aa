"""What one invocation accumulates while its records are delivered concurrently: the records to
report failed, the targets that answered 410, the audit lines and the metrics."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relay.logic import retry
from relay.logic.dispatch.metrics import BatchMetrics
from relay.logic.dispatch.records import SqsRecord
from relay.models.delivery import DeliveryTask
from relay.observability import logger

DELIVERED = "delivered"  # the audit outcome of a delivery (relay.logic.dispatch.audit)


@dataclass
class Batch:
    invocation_id: str
    started: datetime
    metrics: BatchMetrics
    # Milliseconds the invocation has left (Lambda's context.get_remaining_time_in_millis), if known.
    remaining_ms: Callable[[], int] | None = None
    failures: list[str] = field(default_factory=list)
    # Targets that answered 410 in this batch: no further request to them starts.
    gone: set[str] = field(default_factory=set)
    # Targets that asked for quiet (Retry-After) in this batch, until when (epoch seconds): no further
    # request to them starts before then.
    floors: dict[str, float] = field(default_factory=dict)
    # When this batch last read each target's stored floor (epoch seconds; unset: when it started, as
    # opening the lanes read it then): another dispatcher's Retry-After reaches a batch still running.
    floors_read: dict[str, float] = field(default_factory=dict)
    floor_read_locks: dict[str, threading.Lock] = field(default_factory=dict)
    audit: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    # Every task the batch read, by message id: the event archive keeps those it attempted or
    # dead-lettered (relay.logic.dispatch.audit.write_archive).
    tasks: dict[str, DeliveryTask] = field(default_factory=dict)
    # Message ids whose audit lines and archived events were written before the invocation ended (an
    # ordered conversation released early, relay.logic.dispatch.fifo_groups): the final objects leave
    # them out.
    written: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def visibility_left_seconds(self, now: datetime) -> int:
        """The longest delay a visibility change on this batch's records may ask for at ``now``
        (relay.logic.retry.visibility_left_seconds: 12 h from their receive)."""
        return retry.visibility_left_seconds((now - self.started).total_seconds())

    def fail(self, record: SqsRecord) -> None:
        """Report ``record`` failed: SQS shows it again (a scheduled retry, or a step not completed)."""
        with self.lock:
            self.failures.append(record.message_id)

    def has_failed(self, record: SqsRecord) -> bool:
        with self.lock:
            return record.message_id in self.failures

    def mark_gone(self, key: str) -> None:
        with self.lock:
            self.gone.add(key)

    def is_gone(self, key: str) -> bool:
        with self.lock:
            return key in self.gone

    def raise_floor(self, key: str, until: float) -> bool:
        """Hold the target's later records of this batch until ``until``; False if a floor at least as
        late was held already."""
        with self.lock:
            if until <= self.floors.get(key, 0.0):
                return False
            self.floors[key] = until
            return True

    @contextmanager
    def floor_read(self, key: str, now: float, every: float) -> Iterator[bool]:
        """Whether the target's stored floor was last read ``every`` seconds ago or more: if so, the
        caller reads it (and raises the batch's floor) inside this block. The batch's other threads
        wait at the block's start meanwhile: a thread that went on without the read could start a
        request inside a quiet the read is about to find."""
        with self.lock:
            guard = self.floor_read_locks.setdefault(key, threading.Lock())
        with guard:
            due = now - self.floors_read.get(key, self.started.timestamp()) >= every
            if due:
                self.floors_read[key] = now
            yield due

    def floor(self, key: str) -> float | None:
        with self.lock:
            return self.floors.get(key)

    def log(self, target_id: str, line: dict[str, Any]) -> None:
        """One audit line, kept for the target's audit object. Only a record that was not delivered is
        also logged (without the response body): a delivery is in the audit object and in the batch's
        summary line (relay.logic.dispatch.audit.write_audit), and CloudWatch Logs bills every byte."""
        with self.lock:
            self.audit[target_id].append(line)
        if line.get("outcome") != DELIVERED:
            logger.info("delivery", extra={k: v for k, v in line.items() if k != "responseBody"})

    def response(self) -> dict[str, list[dict[str, str]]]:
        """The partial batch response Lambda's SQS event source reads."""
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in self.failures]}

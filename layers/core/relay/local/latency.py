"""Relay-added latency in the local stack, and the relay's own share of it.

For one delivery (an event's task for one target) four instants are known on this machine's clock:

    sent        the POST leaves the sender
    accepted    the intake's 202 is back at the sender
    polled      the event source (relay.local.poller) received the task from the delivery queue
    arrived     the request's first line reached the target's receiver, before the receiver's own time

and the figures are

    relay_added = arrived - accepted      what the relay adds after Genesys got its 202
      queue     = polled - accepted       SQS (moto here) and the event source's long poll; negative
                                          when the dispatcher had the task before the sender had its
                                          202 (the intake queues, records its answer, then answers)
      dispatch  = arrived - polled        the dispatcher: invoke, breaker read, envelope, connect, send
    intake      = accepted - sent         the intake's answer, as the sender sees it (an upper bound of
                                          the handler's own time: the local API adapter is in it)
    relay_own   = arrived - sent          the relay's code, without the queue between its two halves:
                  - max(0, queue)         intake + dispatch, except that where they overlap (a negative
                                          queue) that time is counted once, never more than end to end

Locally the queue share is moto's (a Python process scanning its queue on every receive) and the poll;
in AWS it is SQS's and the event source mapping's, so ``relay_own`` is the figure that carries over.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    sent: float
    accepted: float
    polled: float | None  # None: the receive was not observed
    arrived: float


class ReceiveLog:
    """A poller observer (``SqsPoller.add_receive_observer``): when each delivery id was first received."""

    def __init__(self) -> None:
        self._first: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, messages: Sequence[Mapping[str, Any]], received_at: float) -> None:
        for message in messages:
            try:
                delivery_id = json.loads(str(message.get("Body", ""))).get("deliveryId")
            except (ValueError, AttributeError):
                continue
            if isinstance(delivery_id, str):
                with self._lock:
                    self._first.setdefault(delivery_id, received_at)

    def first(self, delivery_id: str) -> float | None:
        with self._lock:
            return self._first.get(delivery_id)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile, rounded to 0.1 ms; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return round(ordered[int(rank) - 1], 1)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "n": len(values)}


def latency_report(timings: Iterable[Timing]) -> dict[str, dict[str, float | int | None]]:
    """p50/p99 (ms) of each figure in the module docstring over ``timings``."""
    measured = list(timings)
    polled = [t for t in measured if t.polled is not None]
    ms = 1000.0
    return {
        "relay_added_ms": summary([(t.arrived - t.accepted) * ms for t in measured]),
        "queue_ms": summary([(t.polled - t.accepted) * ms for t in polled if t.polled is not None]),
        "dispatch_ms": summary([(t.arrived - t.polled) * ms for t in polled if t.polled is not None]),
        "intake_ms": summary([(t.accepted - t.sent) * ms for t in measured]),
        "relay_own_ms": summary(
            [
                (t.arrived - t.sent - max(0.0, t.polled - t.accepted)) * ms
                for t in polled
                if t.polled is not None
            ]
        ),
    }

"""What one dispatcher (container) knows of its targets' token buckets without asking the store: the
state its last write or read returned (bookings only move forward, so that is a lower bound), and the
deliveries it made lately to targets without a limit (how large a share it adds to an implicit limit
when one of them throttles it). relay.logic.dispatch.rate_limit keeps one per container."""

from __future__ import annotations

import threading
from collections import deque

from relay.models.rate_limit import BucketAnswer, BucketState

# How far back a dispatcher looks at its own deliveries to an unlimited target to size its share.
OBSERVE_SECONDS = 5.0


class BucketViews:
    """Thread-safe: the pool's threads note their answers while the invocation's thread plans."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, BucketState] = {}
        # Unlimited targets: (when, delivered, sent) per batch, for the share of an implicit limit.
        self._recent: dict[str, deque[tuple[float, int, int]]] = {}

    def last_seen(self, key: str) -> BucketState:
        with self._lock:
            return self._seen.get(key, BucketState())

    def remember(self, key: str, answer: BucketAnswer) -> BucketState:
        """Keep the state a write answered (or one that failed its condition), and return it."""
        return self.keep(key, answer.state or BucketState())

    def keep(self, key: str, state: BucketState) -> BucketState:
        with self._lock:
            self._seen[key] = state
        return state

    def note(self, key: str, now: float, delivered: int, sent: int) -> None:
        with self._lock:
            recent = self._recent.setdefault(key, deque())
            recent.append((now, delivered, sent))
            while recent and recent[0][0] < now - OBSERVE_SECONDS:
                recent.popleft()

    def share_basis(self, key: str, now: float) -> float:
        """Deliveries per second this dispatcher got through to the target lately; when none got
        through, half the requests per second it sent (what the receiver could not take)."""
        with self._lock:
            recent = [entry for entry in self._recent.get(key, ()) if entry[0] >= now - OBSERVE_SECONDS]
        if not recent:
            return 0.0
        # Over the time actually observed (a dispatcher that just started has seen less than the window).
        span = max(1.0, now - recent[0][0])
        delivered, sent = sum(entry[1] for entry in recent), sum(entry[2] for entry in recent)
        return (delivered or sent / 2) / span

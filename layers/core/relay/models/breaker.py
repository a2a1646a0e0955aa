"""A target's circuit-breaker state as stored in the BreakerTable (transitions: relay.logic.breaker),
and the lane its records are dispatched in (relay.logic.dispatch.isolation), stored in the same item.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from enum import StrEnum


class Phase(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerState:
    phase: Phase = Phase.CLOSED
    consecutive_failures: int = 0
    trips: int = 0  # consecutive openings without a close in between
    # OPEN: when a probe may be tried. HALF_OPEN: when the probe's lease ends. Epoch seconds.
    until: float = 0.0
    version: int = 0  # 0: nothing stored yet
    # The endpoint its failures were counted at (``endpoint_digest`` of the target's URL); None: a
    # record written before it was kept.
    endpoint: str | None = None
    # Closed: when the failures counted since its last success were sent (epoch seconds, sorted), and
    # that success's. Results are folded in the order they were sent, not the order the endpoint
    # answered or dispatchers report them (relay.logic.breaker.record). Read through ``failure_run``.
    failure_times: tuple[float, ...] = ()
    last_success_at: float = 0.0

    @property
    def failure_run(self) -> tuple[float, ...]:
        """The send times of the ``consecutive_failures`` counted. The count is trusted, not the times:
        a dispatcher of the release before sets only the count, so the times are its last n stored ones,
        padded at the front with ``last_success_at`` when fewer are stored."""
        count = self.consecutive_failures
        if count <= 0:
            return ()
        kept = self.failure_times[-count:]
        return (self.last_success_at,) * (count - len(kept)) + kept

    def for_endpoint(self, endpoint: str) -> BreakerState:
        """This state as the breaker of ``endpoint``. Counted at another URL (the target's config
        changed), it says nothing of this one: a fresh closed breaker, on the stored version so that
        the next write is still conditional on it. Dispatchers still holding the old URL keep the old
        state; the first failure at the new URL replaces it."""
        if self.endpoint not in (None, endpoint):
            return BreakerState(version=self.version, endpoint=endpoint)
        return replace(self, endpoint=endpoint)


def endpoint_digest(url: str) -> str:
    """What the breaker keeps of a target's URL: a digest (a URL may carry a token in its query)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class DeliveryLane(StrEnum):
    """Which dispatcher delivers a target's records: the fast lane (DeliveryQueue, every target to
    begin with) or the slow lane (SlowDeliveryQueue, targets whose requests take long)."""

    FAST = "fast"
    SLOW = "slow"


@dataclass(frozen=True)
class LaneState:
    """A target's lane. Stored beside its breaker state in the same item (one read gets both) but
    versioned on its own, so lane and breaker transitions never overwrite or race each other."""

    lane: DeliveryLane = DeliveryLane.FAST
    version: int = 0  # 0: never moved (nothing stored)
    changed_at: float = 0.0  # epoch seconds of the last move
    # Epoch seconds until which the target asked for quiet (a 429 or 503 with Retry-After): set apart,
    # unversioned and only ever later, by a dispatcher that got the answer, so that every dispatcher,
    # reading it with the breaker, sends nothing before it. relay.logic.dispatch.rate_limit.
    retry_after_until: float = 0.0


def target_key(integration_id: str, target_id: str) -> str:
    """The BreakerTable key of a target."""
    return f"{integration_id}#{target_id}"

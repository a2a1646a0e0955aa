"""A target's circuit-breaker state as stored in the BreakerTable (transitions: relay.logic.breaker),
and the lane its records are dispatched in (relay.logic.dispatch.isolation), stored in the same item.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def target_key(integration_id: str, target_id: str) -> str:
    """The BreakerTable key of a target."""
    return f"{integration_id}#{target_id}"

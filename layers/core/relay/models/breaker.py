"""A target's circuit-breaker state as stored in the BreakerTable (transitions: relay.logic.breaker)."""

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


def target_key(integration_id: str, target_id: str) -> str:
    """The BreakerTable key of a target."""
    return f"{integration_id}#{target_id}"

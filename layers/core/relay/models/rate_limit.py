"""A target's rate limit as configured, and its shared token bucket as stored (docs/dispatcher.md).

The configured limit (``rateLimit: {perSecond, burst}``) is part of the target config. The bucket is
one item per target in the BreakerTable, under its own key (``rate#<integrationId>#<targetId>``),
shared by every dispatcher; the arithmetic on it is relay.logic.rate_limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from relay.models.numbers import ConfigFloat, ConfigInt

MIN_PER_SECOND = 0.01
MAX_PER_SECOND = 10_000.0
MAX_BURST = 10_000


class RateLimit(BaseModel):
    """Requests per second across the whole fleet, and how many may go at once after a quiet spell."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")

    per_second: ConfigFloat = Field(ge=MIN_PER_SECOND, le=MAX_PER_SECOND, allow_inf_nan=False)
    # None: one second's worth (at least 1).
    burst: ConfigInt | None = Field(None, ge=1, le=MAX_BURST)

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.per_second))

    def describe(self) -> str:
        return f"{self.per_second:g}/s burst {self.capacity}"


@dataclass(frozen=True)
class BucketState:
    """The stored bucket of one target. Times are epoch seconds; 0.0 means "never"."""

    # GCRA's theoretical arrival time: every request taken books 1/rate seconds after the previous
    # booking (or after now, when the bucket is idle); a request fits while the booking stays within
    # the burst tolerance ahead of now.
    booked_until: float = 0.0
    # The adaptive part: the rate right after the last multiplicative decrease (a 429), and when it
    # was made. None: never throttled (the configured limit applies as it is).
    cut_rate: float | None = None
    cut_at: float = 0.0
    # Retry-After: no request before this.
    floor_until: float = 0.0


@dataclass(frozen=True)
class BucketAnswer:
    """What a conditional write to a bucket did: ``written``, and the state after it, or (not written)
    the stored state that failed its condition; None when there is no bucket item."""

    written: bool
    state: BucketState | None


def rate_key(integration_id: str, target_id: str) -> str:
    """The BreakerTable key of a target's bucket (the breaker's own key has no prefix)."""
    return f"rate#{integration_id}#{target_id}"

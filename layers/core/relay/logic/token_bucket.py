"""A target's fleet-wide token bucket with AIMD adaptation, as pure arithmetic (store:
relay.ports.RateLimitStore; its use in a batch: relay.logic.dispatch.rate_limit).

**Bucket.** A generic cell rate algorithm (GCRA), the token bucket written as one number: the bucket
keeps ``booked_until``, the time up to which requests are booked at one per 1/rate seconds. ``n``
requests fit now when ``max(booked_until, now) + (n - 1)/rate <= now + tolerance``, and taking them
moves ``booked_until`` on by ``n/rate``. With ``tolerance = (burst - 1)/limit``, in any window of
``w`` seconds at most ``limit * w + burst`` requests are taken, whatever the order in which
dispatchers take them, because every request books at least 1/limit seconds. A busy bucket is taken
from with ``booked_until = booked_until + n/rate`` under the condition that it still fits (which
needs no earlier read), an idle one with ``booked_until = now + n/rate`` under the condition that it
is idle: one conditional write per target per batch.

**Adaptation (AIMD).** A throttle answer (429, or 503 with Retry-After) cuts the rate to
``decrease`` times what it was (multiplicative decrease, at most once per ``cooldown_seconds``:
answers to requests already in flight say nothing new), and the rate then grows back by a constant
amount per second (additive increase) that regains the cut in ``recovery_seconds``, up to the
configured limit. The bucket stores only the cut (``cut_rate``, ``cut_at``); the rate at any moment
follows from it, so recovery costs no write. A Retry-After sets ``floor_until``: nothing is taken
before it.

**Targets without a configured limit** are not metered (no store call) until one answers a throttle.
Each dispatcher that sees one then contributes ``decrease`` times the rate it was sending at to an
implicit limit (``join``), and meters the target from then on; the implicit limit adapts like a
configured one and ends ``release_seconds`` after its last cut (the target is unlimited again).

All functions are pure: times are epoch seconds passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from relay.models.rate_limit import BucketState, RateLimit

# Epoch seconds as floats carry about 0.2 microseconds of rounding: a request that fits to within a
# microsecond fits (the store's condition gets the same slack, so it agrees with the plan).
_SLACK_SECONDS = 1e-6


@dataclass(frozen=True)
class AimdPolicy:
    decrease: float = 0.75
    recovery_seconds: float = 20.0
    cooldown_seconds: float = 2.0
    min_per_second: float = 0.1
    # How far an implicit limit's bookings may run ahead of now (its burst, in seconds at its rate).
    implicit_tolerance_seconds: float = 1.0
    release_seconds: float = 300.0


def current_rate(state: BucketState, limit: RateLimit | None, now: float, policy: AimdPolicy) -> float | None:
    """Requests per second the target may get now; None: unlimited."""
    if state.cut_rate is None:
        return limit.per_second if limit is not None else None
    if limit is None and now - state.cut_at >= policy.release_seconds:
        return None
    slope = (1.0 - policy.decrease) / policy.decrease * state.cut_rate / policy.recovery_seconds
    rate = state.cut_rate + slope * max(0.0, now - state.cut_at)
    if limit is None:
        return max(policy.min_per_second, rate)
    return max(min(policy.min_per_second, limit.per_second), min(rate, limit.per_second))


def tolerance(limit: RateLimit | None, policy: AimdPolicy) -> float:
    """Seconds a booking may run ahead of now: ``burst - 1`` requests at the configured limit."""
    if limit is None:
        return policy.implicit_tolerance_seconds
    return (limit.capacity - 1) / limit.per_second


@dataclass(frozen=True)
class TakePlan:
    """How many of the wanted requests fit now, and the conditional write that takes them."""

    count: int
    cost: float  # seconds booked per request: 1/rate
    start: float  # where the first request's booking starts: max(booked_until, now)
    taken_at: float  # the clock the plan was made at
    idle: bool  # the bucket has nothing booked beyond now: the booking starts at now
    latest: float  # busy: the highest booked_until at which ``count`` requests still fit
    waits: tuple[float, ...]  # for each request that does not fit, seconds until it would


def plan_take(state: BucketState, wanted: int, now: float, rate: float, ahead: float) -> TakePlan:
    """Take up to ``wanted`` requests at ``rate`` with bookings up to ``ahead`` seconds past now."""
    cost = 1.0 / rate
    start = max(state.booked_until, now)
    room = ahead - (start - now) + _SLACK_SECONDS  # seconds the first request's booking may start late
    fits = 0
    if state.floor_until <= now and room >= 0:
        fits = min(wanted, math.floor(room / cost) + 1)
    # The j-th request left over fits once its booking is within ``ahead`` of the clock (and the floor
    # has passed). Measured from now, so that epoch-sized floats do not blur it.
    floor_wait = max(0.0, state.floor_until - now)
    waits = tuple(max(floor_wait, (start - now) + (fits + j) * cost - ahead) for j in range(wanted - fits))
    return TakePlan(
        count=fits,
        cost=cost,
        start=start,
        taken_at=now,
        idle=state.booked_until < now,
        latest=now + ahead - max(0, fits - 1) * cost + _SLACK_SECONDS,
        waits=waits,
    )


def after_take(state: BucketState, plan: TakePlan, now: float) -> BucketState:
    """The state a successful take leaves (what the store computes)."""
    start = now if plan.idle else state.booked_until
    return BucketState(
        booked_until=start + plan.count * plan.cost,
        cut_rate=state.cut_rate,
        cut_at=state.cut_at,
        floor_until=state.floor_until,
    )


def may_cut(state: BucketState, now: float, policy: AimdPolicy) -> bool:
    """False within the cooldown of the last cut: the throttles seen now answer requests sent before it."""
    return state.cut_rate is None or now - state.cut_at >= policy.cooldown_seconds


def cut_rate(rate: float, policy: AimdPolicy) -> float:
    """The multiplicative decrease of ``rate``."""
    return max(policy.min_per_second, rate * policy.decrease)


def floor_after(state: BucketState, asked_until: float | None) -> float:
    """The Retry-After floor after a throttle that asked for quiet until ``asked_until``: never
    earlier than the one stored."""
    if asked_until is None:
        return state.floor_until
    return max(state.floor_until, asked_until)


# A record held back again waits at least 2^(deferrals so far) seconds, up to this many doublings
# (32 s): enough to keep a flooded target's backlog from cycling through the queue every second, and
# never minutes for a record whose target could take it by then (at 9 doublings a record could wait
# 512 s long after the flood was over).
HOLD_BACKOFF_DOUBLINGS = 5


def hold_wait(deferrals_before: int, bucket_wait: float) -> float:
    """About when a held-back record would fit; one held back before waits longer each time (2, 4, 8,
    16, 32 s), so a target flooded far beyond its limit does not cycle its whole backlog through the
    queue every second (each cycle is a SendMessage and a receive per record)."""
    backoff = 2.0 ** min(deferrals_before, HOLD_BACKOFF_DOUBLINGS) if deferrals_before else 0.0
    return max(bucket_wait, backoff)


def booked_where_stored(plan: TakePlan, stored: BucketState) -> TakePlan:
    """The plan with its bookings where the store put them: a busy take books on from the stored
    ``booked_until``, which another dispatcher may have moved on (within the plan's condition) since
    this one last saw it. Paced records and held ones are timed from there."""
    start = stored.booked_until - plan.count * plan.cost
    shift = max(0.0, start - plan.start)
    return replace(plan, start=plan.start + shift, waits=tuple(wait + shift for wait in plan.waits))

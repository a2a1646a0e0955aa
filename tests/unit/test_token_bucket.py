"""The token bucket's arithmetic (relay.logic.token_bucket): what fits, the window bound whatever the
order of takes and whatever the adaptation does, and AIMD's cut and recovery."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.logic.token_bucket import (
    AimdPolicy,
    after_take,
    current_rate,
    cut_rate,
    floor_after,
    may_cut,
    plan_take,
    tolerance,
)
from relay.models.rate_limit import BucketState, RateLimit

NOW = 1_750_000_000.0
POLICY = AimdPolicy()


def limit(per_second: float, burst: int | None = None) -> RateLimit:
    return RateLimit(per_second=per_second, burst=burst)


def test_an_idle_bucket_lets_a_burst_go_and_defers_the_rest_one_interval_apart() -> None:
    ten = limit(10, burst=4)

    plan = plan_take(BucketState(), 7, NOW, 10.0, tolerance(ten, POLICY))

    assert (plan.count, plan.idle) == (4, True)
    assert after_take(BucketState(), plan, NOW).booked_until == pytest.approx(NOW + 0.4)
    # the 5th fits 0.1 s from now, the 6th 0.2 s, the 7th 0.3 s
    assert plan.waits == pytest.approx((0.1, 0.2, 0.3))


def test_a_busy_bucket_lets_through_only_what_its_booking_leaves() -> None:
    ten = limit(10, burst=4)
    busy = BucketState(booked_until=NOW + 0.25)  # 0.05 s of room before 0.3 s ahead is reached

    plan = plan_take(busy, 3, NOW, 10.0, tolerance(ten, POLICY))

    assert (plan.count, plan.idle) == (1, False)
    assert plan.latest == pytest.approx(NOW + 0.3)
    assert after_take(busy, plan, NOW).booked_until == pytest.approx(NOW + 0.35)


def test_burst_one_means_one_request_per_interval() -> None:
    one = limit(2, burst=1)
    assert tolerance(one, POLICY) == 0

    first = plan_take(BucketState(), 3, NOW, 2.0, 0.0)
    state = after_take(BucketState(), first, NOW)
    too_soon = plan_take(state, 1, NOW + 0.4, 2.0, 0.0)
    on_time = plan_take(state, 1, NOW + 0.5, 2.0, 0.0)

    assert first.count == 1 and first.waits == pytest.approx((0.5, 1.0))
    assert (too_soon.count, on_time.count) == (0, 1)


def test_nothing_is_taken_before_a_retry_after_floor() -> None:
    floored = BucketState(floor_until=NOW + 3)

    plan = plan_take(floored, 2, NOW, 10.0, 1.0)

    assert plan.count == 0 and plan.waits[0] == pytest.approx(3.0)
    assert floor_after(floored, NOW + 1) == NOW + 3  # a shorter Retry-After never lowers it
    assert floor_after(floored, NOW + 10) == NOW + 10
    assert floor_after(floored, None) == NOW + 3


@settings(max_examples=300, deadline=None)
@given(
    per_second=st.sampled_from([0.5, 1.0, 3.0, 10.0, 50.0]),
    burst=st.integers(min_value=1, max_value=20),
    takes=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.5),  # time since the previous take
            st.integers(min_value=1, max_value=10),  # records the batch wants
            st.sampled_from([None, 0.3, 0.6, 0.9]),  # a cut made just before (as a fraction)
        ),
        min_size=1,
        max_size=80,
    ),
)
def test_no_window_ever_gets_more_than_limit_times_window_plus_burst(
    per_second: float, burst: int, takes: list[tuple[float, int, float | None]]
) -> None:
    # Given a bucket taken from by batches at arbitrary moments, its rate cut now and then
    configured = limit(per_second, burst)
    state, now, taken = BucketState(), NOW, []
    for gap, wanted, cut in takes:
        now += gap
        if cut is not None and may_cut(state, now, POLICY):
            rate = current_rate(state, configured, now, POLICY)
            assert rate is not None
            state = BucketState(state.booked_until, max(rate * cut, POLICY.min_per_second), now)
        rate = current_rate(state, configured, now, POLICY)
        assert rate is not None and rate <= per_second
        plan = plan_take(state, wanted, now, rate, tolerance(configured, POLICY))
        state = after_take(state, plan, now) if plan.count else state
        taken += [now] * plan.count

    # Then no window of any length, starting at any take, holds more than limit x window + burst
    # (give or take the 0.2 microseconds an epoch float can tell apart, and the bucket's 1 microsecond)
    for i, start in enumerate(taken):
        for j in range(i, len(taken)):
            window = taken[j] - start
            assert j - i + 1 <= per_second * (window + 2e-6) + burst


def test_a_cut_lowers_the_rate_and_recovery_regains_it_in_the_recovery_time() -> None:
    configured = limit(100)
    rate = current_rate(BucketState(), configured, NOW, POLICY)
    assert rate == 100

    # A throttle at 60/s cuts to 45/s ...
    cut = BucketState(cut_rate=cut_rate(60.0, POLICY), cut_at=NOW)
    assert current_rate(cut, configured, NOW, POLICY) == pytest.approx(45.0)
    # ... which grows back linearly to 60/s in recovery_seconds, then on to the configured limit only
    later = NOW + POLICY.recovery_seconds
    assert current_rate(cut, configured, later, POLICY) == pytest.approx(60.0)
    halfway = NOW + POLICY.recovery_seconds / 2
    assert current_rate(cut, configured, halfway, POLICY) == pytest.approx(52.5)
    assert current_rate(cut, configured, NOW + 10_000, POLICY) == 100


def test_cuts_are_at_most_one_per_cooldown_and_never_below_the_minimum() -> None:
    cut = BucketState(cut_rate=0.1, cut_at=NOW)
    assert not may_cut(cut, NOW + POLICY.cooldown_seconds - 0.01, POLICY)
    assert may_cut(cut, NOW + POLICY.cooldown_seconds, POLICY)
    assert may_cut(BucketState(), NOW, POLICY)
    assert cut_rate(0.1, POLICY) == POLICY.min_per_second
    # a configured limit below the minimum is still honoured
    slow = limit(0.05)
    assert current_rate(BucketState(cut_rate=0.01, cut_at=NOW), slow, NOW, POLICY) == 0.05


def test_an_implicit_limit_is_released_long_after_its_last_cut() -> None:
    implicit = BucketState(cut_rate=20.0, cut_at=NOW)

    assert current_rate(implicit, None, NOW + 1, POLICY) == pytest.approx(20.0 + 20.0 / 3 / 20)
    assert current_rate(implicit, None, NOW + POLICY.release_seconds, POLICY) is None
    assert current_rate(BucketState(), None, NOW, POLICY) is None
    assert tolerance(None, POLICY) == POLICY.implicit_tolerance_seconds


def test_the_default_burst_is_one_seconds_worth() -> None:
    assert limit(2.5).capacity == math.ceil(2.5)
    assert limit(0.2).capacity == 1

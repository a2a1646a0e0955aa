"""The circuit breaker's pure transitions (store-level races: tests/integration/test_breaker_store.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.logic.breaker import Admission, BreakerPolicy, BreakerState, Phase, admit, record

POLICY = BreakerPolicy(failure_threshold=5, reset_seconds=30, max_reset_seconds=600, probe_lease_seconds=20)
NOW = 1_000_000.0


def test_closed_opens_after_exactly_the_threshold_of_consecutive_failures() -> None:
    state = BreakerState()
    for _ in range(4):
        state = record(state, [False], NOW, POLICY) or state
        assert state.phase is Phase.CLOSED
    opened = record(state, [False], NOW, POLICY)
    assert opened is not None and opened.phase is Phase.OPEN
    assert opened.until == NOW + 30 and opened.trips == 1 and opened.version == state.version + 1


def test_a_success_resets_the_count_and_a_healthy_breaker_is_never_rewritten() -> None:
    state = record(BreakerState(consecutive_failures=2, version=4), [False, False, True], NOW, POLICY)
    assert state is not None and state.consecutive_failures == 0 and state.version == 5
    assert record(state, [True, True, True], NOW, POLICY) is None  # no write: no hot item


def test_open_defers_until_the_reset_timeout_then_offers_one_probe_claim() -> None:
    opened = BreakerState(Phase.OPEN, 5, 1, NOW + 30, 7)
    assert admit(opened, NOW + 29.9, POLICY) == (Admission.DEFER, None)
    admission, claim = admit(opened, NOW + 30, POLICY)
    assert admission is Admission.PROBE and claim is not None
    assert claim.phase is Phase.HALF_OPEN and claim.version == 8 and claim.until == NOW + 30 + 20


def test_half_open_defers_everyone_while_the_probe_lease_runs() -> None:
    half = BreakerState(Phase.HALF_OPEN, 5, 1, NOW + 20, 8)
    assert admit(half, NOW + 5, POLICY) == (Admission.DEFER, None)
    assert admit(half, NOW + 21, POLICY)[0] is Admission.PROBE  # the holder died: a new probe


def test_probe_success_closes_and_failure_reopens_for_longer() -> None:
    half = BreakerState(Phase.HALF_OPEN, 5, 1, NOW + 20, 8)
    closed = record(half, [True, False], NOW, POLICY, holds_probe=True)
    assert closed is not None and (closed.phase, closed.trips, closed.consecutive_failures) == (
        Phase.CLOSED,
        0,
        1,
    )
    reopened = record(half, [False], NOW, POLICY, holds_probe=True)
    assert reopened is not None and reopened.phase is Phase.OPEN
    assert reopened.trips == 2 and reopened.until == NOW + 60


def test_results_without_the_probe_change_nothing_while_half_open_or_open() -> None:
    half = BreakerState(Phase.HALF_OPEN, 5, 1, NOW + 20, 8)
    assert record(half, [False, True], NOW, POLICY) is None
    assert record(BreakerState(Phase.OPEN, 5, 1, NOW + 20, 8), [False], NOW, POLICY) is None


@given(st.integers(min_value=1, max_value=60))
def test_the_reset_timeout_grows_with_trips_and_is_capped(trips: int) -> None:
    assert POLICY.reset_after(trips) == min(600, 30 * 2 ** (trips - 1))
    assert POLICY.reset_after(trips + 1) >= POLICY.reset_after(trips)


@given(st.lists(st.booleans(), max_size=40))
def test_closed_folding_matches_a_running_count(results: list[bool]) -> None:
    # A reference: walk the results; open at the first run of `threshold` failures.
    failures, opened = 0, False
    for ok in results:
        failures = 0 if ok else failures + 1
        if failures >= POLICY.failure_threshold:
            opened = True
            break
    new = record(BreakerState(), results, NOW, POLICY)
    state = new or BreakerState()
    assert (state.phase is Phase.OPEN) == opened
    if not opened:
        assert state.consecutive_failures == failures
    if new is not None:
        assert new.version == 1


@given(
    st.sampled_from(list(Phase)),
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=0, max_value=10),
    st.floats(min_value=0, max_value=2000),
    st.lists(st.booleans(), max_size=10),
    st.booleans(),
)
def test_every_write_bumps_the_version_by_one(
    phase: Phase, failures: int, trips: int, offset: float, results: list[bool], probe: bool
) -> None:
    state = BreakerState(phase, failures % 5, trips, NOW + offset, 3)
    new = record(state, results, NOW, POLICY, holds_probe=probe)
    assert new is None or new.version == state.version + 1
    admission, claim = admit(state, NOW + 1000, POLICY)
    assert claim is None or (claim.version == state.version + 1 and claim.phase is Phase.HALF_OPEN)

"""The circuit breaker's pure transitions (store-level races: tests/integration/test_breaker_store.py)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from relay.logic.breaker import (
    Admission,
    BreakerPolicy,
    BreakerState,
    Phase,
    Result,
    admit,
    open_gate,
    record,
    report,
)
from relay.testing.fakes import InMemoryBreakerStore

POLICY = BreakerPolicy(failure_threshold=5, reset_seconds=30, max_reset_seconds=600, probe_lease_seconds=20)
NOW = 1_000_000.0
KEY = "integration#target"


def failure(at: float) -> Result:
    return Result(at, healthy=False)


def success(at: float) -> Result:
    return Result(at, healthy=True)


def in_send_order(healthy: list[bool]) -> list[Result]:
    """One result a second, in the order given."""
    return [Result(NOW + i, ok) for i, ok in enumerate(healthy)]


def test_closed_opens_after_exactly_the_threshold_of_consecutive_failures() -> None:
    state = BreakerState()
    for second in range(4):
        state = record(state, [failure(NOW + second)], NOW, POLICY) or state
        assert state.phase is Phase.CLOSED
    opened = record(state, [failure(NOW + 4)], NOW, POLICY)
    assert opened is not None and opened.phase is Phase.OPEN
    assert opened.until == NOW + 30 and opened.trips == 1 and opened.version == state.version + 1


def test_a_success_resets_the_count_and_a_healthy_breaker_is_never_rewritten() -> None:
    state = record(
        BreakerState(consecutive_failures=2, version=4), in_send_order([False, False, True]), NOW, POLICY
    )
    assert state is not None and state.consecutive_failures == 0 and state.version == 5
    assert record(state, [success(NOW + 5), success(NOW + 6)], NOW, POLICY) is None  # no write: no hot item


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
    closed = record(half, [success(NOW), failure(NOW + 1)], NOW, POLICY, holds_probe=True)
    assert closed is not None and (closed.phase, closed.trips, closed.consecutive_failures) == (
        Phase.CLOSED,
        0,
        1,
    )
    assert closed.last_success_at == NOW  # the probe's answer: what came before it is history
    reopened = record(half, [failure(NOW)], NOW, POLICY, holds_probe=True)
    assert reopened is not None and reopened.phase is Phase.OPEN
    assert reopened.trips == 2 and reopened.until == NOW + 60


def test_results_without_the_probe_change_nothing_while_half_open_or_open() -> None:
    half = BreakerState(Phase.HALF_OPEN, 5, 1, NOW + 20, 8)
    assert record(half, [failure(NOW), success(NOW + 1)], NOW, POLICY) is None
    assert record(BreakerState(Phase.OPEN, 5, 1, NOW + 20, 8), [failure(NOW)], NOW, POLICY) is None


@given(st.integers(min_value=1, max_value=60))
def test_the_reset_timeout_grows_with_trips_and_is_capped(trips: int) -> None:
    assert POLICY.reset_after(trips) == min(600, 30 * 2 ** (trips - 1))
    assert POLICY.reset_after(trips + 1) >= POLICY.reset_after(trips)


@given(st.lists(st.booleans(), max_size=40))
def test_closed_folding_matches_a_running_count(results: list[bool]) -> None:
    # A reference: walk the results; open when the failures after the last success reach `threshold`
    # (a run a later success ends is over: the endpoint answered since, and the report knows it).
    failures = 0
    for ok in results:
        failures = 0 if ok else failures + 1
    opened = failures >= POLICY.failure_threshold
    new = record(BreakerState(), in_send_order(results), NOW, POLICY)
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
    new = record(state, in_send_order(results), NOW, POLICY, holds_probe=probe)
    assert new is None or new.version == state.version + 1
    admission, claim = admit(state, NOW + 1000, POLICY)
    assert claim is None or (claim.version == state.version + 1 and claim.phase is Phase.HALF_OPEN)


# --- answer order: results reach the breaker in the order dispatchers report them ----------------------


@given(st.lists(st.booleans(), max_size=12), st.randoms(use_true_random=False))
def test_one_batch_folds_alike_in_any_report_order(healthy: list[bool], rng: random.Random) -> None:
    results = in_send_order(healthy)
    reported = rng.sample(results, len(results))
    stored = BreakerState(consecutive_failures=2, failure_times=(NOW - 2, NOW - 1), version=3)
    assert record(stored, reported, NOW, POLICY) == record(stored, results, NOW, POLICY)


def test_a_failure_answered_before_a_success_folded_already_is_history() -> None:
    # Given one failure counted; invocation B's success, answered at t=2, is reported first
    counted = BreakerState(consecutive_failures=1, failure_times=(NOW + 0.5,), version=3)
    after_b = record(counted, [success(NOW + 2)], NOW + 2, POLICY)
    assert after_b is not None and after_b.consecutive_failures == 0

    # When invocation A reports its failure, answered at t=1, at t=3
    after_a = record(after_b, [failure(NOW + 1)], NOW + 3, POLICY)

    # Then nothing changes: in answer order the failure was followed by a success
    assert after_a is None


def test_an_older_success_does_not_erase_newer_failures() -> None:
    # Given failures answered at t=5 and t=6 folded
    counted = record(BreakerState(version=1), [failure(NOW + 5), failure(NOW + 6)], NOW + 6, POLICY)
    assert counted is not None

    # When a success answered at t=4 is reported after them
    after = record(counted, [success(NOW + 4)], NOW + 7, POLICY) or counted

    # Then both failures still count
    assert (after.consecutive_failures, after.failure_run) == (2, (NOW + 5, NOW + 6))
    assert after.phase is Phase.CLOSED


def test_a_run_opens_only_if_it_is_consecutive_in_send_order() -> None:
    # Given failures answered at t=10 and t=11 folded
    counted = BreakerState(consecutive_failures=2, failure_times=(NOW + 10, NOW + 11), version=2)

    # When a slow batch reports three failures and a success answered before them (F F F S F F)
    slow_batch = [failure(NOW + 1), failure(NOW + 2), failure(NOW + 3), success(NOW + 4)]
    after = record(counted, slow_batch, NOW + 12, POLICY)

    # Then the breaker stays closed, counting the two failures after the success
    assert after is not None and after.phase is Phase.CLOSED
    assert (after.consecutive_failures, after.failure_run) == (2, (NOW + 10, NOW + 11))


def test_a_run_reaching_the_threshold_within_one_batch_opens_whatever_the_report_order() -> None:
    # A success at t=1, then five failures answered at t=2..6, reported out of answer order
    reported = [failure(NOW + 6), failure(NOW + 5), success(NOW + 1), failure(NOW + 2), failure(NOW + 3)]
    opened = record(BreakerState(), [*reported, failure(NOW + 4)], NOW + 7, POLICY)

    assert opened is not None and opened.phase is Phase.OPEN
    assert (opened.consecutive_failures, opened.trips, opened.until) == (5, 1, NOW + 7 + 30)


def test_results_answered_before_the_last_success_change_nothing() -> None:
    # Given a breaker whose last success was answered at t=100, one failure after it
    state = BreakerState(
        consecutive_failures=1, failure_times=(NOW + 101,), last_success_at=NOW + 100, version=4
    )

    # Then failures at or before it, and an older success, leave it as it is
    assert record(state, [failure(NOW + 99) for _ in range(5)] + [failure(NOW + 100)], NOW, POLICY) is None
    assert record(state, [success(NOW + 99)], NOW, POLICY) is None


def test_a_healthy_closed_breaker_is_not_written_as_its_last_success_moves() -> None:
    healthy = BreakerState(last_success_at=NOW, version=6)
    assert record(healthy, [success(NOW + 10), success(NOW + 11)], NOW + 11, POLICY) is None


def test_reported_out_of_answer_order_by_two_invocations_the_store_keeps_the_answer_order_count() -> None:
    # Given a target with one failure counted, and two invocations that both read its breaker
    store = InMemoryBreakerStore()
    counted = BreakerState(consecutive_failures=1, failure_times=(NOW,), version=1)
    assert store.save(KEY, counted, expected_version=0)
    invocation_a, invocation_b = (open_gate(store, KEY, NOW, POLICY) for _ in range(2))
    assert invocation_a.admission is invocation_b.admission is Admission.DELIVER

    # When B reports its success (answered at t=2) at t=2, and A its failure (answered at t=1) at t=3
    report(store, KEY, invocation_b, [success(NOW + 2)], NOW + 2, POLICY)
    report(store, KEY, invocation_a, [failure(NOW + 1)], NOW + 3, POLICY)

    # Then the stored count is the answer order's: the failure was followed by a success
    assert store.load(KEY).consecutive_failures == 0


def test_a_count_stored_without_its_times_still_opens_at_the_threshold() -> None:
    # A breaker written by the release before: four failures counted, no times (read as at its last success)
    older = BreakerState(consecutive_failures=4, last_success_at=NOW - 60, version=9)
    assert older.failure_run == (NOW - 60,) * 4

    opened = record(older, [failure(NOW)], NOW, POLICY)

    assert opened is not None and (opened.phase, opened.until) == (Phase.OPEN, NOW + 30)

"""Attempt numbers from the message, full-jitter backoff, Retry-After, deferral delays."""

from __future__ import annotations

import math
import random
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.logic import retry
from relay.models.targets import MAX_INTERVAL_MS, RetryMatrix

MATRIX = RetryMatrix(attempts=5, base_interval_ms=1000, max_interval_ms=30000, multiplier=2)


def _attrs(attempts: int | None = None) -> dict[str, object]:
    if attempts is None:
        return {}
    return {"relay-attempts": {"stringValue": str(attempts), "dataType": "Number"}}


def test_attempt_number_adds_carried_attempts_to_the_receive_count() -> None:
    assert retry.attempt_number(_attrs(), 1) == 1
    assert retry.attempt_number(_attrs(), 3) == 3
    assert retry.attempt_number(_attrs(2), 1) == 3  # a deferral re-queue carried two attempts
    assert retry.attempt_number({"relay-attempts": {"stringValue": "x"}}, 1) == 1


def test_exhausted_after_the_matrix_attempts() -> None:
    assert not retry.exhausted(MATRIX, 4)
    assert retry.exhausted(MATRIX, 5)


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=2**32))
def test_full_jitter_stays_within_the_growing_capped_ceiling(attempt: int, seed: int) -> None:
    ceiling = min(30.0, 1.0 * 2 ** (attempt - 1)) if attempt < 60 else 30.0
    delay = retry.retry_delay_seconds(MATRIX, attempt, rng=random.Random(seed))
    assert 1 <= delay <= ceiling  # whole seconds, at least one, never past the ceiling


# Every matrix the model accepts: intervals up to its 12 h bound, multipliers up to infinity.
any_matrix = st.builds(
    RetryMatrix,
    attempts=st.integers(min_value=1, max_value=50),
    base_interval_ms=st.integers(min_value=0, max_value=MAX_INTERVAL_MS),
    max_interval_ms=st.integers(min_value=0, max_value=MAX_INTERVAL_MS),
    multiplier=st.floats(min_value=1.0, allow_nan=False),
)


@given(any_matrix, st.integers(min_value=1) | st.integers(min_value=10**18), st.integers(0, 2**32))
def test_any_matrix_and_attempt_give_a_finite_delay_within_its_cap(
    matrix: RetryMatrix, attempt: int, seed: int
) -> None:
    cap_seconds = float(min(matrix.max_interval_ms, sys.float_info.max)) / 1000
    ceiling = retry.backoff_ceiling_seconds(matrix, attempt)
    assert math.isfinite(ceiling) and 0 <= ceiling <= cap_seconds
    delay = retry.retry_delay_seconds(matrix, attempt, rng=random.Random(seed))
    # Whole seconds: none for a matrix that asks for none, else at least one and never past the
    # ceiling's whole seconds (when it has one) nor SQS's longest visibility timeout
    if ceiling == 0:
        assert delay == 0
    else:
        assert 1 <= delay <= min(retry.SQS_MAX_VISIBILITY_SECONDS, max(1, math.floor(ceiling)))


def test_a_huge_multiplier_saturates_at_the_cap_instead_of_overflowing() -> None:
    # The probe's matrix: 1e200 squared is past what a float holds
    matrix = RetryMatrix(attempts=4, base_interval_ms=100, max_interval_ms=200, multiplier=1e200)
    assert retry.backoff_ceiling_seconds(matrix, 3) == 0.2
    assert retry.retry_delay_seconds(matrix, 3, rng=random.Random(5)) == 1  # 0.2 s: SQS's least, 1 s


def test_a_multiplier_of_one_keeps_the_base_interval_at_any_attempt() -> None:
    steady = RetryMatrix(base_interval_ms=1500, max_interval_ms=30_000, multiplier=1.0)
    assert retry.backoff_ceiling_seconds(steady, 1) == retry.backoff_ceiling_seconds(steady, 10**6) == 1.5
    assert retry.backoff_ceiling_seconds(RetryMatrix(base_interval_ms=0, multiplier=1e300), 10**6) == 0


def test_jitter_actually_spreads_retries() -> None:
    rng = random.Random(7)
    delays = {retry.retry_delay_seconds(MATRIX, 6, rng=rng) for _ in range(200)}
    assert len(delays) > 10


@pytest.mark.parametrize(
    ("base_ms", "max_ms", "attempt", "waits_seen"),
    [
        (1000, 30_000, 1, {1}),  # the default matrix's first retry: a ceiling of 1 s
        (1000, 30_000, 2, {1, 2}),  # its second: 2 s
        (200, 1500, 3, {1}),  # 0.8 s: SQS's least wait, 1 s (never 0: a blip would use up the attempts)
        (1500, 1500, 3, {1}),  # 1.5 s: never 2, past maxIntervalMs
        (3000, 5000, 2, {1, 2, 3, 4, 5}),  # 5 s: spread over every whole second
        (0, 5000, 3, {0}),  # a matrix that asks for no wait gets none
    ],
)
def test_whole_second_waits_are_spread_within_the_ceiling_and_never_zero_unless_asked(
    base_ms: int, max_ms: int, attempt: int, waits_seen: set[int]
) -> None:
    # SQS takes whole seconds: rounding every draw up let a wait pass a fractional maxIntervalMs (2 s
    # under 1.5 s); rounding to the nearest would retry at once half the time under a 1 s ceiling.
    matrix = RetryMatrix(attempts=5, base_interval_ms=base_ms, max_interval_ms=max_ms, multiplier=2)
    rng = random.Random(11)
    waits = [retry.retry_delay_seconds(matrix, attempt, rng=rng) for _ in range(4000)]
    assert set(waits) == waits_seen


def test_retry_after_is_a_floor_and_is_clamped() -> None:
    rng = random.Random(1)
    assert retry.retry_delay_seconds(MATRIX, 1, rng=rng, retry_after_seconds=120) == 120
    assert retry.retry_delay_seconds(MATRIX, 1, rng=rng, retry_after_seconds=10**9) == 43_200
    assert (
        retry.retry_delay_seconds(MATRIX, 1, rng=rng, retry_after_seconds=5000, max_delay_seconds=600) == 600
    )


def test_deferral_delay_fits_sqs_delay_seconds() -> None:
    rng = random.Random(3)
    assert 1 <= retry.deferral_delay_seconds(0, rng=rng) <= 3
    assert 30 <= retry.deferral_delay_seconds(30, rng=rng) <= 32
    assert retry.deferral_delay_seconds(5000, rng=rng) == 900


def test_a_message_moved_back_from_the_dlq_counts_as_a_fresh_try() -> None:
    # Given a message the move task brought back with its dead-letter notes still attached
    moved = {
        "relay-attempts": {"stringValue": "3", "dataType": "Number"},
        "relay-deferrals": {"stringValue": "2", "dataType": "Number"},
        "relay-dlq-reason": {"stringValue": "exhausted", "dataType": "String"},
    }
    # Then its counters read as zero: the first receive is attempt 1
    assert retry.attempt_number(moved, 1) == 1
    assert retry.deferrals_before(moved) == 0


def test_planned_attempts_stay_below_the_redrive_backstop() -> None:
    generous = RetryMatrix(attempts=50)
    assert retry.planned_attempts(generous) == 50
    assert retry.planned_attempts(generous, max_receive_count=10) == 9
    assert retry.planned_attempts(RetryMatrix(attempts=3), max_receive_count=10) == 3
    assert retry.exhausted(generous, 9, max_receive_count=10)
    assert not retry.exhausted(generous, 8, max_receive_count=10)

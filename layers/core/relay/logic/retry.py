"""When to try again: attempt numbers from the message, full-jitter backoff from the target's matrix.

The attempt number survives everything SQS does to a message: ``ApproximateReceiveCount`` counts the
receives of *this* message, and the ``relay-attempts`` attribute carries the attempts made before a
deferral re-queue created it (a deferral is a new message, so its receive count starts again at 1).

    attempt of this receive = relay-attempts + ApproximateReceiveCount

A message that still carries ``relay-dlq-reason`` came back from the dead-letter queue through SQS's
move task (which cannot change attributes): a redrive is a fresh try, so its counters read as 0.

The attempts a target may plan are capped one below the queue's ``maxReceiveCount``: the redrive
policy is a backstop for crashes, and must never pre-empt the relay's own, explained dead-lettering.

Backoff for the n-th failed attempt ("full jitter"): uniform(0, min(maxInterval, base * multiplier^(n-1))),
in whole seconds (what SQS's visibility timeout takes), rounded down or up at random in proportion to
the fraction, at least 1 s and at most the ceiling's whole seconds (when it is 1 s or more). The floor
keeps a blip from using up a target's attempts in a moment (a draw rounded to 0 would retry at once);
the rounding keeps the spread above it. Rounding every draw up, as before, sent every wait under 1 s
to exactly 1 s and let a wait pass a fractional maxInterval (2 s under 1.5 s). A matrix whose base is 0
asks for no wait, and gets none.
A receiver's Retry-After is honoured as a floor, clamped to ``max_delay_seconds`` (SQS allows a
visibility timeout of at most 12 h).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Mapping
from typing import Any

from relay.models.delivery import ATTR_ATTEMPTS, ATTR_DEFERRALS, ATTR_DLQ_REASON
from relay.models.targets import RetryMatrix

SQS_MAX_VISIBILITY_SECONDS = 43_200
# Every queue of the template keeps a message 14 days, the most SQS allows; then it is deleted unseen.
SQS_RETENTION_SECONDS = 1_209_600
# A retry must come back this long before its message's retention ends: time to receive and attempt it.
RETENTION_MARGIN_SECONDS = 900
SQS_MAX_DELAY_SECONDS = 900
# SQS counts a visibility change from the message's receive, which came before the invocation by up to
# the event source's batching window (MaximumBatchingWindowInSeconds is at most 300).
RECEIVE_BEFORE_INVOCATION_SECONDS = 300


def visibility_left_seconds(held_seconds: float) -> int:
    """The longest visibility timeout SQS still accepts for a record this invocation has held for
    ``held_seconds``: 12 h from its receive."""
    return max(0, SQS_MAX_VISIBILITY_SECONDS - RECEIVE_BEFORE_INVOCATION_SECONDS - math.ceil(held_seconds))


def retention_left_seconds(sent_at: float | None, now: float) -> float | None:
    """Seconds until SQS deletes a message sent at ``sent_at`` (epoch seconds); None if unknown."""
    return None if sent_at is None else SQS_RETENTION_SECONDS - (now - sent_at)


def outlives_retention(sent_at: float | None, delay_seconds: int, now: float) -> bool:
    """True when a retry ``delay_seconds`` from ``now`` would come back too late for an attempt before
    SQS deletes the message: a long schedule (many attempts, long intervals, a day-long Retry-After)
    would otherwise lose it without a dead letter."""
    left = retention_left_seconds(sent_at, now)
    return left is not None and delay_seconds + RETENTION_MARGIN_SECONDS > left


def int_attribute(message_attributes: Mapping[str, Any], name: str) -> int:
    """A Number message attribute as it appears in a Lambda SQS event (``stringValue``); 0 if absent."""
    raw = message_attributes.get(name) or {}
    value = raw.get("stringValue", raw.get("StringValue")) if isinstance(raw, Mapping) else None
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def redriven(message_attributes: Mapping[str, Any]) -> bool:
    """True for a message moved back from the DLQ with its dead-letter attributes still on it."""
    return ATTR_DLQ_REASON in message_attributes


def attempts_before(message_attributes: Mapping[str, Any]) -> int:
    if redriven(message_attributes):
        return 0
    return int_attribute(message_attributes, ATTR_ATTEMPTS)


def deferrals_before(message_attributes: Mapping[str, Any]) -> int:
    if redriven(message_attributes):
        return 0
    return int_attribute(message_attributes, ATTR_DEFERRALS)


def attempt_number(message_attributes: Mapping[str, Any], receive_count: int) -> int:
    """1-based number of the attempt this receive is about to make."""
    return attempts_before(message_attributes) + max(1, receive_count)


def planned_attempts(matrix: RetryMatrix, max_receive_count: int | None = None) -> int:
    """The attempts the relay makes: the matrix's, kept below the redrive backstop."""
    if max_receive_count is None:
        return matrix.attempts
    return max(1, min(matrix.attempts, max_receive_count - 1))


def exhausted(matrix: RetryMatrix, attempt: int, *, max_receive_count: int | None = None) -> bool:
    """True when attempt ``attempt`` was the last one planned."""
    return attempt >= planned_attempts(matrix, max_receive_count)


def backoff_ceiling_seconds(matrix: RetryMatrix, attempt: int) -> float:
    """min(maxInterval, base * multiplier^(attempt-1)) in seconds, for any matrix the model accepts: a
    power past what a float holds is past the cap too, so it saturates there instead of raising."""
    cap_ms = _as_float(matrix.max_interval_ms)
    base_ms = _as_float(matrix.base_interval_ms)
    if base_ms == 0:
        return 0.0  # no wait, however large the multiplier (0 * inf would be nan)
    try:
        grown_ms = base_ms * matrix.multiplier ** max(0, attempt - 1)
    except OverflowError:
        grown_ms = math.inf
    return min(cap_ms, grown_ms) / 1000.0


def _as_float(milliseconds: int) -> float:
    # The model bounds neither interval from above: an int too large for a float counts as the largest.
    return float(min(milliseconds, sys.float_info.max))


def retry_delay_seconds(
    matrix: RetryMatrix,
    attempt: int,
    *,
    rng: random.Random,
    retry_after_seconds: float | None = None,
    max_delay_seconds: int = SQS_MAX_VISIBILITY_SECONDS,
) -> int:
    """Whole seconds until the next attempt after attempt ``attempt`` failed (a visibility timeout)."""
    cap = min(max_delay_seconds, SQS_MAX_VISIBILITY_SECONDS)
    ceiling = backoff_ceiling_seconds(matrix, attempt)
    drawn = rng.uniform(0.0, ceiling)
    whole = math.floor(drawn)
    delay = whole + (rng.random() < drawn - whole)
    if ceiling > 0:
        delay = min(max(delay, 1), max(1, math.floor(ceiling)))
    if retry_after_seconds is not None:  # a floor: never sooner than the receiver asked
        delay = max(delay, math.ceil(min(retry_after_seconds, cap)))
    return min(cap, max(0, delay))


def deferral_delay_seconds(seconds_until_probe: float, *, rng: random.Random) -> int:
    """DelaySeconds for a record re-queued while its target's breaker is open: until the breaker may
    half-open, plus a little jitter so deferred records do not all return in the same second."""
    delay = math.ceil(max(1.0, seconds_until_probe)) + rng.randint(0, 2)
    return min(SQS_MAX_DELAY_SECONDS, delay)

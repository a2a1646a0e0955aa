"""HTTP results to outcomes: the response-code pipeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from relay.logic.outcomes import Verdict, classify
from relay.models.http import (
    CONNECT_TIMEOUT,
    CONNECTION_ERROR,
    DEADLINE_EXCEEDED,
    INCOMPLETE_RESPONSE,
    READ_TIMEOUT,
    UNSAFE_ADDRESS,
    HttpResult,
    parse_retry_after,
)

NOW = datetime(2026, 11, 28, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (202, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (301, Verdict.PERMANENT),
        (302, Verdict.PERMANENT),
        (307, Verdict.PERMANENT),
        (400, Verdict.PERMANENT),
        (401, Verdict.PERMANENT),
        (404, Verdict.PERMANENT),
        (408, Verdict.RETRYABLE),
        (410, Verdict.GONE),
        (413, Verdict.PERMANENT),
        (425, Verdict.RETRYABLE),
        (429, Verdict.RETRYABLE),
        (500, Verdict.RETRYABLE),
        (502, Verdict.RETRYABLE),
        (503, Verdict.RETRYABLE),
        (504, Verdict.RETRYABLE),
        (599, Verdict.RETRYABLE),
        (101, Verdict.PERMANENT),
    ],
)
def test_status_codes(status: int, verdict: Verdict) -> None:
    outcome = classify(HttpResult(status, 1.0), now=NOW)
    assert outcome.verdict is verdict
    assert outcome.status == status


@pytest.mark.parametrize(
    "code", [CONNECT_TIMEOUT, READ_TIMEOUT, DEADLINE_EXCEEDED, CONNECTION_ERROR, INCOMPLETE_RESPONSE]
)
def test_network_failures_are_retryable_and_count_against_the_endpoint(code: str) -> None:
    outcome = classify(HttpResult(None, 1.0, error_code=code), now=NOW)
    assert outcome.verdict is Verdict.RETRYABLE and outcome.endpoint_unhealthy and outcome.error_code == code


@pytest.mark.parametrize("status", [200, 204, 400, 410, 503])
@pytest.mark.parametrize("code", [INCOMPLETE_RESPONSE, DEADLINE_EXCEEDED, READ_TIMEOUT])
def test_a_response_cut_off_is_no_answer_whatever_its_status_line_said(status: int, code: str) -> None:
    # A 2xx is not delivered, a 4xx not dead-lettered, a 410 does not disable the target: retry it,
    # and let the breaker count it like a connection error. The status stays for the audit.
    outcome = classify(HttpResult(status, 1.0, error_code=code), now=NOW)
    assert (outcome.verdict, outcome.status, outcome.error_code) == (Verdict.RETRYABLE, status, code)
    assert outcome.endpoint_unhealthy


def test_a_refused_address_is_permanent_and_not_the_endpoints_fault() -> None:
    outcome = classify(HttpResult(None, 1.0, error_code=UNSAFE_ADDRESS), now=NOW)
    assert outcome.verdict is Verdict.PERMANENT and not outcome.endpoint_unhealthy


def test_a_4xx_answer_means_the_endpoint_is_up() -> None:
    assert not classify(HttpResult(400, 1.0), now=NOW).endpoint_unhealthy
    assert classify(HttpResult(503, 1.0), now=NOW).endpoint_unhealthy


@pytest.mark.parametrize(
    ("status", "headers", "throttled"),
    [
        (429, {}, True),
        (429, {"retry-after": "3"}, True),
        (503, {"retry-after": "3"}, True),
        (503, {}, False),
        (502, {"retry-after": "3"}, False),
        (200, {}, False),
    ],
)
def test_a_throttle_asks_for_less_and_is_no_failure_of_the_endpoint(
    status: int, headers: dict[str, str], throttled: bool
) -> None:
    outcome = classify(HttpResult(status, 1.0, headers=headers), now=NOW)

    assert outcome.throttled is throttled
    # retried like before, but the breaker does not count a throttle against the endpoint
    assert outcome.endpoint_unhealthy is (status >= 500 and not throttled)


def test_retry_after_in_seconds_and_as_a_date() -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert classify(HttpResult(429, 1.0, headers={"retry-after": "120"}), now=NOW).retry_after_seconds == 120
    assert classify(HttpResult(503, 1.0, headers={"retry-after": later}), now=NOW).retry_after_seconds == 90
    assert parse_retry_after("tomorrow-ish", now=NOW) is None
    assert parse_retry_after(None, now=NOW) is None
    past = format_datetime(NOW - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(past, now=NOW) == 0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("\u00b2", None),  # superscript two: a digit to str.isdigit, not to float
        ("\u0663", None),  # Arabic-Indic three
        ("1.5", None),
        ("-5", None),
        ("9" * 400, 43_200),  # beyond a float: clamped, never infinite
        ("315360000", 43_200),  # ten years
        (format_datetime(datetime(9999, 12, 31, tzinfo=UTC), usegmt=True), 43_200),
    ],
)
def test_a_retry_after_is_ascii_seconds_or_a_date_and_never_beyond_12_hours(
    value: str, seconds: float | None
) -> None:
    # An endpoint's answer must never crash the attempt or stop a target for years
    assert parse_retry_after(value, now=NOW) == seconds

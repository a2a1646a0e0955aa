"""What one delivery attempt's result means: the seed's response-code pipeline, done right.

    2xx                                   delivered
    408, 425, 429, 5xx                    retryable (Retry-After honoured, see relay.logic.retry);
                                          429 and 503 + Retry-After also cut the target's rate
    timeouts, connection errors           retryable
    a response cut off (any status)       retryable: incomplete-response, or deadline-exceeded
    410                                   gone: disable the target, dead-letter
    3xx (redirects are not followed)      permanent: dead-letter at once
    other 4xx, 1xx, anything else         permanent: dead-letter at once
    connect-time address refused          permanent (the URL policy will not change its mind)

Only a complete answer counts. A response the peer cut off (closed after the status line, or before
its Content-Length or last chunk) or the request's deadline cut off is not one, whatever its status
line said: the record is retried (receivers deduplicate on webhook-id) and the breaker counts it
like a connection error. A body longer than our own read bound is complete: we stopped reading.

This is the one place HTTP results become outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from relay.models.http import (
    CONNECT_TIMEOUT,
    CONNECTION_ERROR,
    DEADLINE_EXCEEDED,
    INCOMPLETE_RESPONSE,
    READ_TIMEOUT,
    HttpResult,
    parse_retry_after,
)

RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Network failures: the endpoint was reached (or tried) and did not give a complete answer in time.
RETRYABLE_ERRORS = frozenset(
    {CONNECT_TIMEOUT, READ_TIMEOUT, DEADLINE_EXCEEDED, CONNECTION_ERROR, INCOMPLETE_RESPONSE}
)


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    GONE = "gone"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status: int | None
    error_code: str | None
    retry_after_seconds: float | None = None
    # A time-out of a request whose time the attempt had mostly spent before it (a slow token request,
    # a 401's first try): the relay cut it, so it says nothing about the endpoint.
    cut_short: bool = False

    @property
    def reached_endpoint(self) -> bool:
        """An HTTP answer or a network failure; not a local problem (secrets, policy) before sending."""
        return self.status is not None or self.error_code in RETRYABLE_ERRORS

    @property
    def judges_endpoint(self) -> bool:
        """What the breaker counts: the endpoint's own answer or failure, not a request the attempt cut
        short. (A cut-short request still reached the endpoint: it took that long, and was sent.)"""
        return self.reached_endpoint and not self.cut_short

    @property
    def throttled(self) -> bool:
        """The endpoint asked us to slow down: 429, or 503 with Retry-After. The rate limiter answers it
        (relay.logic.token_bucket: the target's rate is cut, Retry-After is a floor)."""
        return self.status == 429 or (self.status == 503 and self.retry_after_seconds is not None)

    @property
    def endpoint_unhealthy(self) -> bool:
        """Counts as a failure for the circuit breaker: timeouts, connection errors, responses cut off,
        408/425/5xx.
        A 4xx or 3xx answer means the endpoint is up (the request was wrong), so it counts as healthy;
        so does a throttle (429, 503 with Retry-After): the endpoint is up and asks for less, which the
        rate limiter gives it, so a burst of 429s does not open the breaker."""
        return self.verdict is Verdict.RETRYABLE and self.judges_endpoint and not self.throttled


def classify(result: HttpResult, *, now: datetime) -> Outcome:
    status = result.status
    if status is None or result.error_code is not None:  # no complete answer
        code = result.error_code or CONNECTION_ERROR
        if code in RETRYABLE_ERRORS:
            return Outcome(Verdict.RETRYABLE, status, code)
        return Outcome(Verdict.PERMANENT, status, code)
    if 200 <= status < 300:
        return Outcome(Verdict.DELIVERED, status, None)
    if status == 410:
        return Outcome(Verdict.GONE, status, "http-410")
    if status in RETRYABLE_STATUSES or 500 <= status < 600:
        retry_after = parse_retry_after(result.headers.get("retry-after"), now=now)
        return Outcome(Verdict.RETRYABLE, status, f"http-{status}", retry_after)
    return Outcome(Verdict.PERMANENT, status, f"http-{status}")

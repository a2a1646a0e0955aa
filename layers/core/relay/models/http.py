"""One outbound HTTP request and what it produced: the shared vocabulary of the HTTP adapter
(relay.adapters.http) and the logic that builds requests and judges answers (relay.logic)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Stable error codes for the audit and the outcome mapping (relay.logic.outcomes).
# The longest wait an endpoint's Retry-After can impose (12 h: SQS keeps a message hidden at most that
# long), and the most MAX_RETRY_DELAY_SECONDS may be.
RETRY_AFTER_CEILING_SECONDS = 43_200
CONNECT_TIMEOUT = "connect-timeout"
READ_TIMEOUT = "read-timeout"
DEADLINE_EXCEEDED = "deadline-exceeded"
CONNECTION_ERROR = "connection-error"
INCOMPLETE_RESPONSE = "incomplete-response"
UNSAFE_ADDRESS = "unsafe-address"
INVALID_REQUEST = "invalid-request"


@dataclass(frozen=True)
class OutboundRequest:
    method: str
    url: str
    body: bytes
    headers: dict[str, str]
    encrypted: bool


@dataclass(frozen=True)
class HttpResult:
    """What one request produced: a complete answer (a status and a bounded body, no error code), or
    an error code; ``status`` is kept with the error code when a status line did arrive."""

    status: int | None
    elapsed_ms: float
    body: bytes = b""
    body_truncated: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    error_code: str | None = None
    error: str | None = None


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds, ASCII digits only, or HTTP-date), at most
    RETRY_AFTER_CEILING_SECONDS: an endpoint cannot stop its deliveries for longer than SQS keeps a
    message hidden. None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value) if len(value) <= _CEILING_DIGITS else float(RETRY_AFTER_CEILING_SECONDS)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(0.0, seconds), RETRY_AFTER_CEILING_SECONDS)


_DELTA_SECONDS = re.compile("[0-9]+")  # RFC 9110 delta-seconds; str.isdigit also takes "²"
_CEILING_DIGITS = len(str(RETRY_AFTER_CEILING_SECONDS))

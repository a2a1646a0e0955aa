"""The one ISO 8601 spelling of an instant the relay writes (envelopes, audit records, operator output)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds", "microseconds"]


def iso_utc(moment: datetime, precision: Precision = "milliseconds") -> str:
    """``moment`` in UTC with a ``Z``, e.g. ``2026-03-25T13:20:05.493Z`` (JavaScript's toISOString at
    the default precision, the seed's format). Digits beyond ``precision`` are cut, not rounded."""
    return moment.astimezone(UTC).isoformat(timespec=precision).replace("+00:00", "Z")


def iso_utc_from_epoch(epoch_seconds: float, precision: Precision = "milliseconds") -> str:
    return iso_utc(datetime.fromtimestamp(epoch_seconds, UTC), precision)

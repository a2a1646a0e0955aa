"""Targets' token buckets in the BreakerTable (the port: relay.ports.RateLimitStore), one item per
target under the key ``rate#<integrationId>#<targetId>`` (the breaker's own items have no prefix).

Item: ``bookedUntil``, ``cutRate``, ``cutAt``, ``floorUntil`` (relay.models.rate_limit.BucketState),
``updatedAt``, ``expiresAt`` (TTL: a bucket untouched for a day disappears, which reads as a full
bucket at the configured limit).

Every change is one ``UpdateItem`` whose condition holds exactly when the change is right, with the
arithmetic done by DynamoDB (``bookedUntil = bookedUntil + :total``), so no write needs a read before
it: ``ReturnValues=ALL_NEW`` gives the state a write left, ``ReturnValuesOnConditionCheckFailure=
ALL_OLD`` the state that failed the condition. relay.testing.fakes.InMemoryRateLimitStore has the same
semantics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.aws_errors import AWS_ERRORS, NO_AWS_ANSWER
from relay.errors import RateLimitStoreUnavailable
from relay.models.rate_limit import BucketAnswer, BucketState

RECORD_TTL_SECONDS = 24 * 3600
_NAMES = {
    "#booked": "bookedUntil",
    "#cutRate": "cutRate",
    "#cutAt": "cutAt",
    "#floor": "floorUntil",
    "#updated": "updatedAt",
    "#expires": "expiresAt",
}
_NO_FLOOR = "(attribute_not_exists(#floor) OR #floor <= :now)"


class DynamoRateLimitStore:
    """Bucket items through a boto3 DynamoDB client."""

    def __init__(self, dynamodb: Any, table_name: str, *, clock: Callable[[], float] = time.time) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._clock = clock

    def load(self, key: str) -> BucketState | None:
        try:
            item = self._ddb.get_item(
                TableName=self._table, Key={"targetKey": {"S": key}}, ConsistentRead=True
            ).get("Item")
        except AWS_ERRORS as exc:
            raise RateLimitStoreUnavailable(f"rate-limit bucket unreadable ({type(exc).__name__})") from None
        return _state(item)

    def take(
        self, key: str, *, now: float, count: int, cost: float, idle: bool, latest: float
    ) -> BucketAnswer:
        values = {":now": _n(now)}
        if idle:
            update = "SET #booked = :booked"
            condition = f"(attribute_not_exists(#booked) OR #booked < :now) AND {_NO_FLOOR}"
            values[":booked"] = _n(now + count * cost)
        else:
            update = "SET #booked = #booked + :total"
            values[":total"] = _n(count * cost)
            condition = f"#booked BETWEEN :now AND :latest AND {_NO_FLOOR}"
            values[":latest"] = _n(latest)
        return self._update(key, update, condition, values)

    def cut(
        self, key: str, *, now: float, rate: float, floor_until: float, seen_cut_at: float | None
    ) -> BucketAnswer:
        values = {":now": _n(now), ":rate": _n(rate), ":floor": _n(floor_until)}
        if seen_cut_at is None:
            condition = "attribute_not_exists(#cutAt)"
        else:
            condition = "#cutAt = :seen"
            values[":seen"] = _n(seen_cut_at)
        return self._update(key, "SET #cutRate = :rate, #cutAt = :now, #floor = :floor", condition, values)

    def join(
        self, key: str, *, now: float, contribution: float, floor_until: float, fresh_since: float
    ) -> BucketAnswer:
        return self._update(
            key,
            "SET #cutRate = if_not_exists(#cutRate, :zero) + :contribution, "
            "#cutAt = if_not_exists(#cutAt, :now), #floor = :floor",
            "attribute_not_exists(#cutAt) OR #cutAt >= :fresh",
            {
                ":now": _n(now),
                ":zero": _n(0.0),
                ":contribution": _n(contribution),
                ":floor": _n(floor_until),
                ":fresh": _n(fresh_since),
            },
        )

    def raise_floor(self, key: str, *, floor_until: float) -> BucketAnswer:
        return self._update(
            key,
            "SET #floor = :floor",
            "attribute_not_exists(#floor) OR #floor < :floor",
            {":floor": _n(floor_until)},
        )

    def lift_floor(self, key: str, *, seen: float) -> BucketAnswer:
        # 0 reads as no floor everywhere (``_NO_FLOOR``, ``raise_floor``, BucketState).
        values = {":zero": _n(0.0), ":seen": _n(seen)}
        return self._update(key, "SET #floor = :zero", "#floor > :zero AND #floor <= :seen", values)

    def _update(self, key: str, update: str, condition: str, values: dict[str, Any]) -> BucketAnswer:
        """One conditional UpdateItem, stamping ``updatedAt`` and the TTL."""
        wall = int(self._clock())
        values = {**values, ":updated": _n(wall), ":expires": _n(wall + RECORD_TTL_SECONDS)}
        names = {name: attribute for name, attribute in _NAMES.items() if name in f"{update} {condition}"}
        try:
            answer = self._ddb.update_item(
                TableName=self._table,
                Key={"targetKey": {"S": key}},
                UpdateExpression=f"{update}, #updated = :updated, #expires = :expires",
                ConditionExpression=condition,
                ExpressionAttributeNames={**names, "#updated": "updatedAt", "#expires": "expiresAt"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return BucketAnswer(False, _state(exc.response.get("Item")))
            raise RateLimitStoreUnavailable(f"rate-limit bucket unwritable ({type(exc).__name__})") from None
        except NO_AWS_ANSWER as exc:
            raise RateLimitStoreUnavailable(f"rate-limit bucket unwritable ({type(exc).__name__})") from None
        return BucketAnswer(True, _state(answer.get("Attributes")))


def _n(value: float) -> dict[str, str]:
    """A DynamoDB number: plain decimal notation, to the nanosecond (no exponent)."""
    return {"N": f"{value:.9f}" if isinstance(value, float) else str(value)}


def _state(item: dict[str, Any] | None) -> BucketState | None:
    if not item:
        return None

    def number(name: str) -> float:
        return float(item[name]["N"]) if name in item else 0.0

    try:
        return BucketState(
            booked_until=number("bookedUntil"),
            cut_rate=float(item["cutRate"]["N"]) if "cutRate" in item else None,
            cut_at=number("cutAt"),
            floor_until=number("floorUntil"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise RateLimitStoreUnavailable(f"rate-limit bucket is malformed ({type(exc).__name__})") from None

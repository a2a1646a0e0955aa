"""Circuit-breaker state and lane per target in the BreakerTable, each written only with conditional
updates on its own version.

Item (key ``targetKey`` = "<integrationId>#<targetId>"):

- the breaker: ``phase``, ``consecutiveFailures``, ``trips``, ``until``, ``version``, ``endpoint``
  (a digest of the URL its failures were counted at), ``failureTimes`` (a list of numbers: when the
  failures counted were sent, oldest first) and ``lastSuccessAt`` (when the newest success folded
  was), epoch seconds: results are folded in the order they were sent;
- the lane (relay.logic.dispatch.isolation): ``lane``, ``laneVersion``, ``laneChangedAt``;
- ``retryAfterUntil``: until when the target asked for quiet with a Retry-After
  (relay.logic.dispatch.rate_limit), only ever moved later, by a condition on itself, or removed by
  an operator's ``relay breaker reset`` (relay.logic.breaker_control.lift_quiet);
- ``updatedAt``, ``expiresAt`` (TTL: an idle target's record disappears, which reads as a fresh
  closed breaker in the fast lane).

One consistent ``GetItem`` reads both halves. ``save`` sets only the breaker's attributes, and
succeeds only if the stored ``version`` is still the one the caller read (``attribute_not_exists``
for version 0), so concurrent dispatchers never overwrite each other's transitions and exactly one
of them wins the half-open probe; ``save_lane`` does the same for the lane on ``laneVersion``. A
lane move therefore never costs a breaker transition (or a probe's result) its conditional write,
nor the other way round. relay.testing.fakes.InMemoryBreakerStore has the same semantics.

During a canary deploy the release before still writes the item: it sets ``consecutiveFailures`` but
neither ``failureTimes`` nor ``lastSuccessAt``, so a stale ``failureTimes`` may stay beside a newer
count. Read so that this is safe both ways: the count is trusted, and the failures' times are the last
``consecutiveFailures`` of ``failureTimes``, padded at the front with ``lastSuccessAt`` when fewer are
stored (``BreakerState.failure_run``, so both stores read alike). Missing (an item written before),
they read as none and 0. The release before ignores them and counts as it always did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from relay.adapters.aws_errors import AWS_ERRORS
from relay.adapters.dynamodb import lost_race
from relay.errors import BreakerStoreUnavailable
from relay.models.breaker import BreakerState, DeliveryLane, LaneState, Phase

RECORD_TTL_SECONDS = 7 * 24 * 3600


class DynamoBreakerStore:
    """The BreakerTable through a boto3 DynamoDB client (the port: relay.ports.BreakerStore)."""

    def __init__(self, dynamodb: Any, table_name: str, *, clock: Callable[[], float] = time.time) -> None:
        self._table = table_name
        self._ddb = dynamodb
        self._clock = clock

    def load(self, key: str) -> BreakerState:
        return self.load_with_lane(key)[0]

    def load_with_lane(self, key: str) -> tuple[BreakerState, LaneState]:
        try:
            item = self._ddb.get_item(
                TableName=self._table, Key={"targetKey": {"S": key}}, ConsistentRead=True
            ).get("Item")
        except AWS_ERRORS as exc:
            raise BreakerStoreUnavailable(f"breaker table unreadable ({type(exc).__name__})") from None
        if not item:
            return BreakerState(), LaneState()
        try:
            return _breaker(item), _lane(item)
        except (KeyError, ValueError) as exc:
            raise BreakerStoreUnavailable(
                f"breaker record {key} is malformed ({type(exc).__name__})"
            ) from None

    def save(self, key: str, state: BreakerState, *, expected_version: int) -> bool:
        values: dict[str, dict[str, Any]] = {
            "phase": {"S": state.phase.value},
            "consecutiveFailures": {"N": str(state.consecutive_failures)},
            "trips": {"N": str(state.trips)},
            "until": {"N": repr(state.until)},
            "version": {"N": str(state.version)},
            "failureTimes": {"L": [{"N": repr(at)} for at in state.failure_times]},
            "lastSuccessAt": {"N": repr(state.last_success_at)},
        }
        if state.endpoint is not None:
            values["endpoint"] = {"S": state.endpoint}
        return self._update(key, values, version_attribute="version", expected_version=expected_version)

    def save_lane(self, key: str, lane: LaneState, *, expected_version: int) -> bool:
        values = {
            "lane": {"S": lane.lane.value},
            "laneVersion": {"N": str(lane.version)},
            "laneChangedAt": {"N": repr(lane.changed_at)},
        }
        return self._update(key, values, version_attribute="laneVersion", expected_version=expected_version)

    def mark_retry_after(self, key: str, until: float) -> None:
        now = int(self._clock())
        self._conditional(  # not written: a later time is stored already
            key,
            UpdateExpression="SET retryAfterUntil = :until, updatedAt = :now, expiresAt = :expires",
            ConditionExpression="attribute_not_exists(retryAfterUntil) OR retryAfterUntil < :until",
            ExpressionAttributeValues={
                ":until": {"N": repr(until)},
                ":now": {"N": str(now)},
                ":expires": {"N": str(now + RECORD_TTL_SECONDS)},
            },
        )

    def lift_retry_after(self, key: str, *, seen: float) -> bool:
        return self._conditional(  # not written: a later quiet was asked for since (or none is stored)
            key,
            UpdateExpression="REMOVE retryAfterUntil",
            ConditionExpression="retryAfterUntil <= :seen",
            ExpressionAttributeValues={":seen": {"N": repr(seen)}},
        )

    def _update(
        self,
        key: str,
        values: Mapping[str, dict[str, Any]],  # DynamoDB attribute values
        *,
        version_attribute: str,
        expected_version: int,
    ) -> bool:
        """SET ``values`` (and the timestamps) if ``version_attribute`` is still ``expected_version``."""
        now = int(self._clock())
        values = {**values, "updatedAt": {"N": str(now)}, "expiresAt": {"N": str(now + RECORD_TTL_SECONDS)}}
        names = {f"#a{i}": name for i, name in enumerate(values)}
        attribute_values = {f":v{i}": value for i, value in enumerate(values.values())}
        names["#version"] = version_attribute
        if expected_version == 0:
            condition = "attribute_not_exists(#version)"
        else:
            condition = "#version = :expected"
            attribute_values[":expected"] = {"N": str(expected_version)}
        return self._conditional(
            key,
            UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values))),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=attribute_values,
        )

    def _conditional(self, key: str, **update: Any) -> bool:
        """One conditional ``UpdateItem`` of the target's item; False when its condition failed."""
        try:
            self._ddb.update_item(TableName=self._table, Key={"targetKey": {"S": key}}, **update)
        except AWS_ERRORS as exc:
            if lost_race(exc):
                return False
            raise BreakerStoreUnavailable(f"breaker table unwritable ({type(exc).__name__})") from None
        return True


def _breaker(item: Mapping[str, Any]) -> BreakerState:
    if "version" not in item:  # only the lane was ever written
        return BreakerState()
    return BreakerState(
        phase=Phase(item["phase"]["S"]),
        consecutive_failures=int(item["consecutiveFailures"]["N"]),
        trips=int(item["trips"]["N"]),
        until=float(item["until"]["N"]),
        version=int(item["version"]["N"]),
        endpoint=item["endpoint"]["S"] if "endpoint" in item else None,
        failure_times=tuple(float(at["N"]) for at in item.get("failureTimes", {}).get("L", ())),
        last_success_at=float(item["lastSuccessAt"]["N"]) if "lastSuccessAt" in item else 0.0,
    )


def _lane(item: Mapping[str, Any]) -> LaneState:
    retry_after_until = float(item["retryAfterUntil"]["N"]) if "retryAfterUntil" in item else 0.0
    if "laneVersion" not in item:  # never moved
        return LaneState(retry_after_until=retry_after_until)
    return LaneState(
        lane=DeliveryLane(item["lane"]["S"]),
        version=int(item["laneVersion"]["N"]),
        changed_at=float(item["laneChangedAt"]["N"]),
        retry_after_until=retry_after_until,
    )

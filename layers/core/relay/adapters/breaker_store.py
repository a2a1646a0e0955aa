"""Circuit-breaker state per target in the BreakerTable, written only with conditional, versioned puts.

Item (key ``targetKey`` = "<integrationId>#<targetId>"): ``phase``, ``consecutiveFailures``, ``trips``,
``until``, ``version``, ``updatedAt``, ``expiresAt`` (TTL: an idle target's record disappears, which
reads as a fresh closed breaker).

``save`` succeeds only if the stored version is still the one the caller read (``attribute_not_exists``
for version 0), so concurrent dispatchers never overwrite each other's transitions and exactly one of
them wins the half-open probe. relay.testing.fakes.InMemoryBreakerStore has the same semantics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from relay.adapters.dynamodb import lost_race, version_condition
from relay.errors import BreakerStoreUnavailable
from relay.models.breaker import BreakerState, Phase

RECORD_TTL_SECONDS = 7 * 24 * 3600


class DynamoBreakerStore:
    """The BreakerTable through a boto3 DynamoDB client (the port: relay.ports.BreakerStore)."""

    def __init__(self, dynamodb: Any, table_name: str, *, clock: Callable[[], float] = time.time) -> None:
        self._table = table_name
        self._ddb = dynamodb
        self._clock = clock

    def load(self, key: str) -> BreakerState:
        try:
            item = self._ddb.get_item(
                TableName=self._table, Key={"targetKey": {"S": key}}, ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise BreakerStoreUnavailable(f"breaker table unreadable ({type(exc).__name__})") from None
        if not item:
            return BreakerState()
        try:
            return BreakerState(
                phase=Phase(item["phase"]["S"]),
                consecutive_failures=int(item["consecutiveFailures"]["N"]),
                trips=int(item["trips"]["N"]),
                until=float(item["until"]["N"]),
                version=int(item["version"]["N"]),
            )
        except (KeyError, ValueError) as exc:
            raise BreakerStoreUnavailable(
                f"breaker record {key} is malformed ({type(exc).__name__})"
            ) from None

    def save(self, key: str, state: BreakerState, *, expected_version: int) -> bool:
        now = self._clock()
        item = {
            "targetKey": {"S": key},
            "phase": {"S": state.phase.value},
            "consecutiveFailures": {"N": str(state.consecutive_failures)},
            "trips": {"N": str(state.trips)},
            "until": {"N": repr(state.until)},
            "version": {"N": str(state.version)},
            "updatedAt": {"N": str(int(now))},
            "expiresAt": {"N": str(int(now) + RECORD_TTL_SECONDS)},
        }
        condition = version_condition("targetKey", expected_version or None)  # version 0: no item yet
        try:
            self._ddb.put_item(TableName=self._table, Item=item, **condition)
        except (ClientError, BotoCoreError) as exc:
            if lost_race(exc):
                return False
            raise BreakerStoreUnavailable(f"breaker table unwritable ({type(exc).__name__})") from None
        return True

"""The intake's idempotency records: a conditional claim decides who queues, a second write keeps the answer.

Layout (IdempotencyTable, the powertools idempotency layout): ``id`` (hash key), ``status``
(``INPROGRESS`` | ``COMPLETED``), ``expiration`` (epoch seconds; the table's TTL attribute),
``in_progress_expiration`` (epoch milliseconds: the claim's lease), ``token`` (which attempt holds the
claim) and ``data`` (the answer to replay).

``claim`` is a single ``PutItem`` whose condition lets it through only if no live record exists::

    attribute_not_exists(id) OR expiration < now OR (status = INPROGRESS AND in_progress_expiration < now)

so of any number of concurrent repeats exactly one wins; the others learn from the failed condition
(``ReturnValuesOnConditionCheckFailure=ALL_OLD``) whether the winner has finished (replay its answer) or
is still queueing (ask the sender to retry). The lease is longer than the intake's Lambda timeout, so a
live attempt never loses its claim, and short enough that a crashed attempt blocks repeats only briefly.
``complete`` and ``release`` are conditional on the claim's token, so a stale attempt cannot touch a
newer claim. DynamoDB TTL deletes lazily, which is why the condition compares ``expiration`` itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.aws_errors import AWS_ERRORS, NO_AWS_ANSWER
from relay.errors import DependencyUnavailable
from relay.models.idempotency import Claim

STATUS_IN_PROGRESS = "INPROGRESS"
STATUS_COMPLETED = "COMPLETED"
# Longer than the intake's Lambda timeout (8 s in template.yaml); shorter than Genesys' retry period.
DEFAULT_LEASE_SECONDS = 10.0


class DynamoDBIdempotencyStore:
    """Claims in the IdempotencyTable through a boto3 DynamoDB client; ``clock`` is epoch seconds."""

    def __init__(
        self,
        dynamodb: Any,
        table_name: str,
        *,
        ttl_seconds: int,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table_name
        self._ttl = ttl_seconds
        self._lease = lease_seconds
        self._ddb = dynamodb
        self._clock = clock

    def claim(self, key: str) -> Claim:
        now = self._clock()
        token = uuid.uuid4().hex
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item={
                    "id": {"S": key},
                    "status": {"S": STATUS_IN_PROGRESS},
                    "expiration": {"N": str(int(now) + self._ttl)},
                    "in_progress_expiration": {"N": str(int((now + self._lease) * 1000))},
                    "token": {"S": token},
                },
                ConditionExpression=(
                    "attribute_not_exists(#id) OR #expiry < :now"
                    " OR (#status = :in_progress AND #lease_expiry < :now_ms)"
                ),
                ExpressionAttributeNames={
                    "#id": "id",
                    "#expiry": "expiration",
                    "#status": "status",
                    "#lease_expiry": "in_progress_expiration",
                },
                ExpressionAttributeValues={
                    ":now": {"N": str(int(now))},
                    ":now_ms": {"N": str(int(now * 1000))},
                    ":in_progress": {"S": STATUS_IN_PROGRESS},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _condition_failed(exc):
                raise _unavailable(exc) from None
            return self._existing(key, exc.response.get("Item"), token)
        except NO_AWS_ANSWER as exc:
            raise _unavailable(exc) from None
        return Claim(key=key, state="acquired", token=token)

    def _existing(self, key: str, item: dict[str, Any] | None, token: str) -> Claim:
        if item is None:  # an older DynamoDB (or emulator) that does not return the item: read it
            try:
                found = self._ddb.get_item(TableName=self._table, Key={"id": {"S": key}}, ConsistentRead=True)
                item = found.get("Item")
            except AWS_ERRORS as exc:
                raise _unavailable(exc) from None
        if item is None:  # released between our write and our read: the next attempt will win it
            return Claim(key=key, state="in_progress")
        if item.get("status", {}).get("S") == STATUS_COMPLETED and "data" in item:
            return Claim(key=key, state="completed", response=item["data"]["S"])
        if item.get("token", {}).get("S") == token:
            # Our own write: it was applied, its answer lost, and the SDK's retry met it. Taken for
            # another attempt's claim, the event would be answered as a duplicate and never queued.
            return Claim(key=key, state="acquired", token=token)
        return Claim(key=key, state="in_progress")

    def complete(self, claim: Claim, response: str) -> None:
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"id": {"S": claim.key}},
                UpdateExpression="SET #status = :completed, #data = :data REMOVE #lease_expiry",
                ConditionExpression="#token = :token",
                ExpressionAttributeNames={
                    "#status": "status",
                    "#data": "data",
                    "#lease_expiry": "in_progress_expiration",
                    "#token": "token",
                },
                ExpressionAttributeValues={
                    ":completed": {"S": STATUS_COMPLETED},
                    ":data": {"S": response},
                    ":token": {"S": claim.token or ""},
                },
            )
        except ClientError as exc:
            if not _condition_failed(exc):  # else the lease ran out and another attempt took over
                raise _unavailable(exc) from None
        except NO_AWS_ANSWER as exc:
            raise _unavailable(exc) from None

    def release(self, claim: Claim) -> None:
        try:
            self._ddb.delete_item(
                TableName=self._table,
                Key={"id": {"S": claim.key}},
                ConditionExpression="#token = :token",
                ExpressionAttributeNames={"#token": "token"},
                ExpressionAttributeValues={":token": {"S": claim.token or ""}},
            )
        except ClientError as exc:
            if not _condition_failed(exc):  # else a newer attempt holds the claim: leave it
                raise _unavailable(exc) from None
        except NO_AWS_ANSWER as exc:
            raise _unavailable(exc) from None


def _condition_failed(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def _unavailable(exc: Exception) -> DependencyUnavailable:
    if isinstance(exc, ClientError):
        reason = str(exc.response.get("Error", {}).get("Code", "ClientError"))
    else:
        reason = type(exc).__name__
    return DependencyUnavailable(f"idempotency table unavailable ({reason})")

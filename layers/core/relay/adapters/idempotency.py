"""The intake's idempotency claims: one conditional write per event decides who queues it.

Layout (IdempotencyTable, the powertools idempotency layout): ``id`` (hash key), ``status``
(``INPROGRESS``), ``expiration`` (epoch seconds; the table's TTL attribute: when DynamoDB may delete
the record), ``in_progress_expiration`` (epoch milliseconds: the claim's lease) and ``token`` (which
attempt holds the claim).

``claim`` is the only write of an accepted event: a ``PutItem`` whose condition lets it through only
if no live lease exists::

    attribute_not_exists(in_progress_expiration) OR in_progress_expiration < now

so of any number of concurrent repeats exactly one wins and the others are told the event is in
progress. Nothing is written when the winner has queued: the lease simply runs out. The lease is
longer than the intake's Lambda timeout, so a live attempt never loses its claim; after it, the next
repeat claims again and queues again with the same deterministic deliveryIds (docs/intake.md,
"Exactly once in the queue", says why that is the safe side). ``release`` (only after a failure) is
conditional on the claim's token, so a stale attempt cannot touch a newer claim. Records that an
older relay completed (``COMPLETED``, no lease) count as over, like any expired lease.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from relay.errors import DependencyUnavailable
from relay.models.idempotency import Claim

STATUS_IN_PROGRESS = "INPROGRESS"
# Longer than the intake's Lambda timeout (8 s in template.yaml); shorter than Genesys' retry period.
DEFAULT_LEASE_SECONDS = 10.0


class DynamoDBIdempotencyStore:
    """Claims in the IdempotencyTable through a boto3 DynamoDB client; ``clock`` is epoch seconds.
    ``ttl_seconds`` is how long a record stays in the table (for operators); no decision reads it
    after its lease."""

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
                    "expiration": {"N": str(int(now + max(self._ttl, self._lease)))},
                    "in_progress_expiration": {"N": str(int((now + self._lease) * 1000))},
                    "token": {"S": token},
                },
                ConditionExpression="attribute_not_exists(#lease_expiry) OR #lease_expiry < :now_ms",
                ExpressionAttributeNames={"#lease_expiry": "in_progress_expiration"},
                ExpressionAttributeValues={":now_ms": {"N": str(int(now * 1000))}},
            )
        except ClientError as exc:
            if not _condition_failed(exc):
                raise _unavailable(exc) from None
            return Claim(key=key, state="in_progress")
        except BotoCoreError as exc:
            raise _unavailable(exc) from None
        return Claim(key=key, state="acquired", token=token)

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
        except BotoCoreError as exc:
            raise _unavailable(exc) from None


def _condition_failed(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def _unavailable(exc: ClientError | BotoCoreError) -> DependencyUnavailable:
    if isinstance(exc, ClientError):
        reason = str(exc.response.get("Error", {}).get("Code", "ClientError"))
    else:
        reason = type(exc).__name__
    return DependencyUnavailable(f"idempotency table unavailable ({reason})")

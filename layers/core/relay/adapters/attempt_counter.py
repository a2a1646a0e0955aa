"""Failed attempts of ordered deliveries in the OrderedAttemptsTable (the port: relay.ports.AttemptCounter).

An ordered message that waits behind an earlier one of its conversation is received again and again
without being attempted, so its ``ApproximateReceiveCount`` says nothing about its attempts. This
table does: item key ``messageId`` (the SQS message id: a redriven copy is a new message and starts
afresh), ``failures`` (an atomic ADD per failed attempt), ``expiresAt`` (TTL, past the ordered queue's
14-day retention). A delivery that succeeds at its first receive never touches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from relay.adapters.aws_errors import AWS_ERRORS
from relay.errors import DependencyUnavailable

RECORD_TTL_SECONDS = 15 * 24 * 3600


class DynamoAttemptCounter:
    def __init__(self, dynamodb: Any, table_name: str, *, clock: Callable[[], float] = time.time) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._clock = clock

    def failures(self, message_id: str) -> int:
        try:
            item = self._ddb.get_item(
                TableName=self._table, Key={"messageId": {"S": message_id}}, ConsistentRead=True
            ).get("Item")
        except AWS_ERRORS as exc:
            raise DependencyUnavailable(f"attempts table unreadable ({type(exc).__name__})") from None
        return int(item["failures"]["N"]) if item and "failures" in item else 0

    def add_failure(self, message_id: str) -> int:
        try:
            answer = self._ddb.update_item(
                TableName=self._table,
                Key={"messageId": {"S": message_id}},
                UpdateExpression="ADD failures :one SET expiresAt = :expires",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":expires": {"N": str(int(self._clock()) + RECORD_TTL_SECONDS)},
                },
                ReturnValues="UPDATED_NEW",
            )
        except AWS_ERRORS as exc:
            raise DependencyUnavailable(f"attempts table unwritable ({type(exc).__name__})") from None
        return int(answer["Attributes"]["failures"]["N"])

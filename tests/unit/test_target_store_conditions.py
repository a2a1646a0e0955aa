"""The condition TargetStore.save puts on each write (the DynamoDB client faked at the boundary: a
stand-in that records each PutItem and answers as DynamoDB would; no sockets). tests/integration/
test_target_writes.py proves the same against moto, with racing writers."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.target_store import TargetStore
from relay.models.targets import Integration, Target


class RecordingDynamoDB:
    """Records each PutItem; refuses them all with ConditionalCheckFailedException when ``lose``."""

    def __init__(self, *, lose: bool = False) -> None:
        self.lose = lose
        self.puts: list[dict[str, Any]] = []

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        self.puts.append(kwargs)
        if self.lose:
            error = {
                "Error": {
                    "Code": "ConditionalCheckFailedException",
                    "Message": "The conditional request failed",
                }
            }
            raise ClientError(error, "PutItem")
        return {}


def target(version: int = 1) -> Target:
    return Target(
        integration_id="int-1", target_id="t-1", name="t", url="https://example.com/h", version=version
    )


def test_a_record_read_as_absent_is_written_only_while_there_is_none() -> None:
    client = RecordingDynamoDB()

    assert TargetStore(client, "targets").save(target(), expected_version=None) is True

    (put,) = client.puts
    assert put["ConditionExpression"] == "attribute_not_exists(targetId)"
    assert put["Item"]["targetId"] == {"S": "t-1"} and put["Item"]["version"] == {"N": "1"}


def test_a_record_read_at_a_version_is_written_only_over_that_version() -> None:
    client = RecordingDynamoDB()

    assert TargetStore(client, "targets").save(target(version=4), expected_version=3) is True

    (put,) = client.puts
    assert put["ConditionExpression"] == "#version = :expected"
    assert put["ExpressionAttributeNames"] == {"#version": "version"}
    assert put["ExpressionAttributeValues"] == {":expected": {"N": "3"}}
    assert put["Item"]["version"] == {"N": "4"}


def test_the_integration_record_takes_the_same_condition_on_its_own_sort_key() -> None:
    client = RecordingDynamoDB()

    TargetStore(client, "targets").save(Integration(integration_id="int-1", name="i"), expected_version=None)

    (put,) = client.puts
    assert put["Item"]["targetId"] == {"S": "#integration"}
    assert put["ConditionExpression"] == "attribute_not_exists(targetId)"


def test_a_lost_condition_is_an_answer_not_an_error() -> None:
    client = RecordingDynamoDB(lose=True)

    assert TargetStore(client, "targets").save(target(version=2), expected_version=1) is False
    assert len(client.puts) == 1

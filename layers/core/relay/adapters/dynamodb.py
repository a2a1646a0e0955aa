"""What the DynamoDB adapters that write versioned items share: the condition of a write over what the
writer read, and the answer that says another writer got there first."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

LOST_RACE_CODE = "ConditionalCheckFailedException"


def version_condition(
    key_attribute: str, expected_version: int | None, *, unversioned: bool = False
) -> dict[str, Any]:
    """PutItem's condition: no item yet (``expected_version`` None), or the item still at that version.
    ``unversioned``: an item whose version attribute was read missing or not a number (a hand edit),
    still so (``expected_version`` None): without it such an item could never be replaced."""
    if expected_version is None and unversioned:
        return {
            "ConditionExpression": f"attribute_exists({key_attribute}) AND "
            "(attribute_not_exists(#version) OR NOT attribute_type(#version, :number))",
            "ExpressionAttributeNames": {"#version": "version"},
            "ExpressionAttributeValues": {":number": {"S": "N"}},
        }
    if expected_version is None:
        return {"ConditionExpression": f"attribute_not_exists({key_attribute})"}
    return {
        "ConditionExpression": "#version = :expected",
        "ExpressionAttributeNames": {"#version": "version"},
        "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}},
    }


def lost_race(exc: Exception) -> bool:
    """Whether ``exc`` is DynamoDB refusing a conditional write because the item changed meanwhile."""
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == LOST_RACE_CODE

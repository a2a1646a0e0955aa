"""A deployed stack's outputs (CloudFormation DescribeStacks), for the operator commands' ``--stack-name``."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.aws_errors import NO_AWS_ANSWER
from relay.errors import DependencyUnavailable, UnknownStack


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    """OutputKey -> OutputValue of ``stack_name``; UnknownStack when there is no such stack here."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in str(error.get("Message", "")):
            raise UnknownStack(f"no stack {stack_name} in this account and region") from None
        raise DependencyUnavailable(
            f"CloudFormation unavailable ({error.get('Code') or 'ClientError'})"
        ) from None
    except NO_AWS_ANSWER as exc:
        raise DependencyUnavailable(f"CloudFormation unavailable ({type(exc).__name__})") from None
    if not stacks:
        raise UnknownStack(f"no stack {stack_name} in this account and region")
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}

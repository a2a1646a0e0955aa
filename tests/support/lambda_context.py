"""The context object Lambda passes a handler, for tests that call a handler themselves.

The same class the local stack passes (relay.local.lambda_runtime.LambdaContext), filled in from the
function's template.yaml entry: its name, memory, and a deadline of its Timeout from now. Also that
entry's AWS call bounds (``own_call_bounds``), which a function sets for itself to fit its Timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from relay.local.aws_stack import FUNCTION_AWS_CALL_BOUNDS
from relay.local.lambda_runtime import LambdaContext
from relay.local.template import load_template
from support.handlers import FUNCTIONS


@dataclass(frozen=True)
class _Function:
    name: str
    memory_limit_in_mb: int
    timeout_seconds: float
    region: str
    account_id: str
    call_bounds: tuple[tuple[str, str], ...]


@cache
def _function(name: str) -> _Function:
    """functions/<name>'s entry in template.yaml (the one whose CodeUri is that directory; for the
    dispatcher's code, which the slow lane's SlowDispatcherFunction runs too, the fast lane's)."""
    template = load_template(parameters={"Stage": "local"})
    (logical_id,) = [
        logical_id
        for logical_id in template.resources_of_type("AWS::Serverless::Function")
        if template.function(logical_id).code_dir == FUNCTIONS / name
        and template.function(logical_id).environment.get("DISPATCH_LANE", "fast") == "fast"
    ]
    return _Function(
        name=f"{template.pseudo['AWS::StackName']}-{logical_id}",
        memory_limit_in_mb=int(template.properties(logical_id).get("MemorySize", 128)),
        timeout_seconds=template.function(logical_id).timeout_seconds,
        region=template.pseudo["AWS::Region"],
        account_id=template.pseudo["AWS::AccountId"],
        call_bounds=tuple(
            (key, value)
            for key, value in template.function(logical_id).environment.items()
            if key in FUNCTION_AWS_CALL_BOUNDS
        ),
    )


def own_call_bounds(name: str) -> dict[str, str]:
    """functions/<name>'s AWS call bounds (timeouts, tries) from its template environment: the one part
    of a function's environment the deployment's (``aws_stack``'s) leaves out, for it is the function's."""
    return dict(_function(name).call_bounds)


def lambda_context(name: str, *, timeout_seconds: float | None = None) -> LambdaContext:
    """A fresh context (new request id) for functions/<name>'s handler; ``timeout_seconds`` replaces
    the template's Timeout, from which the remaining time counts down."""
    function = _function(name)
    return LambdaContext(
        function_name=function.name,
        memory_limit_in_mb=function.memory_limit_in_mb,
        timeout_seconds=function.timeout_seconds if timeout_seconds is None else timeout_seconds,
        region=function.region,
        account_id=function.account_id,
    )

"""Run a template function's handler in this process the way Lambda would call it.

The handler is found from the template (``CodeUri`` + ``Handler``) and imported with importlib, with
the code directory put on ``sys.path`` as Lambda puts ``/var/task``. Each call gets a context object
shaped like Lambda's, and the outcome is judged the way Lambda judges it: an exception, a result that
is not JSON, or a run past the function's ``Timeout`` is a function error.

A function given its own ``Settings`` runs each invocation inside ``settings_scope(settings)``: the
local stack runs several functions in one process, each configured from its own template
environment, and none of them touches the process environment.

A template handler imported here is one container: Lambda never runs two invocations in one container
at once, and the handlers' module-level state (powertools' Logger and Metrics) is not built for it, so
invocations of the same handler module run one at a time. Concurrency across containers is what the
dispatcher's worker processes (relay.local.function_worker) are for.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from relay.local.log import log
from relay.local.template import FunctionSpec, Template
from relay.settings import Settings, settings_scope

Handler = Callable[[dict[str, Any], Any], Any]

_import_lock = threading.Lock()
# One lock per imported handler module: its one in-process "container" (see the module docstring).
_container_locks: dict[str, threading.Lock] = {}


class LambdaContext:
    """The attributes and method of Lambda's Python context object that handlers and powertools read."""

    def __init__(
        self,
        function_name: str,
        memory_limit_in_mb: int,
        timeout_seconds: float,
        region: str,
        account_id: str,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/[$LATEST]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class Invocation:
    """What one call of the handler came to: ``result`` when ``error`` is None."""

    result: Any
    error: str | None  # Lambda's errorType: the exception's class name, or "Task timed out"
    duration_ms: float
    request_id: str
    error_message: str | None = None  # Lambda's errorMessage (what an on-failure destination records)


class LocalFunction:
    """One template function: its spec, its handler, and Lambda-like invocation."""

    def __init__(
        self,
        spec: FunctionSpec,
        handler: Handler,
        *,
        function_name: str | None = None,
        memory_limit_in_mb: int = 128,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        settings: Settings | None = None,
    ) -> None:
        """``settings``: the function's own configuration (None: the process environment's)."""
        self.spec = spec
        self.handler = handler
        self.settings = settings
        self.function_name = function_name or f"relay-local-{spec.logical_id}"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.region = region
        self.account_id = account_id

    @classmethod
    def from_template(
        cls,
        template: Template,
        logical_id: str,
        handler: Handler | None = None,
        *,
        settings: Settings | None = None,
    ) -> LocalFunction:
        """The template's function; its own handler unless ``handler`` is given (tests use their own)."""
        spec = template.function(logical_id)
        memory = int(template.resolve(template.properties(logical_id)).get("MemorySize", 128))
        return cls(
            spec,
            handler or load_handler(spec),
            function_name=f"{template.pseudo['AWS::StackName']}-{logical_id}",
            memory_limit_in_mb=memory,
            region=template.pseudo["AWS::Region"],
            account_id=template.pseudo["AWS::AccountId"],
            settings=settings,
        )

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    def new_context(self) -> LambdaContext:
        return LambdaContext(
            self.function_name,
            self.memory_limit_in_mb,
            self.spec.timeout_seconds,
            self.region,
            self.account_id,
        )

    def invoke(self, event: dict[str, Any]) -> Invocation:
        # Waiting for the container is not part of the invocation (nor of its timeout).
        with _container_locks.get(getattr(self.handler, "__module__", "")) or nullcontext():
            return self._invoke(event)

    def _invoke(self, event: dict[str, Any]) -> Invocation:
        context = self.new_context()
        started = time.perf_counter()
        try:
            with settings_scope(self.settings) if self.settings is not None else nullcontext():
                result = self.handler(event, context)
            json.dumps(result)  # Lambda serializes the result; what cannot be serialized is an error
        except Exception as exc:  # noqa: BLE001 - a handler error is an outcome here, as in Lambda
            log.exception("%s failed (request %s)", self.spec.logical_id, context.aws_request_id)
            return Invocation(None, type(exc).__name__, _ms_since(started), context.aws_request_id, str(exc))
        elapsed_ms = _ms_since(started)
        if elapsed_ms > self.spec.timeout_seconds * 1000:
            # Lambda would have stopped the run at its timeout; whatever it returned late does not count.
            log.error("%s timed out after %.0f ms", self.spec.logical_id, elapsed_ms)
            message = f"Task timed out after {self.spec.timeout_seconds:.2f} seconds"
            return Invocation(None, "Task timed out", elapsed_ms, context.aws_request_id, message)
        return Invocation(result, None, elapsed_ms, context.aws_request_id)


def load_handler(spec: FunctionSpec) -> Handler:
    """Import ``Handler`` from ``CodeUri`` as Lambda does (the code directory first on the path)."""
    code_dir = str(spec.code_dir)
    with _import_lock:
        if code_dir not in sys.path:
            sys.path.insert(0, code_dir)
        module = importlib.import_module(spec.handler_module)
        _container_locks.setdefault(module.__name__, threading.Lock())
    handler: Handler = getattr(module, spec.handler_function)
    return handler


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


FunctionSettings = Mapping[str, Settings]  # logical id -> the function's own Settings

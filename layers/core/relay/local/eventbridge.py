"""A local stand-in for the intake's second path: Genesys Cloud -> EventBridge -> the IntakeFunction.

``LocalEventBridge`` answers ``PutEvents``-shaped requests (``{"Entries": [...]}`` in,
``{"FailedEntryCount", "Entries": [{"EventId"} | {"ErrorCode", "ErrorMessage"}]}`` out) and does what
AWS does with each accepted entry, configured from template.yaml itself:

- the rules are the functions' ``EventBridgeRule`` events (``EventBusName``, ``Pattern``); an entry
  matching no rule is accepted and goes nowhere, as in AWS;
- a matching entry becomes the event the function receives (``version``, ``id``, ``detail-type``,
  ``source``, ``account``, ``time``, ``region``, ``resources``, ``detail`` parsed) and the function is
  invoked **asynchronously**: PutEvents answers at once;
- a failed invocation is retried ``EventInvokeConfig.MaximumRetryAttempts`` times (AWS waits about
  1 min, then about 2 min; locally ``retry_delays``, 1 s then 2 s by default), and after the last
  failed try a Lambda destination record (``requestContext`` with ``condition`` and
  ``approximateInvokeCount``, ``requestPayload``, ``responseContext``, ``responsePayload``) is sent to
  the ``DestinationConfig.OnFailure`` queue.

Locally the function is always reachable, so the rule's own ``RetryPolicy`` and ``DeadLetterConfig``
(for events EventBridge cannot hand to Lambda at all) never come into play; that queue exists but
stays empty.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.errors import LocalStackError
from relay.json_input import load_json
from relay.local.api_adapter import HttpResponse, json_response
from relay.local.lambda_runtime import FunctionSettings, Handler, Invocation, LocalFunction
from relay.local.log import log
from relay.local.template import Template

PUT_EVENTS_PATH = "/eventbridge/events"  # under the local API's base URL
DEFAULT_BUS = "default"
MAX_ENTRIES = 10  # PutEvents: 1 to 10 entries per request
MAX_ENTRIES_BYTES = 256 * 1024  # PutEvents: total size of the entries in one request
# PutEvents "will only process nested JSON up to 1000 levels deep". Within 256 KiB a detail can nest
# some 10,000 levels, which Python parses but no longer writes: accepted, such an event failed in the
# intake and then was lost, its failure record (the event inside) too deep for json.dumps.
MAX_DETAIL_DEPTH = 1000
LOCAL_RETRY_DELAYS_SECONDS = (1.0, 2.0)  # AWS: about 60 s, then about 120 s
LAMBDA_DEFAULT_RETRY_ATTEMPTS = 2
LAMBDA_DEFAULT_EVENT_AGE_SECONDS = 21600


class PatternNotEmulated(LocalStackError):
    """The template's event pattern uses an operator the local matcher does not know."""


# --- event patterns ----------------------------------------------------------------------------------
_ABSENT = object()


def check_pattern(pattern: Mapping[str, Any], where: str = "pattern") -> None:
    """Refuse, at start-up, a pattern the matcher would get wrong."""
    for key, rule in pattern.items():
        if isinstance(rule, dict):
            check_pattern(rule, f"{where}.{key}")
        elif not isinstance(rule, list):
            raise PatternNotEmulated(f"{where}.{key}: a pattern field must be a list or an object")
        else:
            for condition in rule:
                if isinstance(condition, dict) and not _known_condition(condition):
                    raise PatternNotEmulated(f"{where}.{key}: {condition} is not emulated locally")


def _known_condition(condition: Mapping[str, Any]) -> bool:
    if len(condition) != 1:
        return False
    ((operator, argument),) = condition.items()
    if operator in ("prefix", "suffix", "equals-ignore-case"):
        return isinstance(argument, str)
    if operator == "exists":
        return isinstance(argument, bool)
    if operator == "anything-but":
        excluded = argument if isinstance(argument, list) else [argument]
        return all(not isinstance(x, dict) or (_known_condition(x) and "exists" not in x) for x in excluded)
    return False


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """EventBridge's matching: every field of the pattern matches (AND), any value in its list (OR)."""
    for key, rule in pattern.items():
        value = event.get(key, _ABSENT)
        if isinstance(rule, dict):
            if not (isinstance(value, dict) and matches(rule, value)):
                return False
        elif not any(_condition_matches(condition, value) for condition in rule):
            return False
    return True


def _condition_matches(condition: Any, value: Any) -> bool:
    # An array in the event matches when any of its elements does.
    values = value if isinstance(value, list) else [] if value is _ABSENT else [value]
    if not isinstance(condition, dict):
        return condition in values
    ((operator, argument),) = condition.items()
    strings = [v for v in values if isinstance(v, str)]
    if operator == "exists":
        return (value is not _ABSENT) is bool(argument)
    if operator == "prefix":
        return any(s.startswith(argument) for s in strings)
    if operator == "suffix":
        return any(s.endswith(argument) for s in strings)
    if operator == "equals-ignore-case":
        return any(s.lower() == str(argument).lower() for s in strings)
    # anything-but: present, and none of the listed values (or none matching the nested condition)
    excluded = argument if isinstance(argument, list) else [argument]
    return bool(values) and not any(
        _condition_matches(x, v) if isinstance(x, dict) else v == x for x in excluded for v in values
    )


# --- the template's rules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AsyncInvokeConfig:
    """A function's ``EventInvokeConfig`` (Lambda's defaults where it has none)."""

    maximum_retry_attempts: int = LAMBDA_DEFAULT_RETRY_ATTEMPTS
    maximum_event_age_seconds: int = LAMBDA_DEFAULT_EVENT_AGE_SECONDS
    on_failure_queue_url: str | None = None  # None: a failed event is dropped, as in AWS


@dataclass(frozen=True)
class Rule:
    """One ``EventBridgeRule`` event of a template function."""

    name: str  # the logical id SAM gives the rule: <function><event>
    event_bus: str
    pattern: Mapping[str, Any]
    function: LocalFunction
    invoke_config: AsyncInvokeConfig
    dead_letter_queue_url: str | None


def rules_from_template(
    template: Template,
    handlers: Mapping[str, Handler] | None = None,
    settings: FunctionSettings | None = None,
) -> list[Rule]:
    """The functions' EventBridge rules; the queues they name must already exist (``create_resources``).

    ``handlers`` replaces a function's own handler by logical id (tests use their own); ``settings``
    gives a function its own configuration (see relay.local.lambda_runtime).
    """
    rules: list[Rule] = []
    for logical_id in template.resources_of_type("AWS::Serverless::Function"):
        props = template.resolve(template.properties(logical_id))
        events = {n: e for n, e in props.get("Events", {}).items() if e.get("Type") == "EventBridgeRule"}
        if not events:
            continue
        function = LocalFunction.from_template(
            template, logical_id, (handlers or {}).get(logical_id), settings=(settings or {}).get(logical_id)
        )
        invoke_config = _invoke_config(template, props.get("EventInvokeConfig") or {})
        for event_name, event in events.items():
            rule = event.get("Properties", {})
            pattern = rule.get("Pattern", {})
            check_pattern(pattern, f"{logical_id}.{event_name}.Pattern")
            dead_letters = (rule.get("DeadLetterConfig") or {}).get("Arn")
            rules.append(
                Rule(
                    name=f"{logical_id}{event_name}",
                    event_bus=_bus_name(str(rule.get("EventBusName") or DEFAULT_BUS)),
                    pattern=pattern,
                    function=function,
                    invoke_config=invoke_config,
                    dead_letter_queue_url=_queue_url(template, dead_letters) if dead_letters else None,
                )
            )
    return rules


def _invoke_config(template: Template, config: Mapping[str, Any]) -> AsyncInvokeConfig:
    on_failure = (config.get("DestinationConfig") or {}).get("OnFailure") or {}
    if on_failure and on_failure.get("Type", "SQS") != "SQS":
        raise ValueError(f"on-failure destination type {on_failure.get('Type')} is not emulated locally")
    destination = on_failure.get("Destination")
    return AsyncInvokeConfig(
        maximum_retry_attempts=int(config.get("MaximumRetryAttempts", LAMBDA_DEFAULT_RETRY_ATTEMPTS)),
        maximum_event_age_seconds=int(
            config.get("MaximumEventAgeInSeconds", LAMBDA_DEFAULT_EVENT_AGE_SECONDS)
        ),
        on_failure_queue_url=_queue_url(template, destination) if destination else None,
    )


def _queue_url(template: Template, arn: str) -> str:
    for logical_id in template.resources_of_type("AWS::SQS::Queue"):
        physical = template.physical.get(logical_id)
        if physical is not None and physical.attributes.get("Arn") == arn:
            return physical.ref
    raise ValueError(f"{arn} is not a queue of the template created locally")


def _bus_name(name_or_arn: str) -> str:
    # arn:aws:events:<region>:<account>:event-bus/<name>, and partner bus names contain slashes
    return name_or_arn.split(":event-bus/", 1)[1] if ":event-bus/" in name_or_arn else name_or_arn


# --- PutEvents ------------------------------------------------------------------------------------------


class _EntryRefused(LocalStackError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _validation_error(message: str) -> HttpResponse:
    return json_response(400, {"__type": "ValidationException", "message": message})


class LocalEventBridge:
    """``PutEvents`` for the template's rules, with Lambda's asynchronous invocation behind it."""

    def __init__(
        self,
        template: Template,
        *,
        sqs: Any,
        handlers: Mapping[str, Handler] | None = None,
        settings: FunctionSettings | None = None,
        retry_delays: Sequence[float] = LOCAL_RETRY_DELAYS_SECONDS,
        max_concurrent_invocations: int = 4,
    ) -> None:
        """``sqs``: the client that sends on-failure records; ``retry_delays``: the waits before the
        first, second, ... retry of a failed invocation (the last one repeats)."""
        self.rules = rules_from_template(template, handlers, settings)
        self.account = template.pseudo["AWS::AccountId"]
        self.region = template.pseudo["AWS::Region"]
        self.buses = {DEFAULT_BUS} | {rule.event_bus for rule in self.rules}
        self._sqs = sqs
        self._retry_delays = tuple(retry_delays) or (0.0,)
        self._pool = ThreadPoolExecutor(max_concurrent_invocations, thread_name_prefix="eventbridge")
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0

    # --- lifecycle and observation -------------------------------------------------------------------
    def stop(self) -> None:
        """Let invocations in flight finish; events still waiting for a retry are given up (logged)."""
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every accepted event is done: delivered, or its failure recorded (True)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    # --- the API -----------------------------------------------------------------------------------------
    def handle_http(self, body: bytes) -> HttpResponse:
        """The local API endpoint: a PutEvents request body in, PutEvents' answer out."""
        try:
            request = load_json(body)
        except ValueError:
            return _validation_error("the request body is not JSON")
        if not isinstance(request, dict):
            return _validation_error("the request body must be a JSON object with Entries")
        entries = request.get("Entries")
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ENTRIES:
            return _validation_error(f"Entries must be a list of 1 to {MAX_ENTRIES} entries")
        if sum(entry_size(entry) for entry in entries) > MAX_ENTRIES_BYTES:
            return _validation_error("Total size of the entries in the request is over the limit.")
        return json_response(200, self.put_events(entries))

    def put_events(self, entries: Sequence[Any]) -> dict[str, Any]:
        """Accept or refuse each entry, start the invocations of the rules it matches, answer at once."""
        results: list[dict[str, str]] = []
        for entry in entries:
            try:
                bus, event = self._event_for(entry)
            except _EntryRefused as refused:
                results.append({"ErrorCode": refused.code, "ErrorMessage": refused.message})
                continue
            for rule in self.rules:
                if rule.event_bus == bus and matches(rule.pattern, event):
                    self._start(rule, event)
            results.append({"EventId": event["id"]})
        failed = sum(1 for result in results if "ErrorCode" in result)
        return {"FailedEntryCount": failed, "Entries": results}

    def _event_for(self, entry: Any) -> tuple[str, dict[str, Any]]:
        """The bus an entry is for and the event a rule target receives."""
        if not isinstance(entry, dict):
            raise _EntryRefused("InvalidArgument", "An entry must be a JSON object.")
        for field in ("Source", "DetailType", "Detail"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise _EntryRefused(
                    "InvalidArgument",
                    f"Parameter {field} is not valid. Reason: {field} is a required argument.",
                )
        try:
            detail = load_json(entry["Detail"], parse_constant=_not_json)
        except ValueError:
            detail = None
        if not isinstance(detail, dict) or _deeper_than(detail, MAX_DETAIL_DEPTH):
            raise _EntryRefused("MalformedDetail", "Detail is malformed.")
        resources = entry.get("Resources", [])
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            raise _EntryRefused("InvalidArgument", "Parameter Resources is not valid.")
        bus = _bus_name(str(entry.get("EventBusName") or DEFAULT_BUS))
        if bus not in self.buses:
            raise _EntryRefused("ResourceNotFoundException", f"Event bus {bus} does not exist.")
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": entry["DetailType"],
            "source": entry["Source"],
            "account": self.account,
            "time": _event_time(entry.get("Time")),
            "region": self.region,
            "resources": resources,
            "detail": detail,
        }
        return bus, event

    # --- Lambda's asynchronous invocation -----------------------------------------------------------------
    def _start(self, rule: Rule, event: dict[str, Any]) -> None:
        with self._idle:
            self._pending += 1
        future = self._pool.submit(self._invoke_async, rule, event)
        future.add_done_callback(lambda _: self._done())

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _invoke_async(self, rule: Rule, event: dict[str, Any]) -> None:
        try:
            self._invoke_with_retries(rule, event)
        except Exception:  # a fault here (e.g. the failure queue unreachable) must not vanish in the pool
            log.exception("%s: event %s was lost by the local EventBridge", rule.name, event["id"])

    def _invoke_with_retries(self, rule: Rule, event: dict[str, Any]) -> None:
        config = rule.invoke_config
        expires = time.monotonic() + config.maximum_event_age_seconds
        attempts = 0
        while True:
            invocation = rule.function.invoke(event)
            attempts += 1
            if invocation.error is None:
                return
            if attempts > config.maximum_retry_attempts:
                condition = "RetriesExhausted"
                break
            delay = self._retry_delays[min(attempts, len(self._retry_delays)) - 1]
            if time.monotonic() + delay > expires:
                condition = "EventAgeExceeded"
                break
            log.info(
                "%s failed event %s (try %d); retrying in %.1f s", rule.name, event["id"], attempts, delay
            )
            if self._stopping.wait(delay):
                log.warning("stopping: event %s gives up its remaining retries", event["id"])
                return
        self._record_failure(rule, event, invocation, condition, attempts)

    def _record_failure(
        self, rule: Rule, event: dict[str, Any], invocation: Invocation, condition: str, attempts: int
    ) -> None:
        queue_url = rule.invoke_config.on_failure_queue_url
        if queue_url is None:
            log.warning(
                "%s dropped event %s after %d tries (no on-failure destination)",
                rule.name,
                event["id"],
                attempts,
            )
            return
        record = destination_record(rule.function, event, invocation, condition, attempts)
        self._sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(record))
        log.warning(
            "%s failed event %s after %d tries; recorded in %s", rule.name, event["id"], attempts, queue_url
        )


def destination_record(
    function: LocalFunction, event: dict[str, Any], invocation: Invocation, condition: str, attempts: int
) -> dict[str, Any]:
    """What Lambda sends an on-failure destination for a failed asynchronous invocation."""
    response: dict[str, Any] = {"errorMessage": invocation.error_message or invocation.error}
    if invocation.error != "Task timed out":
        response["errorType"] = invocation.error
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": invocation.request_id,
            "functionArn": f"{function.arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": response,
    }


def entry_size(entry: Any) -> int:
    """PutEvents' entry size: Time (14 bytes), Source, DetailType, Detail and Resources in UTF-8."""
    if not isinstance(entry, dict):
        return 0
    size = 14 if entry.get("Time") is not None else 0
    texts = [entry.get("Source"), entry.get("DetailType"), entry.get("Detail")]
    resources = entry.get("Resources")
    texts += resources if isinstance(resources, list) else []
    return size + sum(len(t.encode("utf-8", errors="replace")) for t in texts if isinstance(t, str))


def _event_time(value: Any) -> str:
    """``Time`` as an ISO 8601 string or epoch seconds (the SDKs send the latter); now when absent."""
    if value is None:
        moment = datetime.now(UTC)
    else:
        try:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, int | float):
                moment = datetime.fromtimestamp(value, UTC)
            else:
                moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except (TypeError, ValueError, OverflowError, OSError):
            raise _EntryRefused("InvalidArgument", "Parameter Time is not valid.") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest in ``value`` more than ``limit`` levels (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False

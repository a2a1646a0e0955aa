"""The intake: let in every genuine Genesys Cloud event exactly once, fast, and nothing else.

Two triggers reach the same ``Intake``:

* **API Gateway HTTP API (payload v2)**, ``POST /webhooks/{integrationId}`` from Genesys Open Messaging:
  method, size, content type, integration, signature, JSON, schema, channel.id are checked in that
  order (cheap and input-only checks first, one DynamoDB read at most before the signature is known
  good); the event is claimed in the idempotency store, one ``DeliveryTask`` per enabled target is
  queued, carrying the body's JSON text exactly as received, and the answer is 202. Refusals are 4xx
  JSON ``{"error", "message"}``; an AWS dependency that fails is 503 with ``Retry-After`` so Genesys
  retries; client input never causes a 5xx.
* **EventBridge** (Genesys' partner event source), routed by a rule: no signature (the trust is the
  AWS partner source), fanned out to the targets of ``EVENTBRIDGE_INTEGRATION_ID``. Failures raise,
  so Lambda's asynchronous retries and the function's on-failure destination keep the event.

Errors become answers in exactly one place: ``Intake.handle_http``.

Bodies too large for one SQS message (with headroom for the dispatcher's attributes) are stored once
in the audit bucket under ``events/`` and queued by reference (claim check), up to ``MAX_BODY_BYTES``;
larger bodies get 413. See docs/intake.md.

Every collaborator (integration lookup, secret lookup, queue, idempotency store, claim-check store,
clock, metrics) is a constructor parameter, so tests and the benchmark run this with in-memory fakes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from relay.adapters.delivery_queue import MAX_INLINE_BODY_BYTES
from relay.errors import (
    BadRequest,
    ConfigurationError,
    DependencyUnavailable,
    InvalidSignature,
    MethodNotAllowed,
    NonFiniteNumber,
    PayloadTooLarge,
    RejectedRequest,
    RequestInProgress,
    UnknownIntegration,
    UnsupportedMediaType,
)
from relay.logic.signature import CODE_MISMATCH, SIGNATURE_HEADER, verify_signature
from relay.models.delivery import (
    DeliveryTask,
    EventSource,
    S3Ref,
    event_json_of,
    load_finite_json,
)
from relay.models.genesys import OPEN_MESSAGE, GenesysEventBridgeEvent, utc_instant
from relay.models.idempotency import Claim
from relay.models.secrets import RotatingSecret
from relay.models.targets import IntegrationEntry
from relay.observability import logger
from relay.settings import Settings, get_settings

# Stable namespace for deterministic delivery ids: the same (integration, event, target) always gets the
# same deliveryId, so even a re-queue after a partial failure is deduplicated by the receivers.
DELIVERY_ID_NAMESPACE = uuid.UUID("5b0f6a3e-9d2c-4f61-8a7e-3c1d2b4a5e60")
_JSON_TYPES = ("application/json",)
# Integration ids are Genesys UUIDs; anything far from an id is refused before it reaches DynamoDB (whose
# keys are limited to 2 KiB: a longer one would fail the Query and turn client input into a 5xx).
# Genesys messages nest a few levels; a limit far above that keeps every later (recursive) serializer,
# here and in the dispatcher, away from Python's recursion limit.
MAX_NESTING = 64
_INTEGRATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# A JSON escape of a UTF-16 surrogate: only then is the costlier lone-surrogate check needed.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# --- collaborators --------------------------------------------------------------------------------------


class IntegrationLookup(Protocol):
    def get(self, integration_id: str) -> IntegrationEntry | None: ...


class TaskQueue(Protocol):
    def send(self, bodies: Sequence[str]) -> None:
        """Queue every body or raise DependencyUnavailable."""


class ClaimCheckStore(Protocol):
    def put(self, key: str, body: bytes) -> S3Ref:
        """Store ``body`` under ``key`` (idempotent) or raise DependencyUnavailable."""


class MetricsRecorder(Protocol):
    def count(self, name: str, value: int = 1, *, reason: str | None = None) -> None: ...


class IdempotencyStore(Protocol):
    def claim(self, key: str) -> Claim:
        """Claim ``key`` for this attempt, or say who already has it."""

    def complete(self, claim: Claim, response: str) -> None:
        """Record the answer for ``claim`` so repeats get it without queueing again."""

    def release(self, claim: Claim) -> None:
        """Forget a claim whose attempt failed, so a repeat can queue."""


class _NoMetrics:
    def count(self, name: str, value: int = 1, *, reason: str | None = None) -> None:
        return None


@dataclass(frozen=True)
class IncomingEvent:
    """One event to deliver, from either trigger."""

    event_id: str
    # What makes two deliveries of it the same event (Genesys: id + the instant of channel.time;
    # EventBridge: id).
    identity: str
    # The event's JSON text as the targets will receive it: for HTTP the body exactly as received.
    event_json: str
    source: EventSource

    @property
    def key(self) -> str:
        """The idempotency key (hashed: the identity is sender-chosen text of any length)."""
        return "intake#" + hashlib.sha256(self.identity.encode("utf-8")).hexdigest()


# --- HTTP request ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    integration_id: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes


def is_http_event(event: Mapping[str, Any]) -> bool:
    context = event.get("requestContext")
    return isinstance(context, dict) and isinstance(context.get("http"), dict)


def is_eventbridge_event(event: Mapping[str, Any]) -> bool:
    return "detail-type" in event and "source" in event and "detail" in event


def _read_http_request(event: Mapping[str, Any], max_body_bytes: int) -> HttpRequest:
    """Method, path parameter, lower-cased headers and the raw body of a payload-v2 event."""
    method = str(event["requestContext"]["http"].get("method", "")).upper()
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    path_parameters = event.get("pathParameters") or {}
    integration_id = str(path_parameters.get("integrationId") or "")
    raw = event.get("body")
    text = raw if isinstance(raw, str) else ""
    if event.get("isBase64Encoded"):
        # Refuse before decoding: 4 base64 characters carry 3 bytes.
        if len(text) // 4 * 3 > max_body_bytes + 3:
            raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("the body is marked base64-encoded but is not valid base64") from None
    else:
        body = text.encode("utf-8", errors="surrogatepass")
    return HttpRequest(method=method, integration_id=integration_id, headers=headers, body=body)


def _json_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": json.dumps(body, separators=(",", ":")),
    }


def _describe_validation_error(error: ValidationError) -> str:
    fields = []
    for item in error.errors():
        # The discriminator's tag is not a field the sender wrote.
        loc = [str(part) for part in item["loc"] if part not in ("Text", "Event", "Receipt", "Structured")]
        fields.append(f"{'.'.join(loc) or '(body)'}: {item['msg']}")
    return "; ".join(sorted(set(fields))[:10])


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` (iterative: deep input cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _lone_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- the intake -----------------------------------------------------------------------------------------


class Intake:
    def __init__(
        self,
        *,
        integrations: IntegrationLookup,
        get_secret: Callable[[str], RotatingSecret],
        queue: TaskQueue,
        refresh_secret: Callable[[str], RotatingSecret] | None = None,
        secret_refresh_interval_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        idempotency: IdempotencyStore | None = None,
        claim_checks: ClaimCheckStore | None = None,
        max_body_bytes: int = 262_144,
        eventbridge_integration_id: str | None = None,
        max_inline_body_bytes: int = MAX_INLINE_BODY_BYTES,
        metrics: MetricsRecorder | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        in_progress_wait_seconds: float = 1.0,
        in_progress_poll_seconds: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._integrations = integrations
        self._get_secret = get_secret
        self._refresh_secret = refresh_secret
        self._secret_refresh_interval = secret_refresh_interval_seconds
        self._monotonic = monotonic
        self._secret_refreshed_at: dict[str, float] = {}
        self._queue = queue
        self._idempotency = idempotency
        self._claim_checks = claim_checks
        self._max_body_bytes = max_body_bytes
        self._eventbridge_integration_id = eventbridge_integration_id
        self._max_inline_body_bytes = max_inline_body_bytes
        self._metrics = metrics or _NoMetrics()
        self._now = now
        self._in_progress_polls = max(0, int(in_progress_wait_seconds / in_progress_poll_seconds))
        self._in_progress_poll = in_progress_poll_seconds
        self._sleep = sleep

    # --- entry points -----------------------------------------------------------------------------------
    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Route a Lambda event to the HTTP or the EventBridge path."""
        if is_http_event(event):
            return self.handle_http(event)
        if is_eventbridge_event(event):
            return self.handle_eventbridge(event)
        raise ConfigurationError("the intake received an event that is neither HTTP API v2 nor EventBridge")

    def handle_http(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """An API Gateway HTTP API (payload v2) event in, an API Gateway response out. Never raises."""
        started = time.perf_counter()
        try:
            response = self._accept_http(event)
        except RejectedRequest as rejected:
            self._metrics.count("EventsRejected", reason=rejected.code)
            logger.info("request rejected", extra={"status": rejected.status, "error": rejected.code})
            return _json_response(rejected.status, {"error": rejected.code, "message": rejected.message})
        except RequestInProgress as busy:
            # 429 is retried by Genesys like a 5xx, and is not a server failure.
            logger.info("concurrent repeat still in progress")
            return _json_response(
                429,
                {"error": "duplicate_in_progress", "message": str(busy)},
                {"retry-after": str(busy.retry_after_seconds)},
            )
        except DependencyUnavailable as unavailable:
            logger.warning("dependency unavailable", extra={"reason": str(unavailable)})
            return _json_response(
                503,
                {"error": "service_unavailable", "message": "a dependency is unavailable; retry later"},
                {"retry-after": str(unavailable.retry_after_seconds)},
            )
        except Exception:  # a bug or a deployment error: never leak details to the caller
            logger.exception("intake failed")
            return _json_response(500, {"error": "internal_error", "message": "internal error"})
        logger.debug("accepted", extra={"elapsed_ms": round((time.perf_counter() - started) * 1000, 3)})
        return response

    def handle_eventbridge(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A Genesys EventBridge event: fan out, or raise (Lambda retries, then on-failure destination)."""
        try:
            parsed = GenesysEventBridgeEvent.model_validate(event)
        except ValidationError as invalid:
            detail = _describe_validation_error(invalid)
            raise BadRequest(f"invalid Genesys EventBridge event: {detail}") from None
        try:
            # The runtime parsed the event already: this is the one JSON text the targets will get.
            event_json = event_json_of(dict(event))
        except ValueError:
            raise BadRequest(
                "the EventBridge event contains NaN or Infinity, which JSON cannot carry"
            ) from None
        if _lone_surrogates(event_json):
            raise BadRequest("the EventBridge event contains an unpaired UTF-16 surrogate")
        integration_id = self._eventbridge_integration_id
        if not integration_id:
            raise ConfigurationError("EVENTBRIDGE_INTEGRATION_ID is not set; cannot route EventBridge events")
        entry = self._integrations.get(integration_id)
        if entry is None or not entry.integration.enabled:
            raise ConfigurationError(f"EventBridge integration {integration_id} is unknown or disabled")
        incoming = IncomingEvent(
            event_id=parsed.id,
            identity=f"eventbridge\n{integration_id}\n{parsed.id}",
            event_json=event_json,
            source="eventbridge",
        )
        return self._fan_out(entry, incoming)

    # --- HTTP path ----------------------------------------------------------------------------------------
    def _accept_http(self, event: Mapping[str, Any]) -> dict[str, Any]:
        request = _read_http_request(event, self._max_body_bytes)
        if request.method != "POST":
            raise MethodNotAllowed(f"method {request.method or '(none)'} is not allowed; use POST")
        if len(request.body) > self._max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {self._max_body_bytes} bytes")
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in _JSON_TYPES:
            raise UnsupportedMediaType("the content type must be application/json")
        if not _INTEGRATION_ID.fullmatch(request.integration_id):
            raise UnknownIntegration("the path does not name an integration")
        entry = self._integrations.get(request.integration_id)
        secret_name = entry.integration.signature_secret_name if entry else None
        # An integration without a signature secret (the EventBridge path's own) takes no webhooks.
        if entry is None or not entry.integration.enabled or secret_name is None:
            raise UnknownIntegration(f"integration {request.integration_id} is not known here")
        self._verify(secret_name, request)
        text, message = self._parse_open_message(request.body)
        integration_id = entry.integration.integration_id
        if message["channel"]["id"] != integration_id:
            # Genesys sets channel.id to the integration's id: a message naming another one was meant
            # for another URL (or signed with a shared secret), and its targets are not these.
            raise BadRequest(
                f"channel.id does not name the integration of this URL ({integration_id})",
                code="integration_mismatch",
            )
        incoming = IncomingEvent(
            event_id=message["id"],
            # Genesys retries re-send the same id and channel.time: together they name the event. The
            # time counts as the instant it names, not as spelled (the schema made it RFC 3339).
            identity=f"open-messaging\n{integration_id}\n{message['id']}\n"
            f"{utc_instant(message['channel']['time'])}",
            event_json=text,
            source="open-messaging",
        )
        return _json_response(202, self._fan_out(entry, incoming))

    def _verify(self, secret_name: str, request: HttpRequest) -> None:
        """Check the signature; on a mismatch, re-read a possibly stale cached secret once and retry.

        Genesys may sign with a rotated secret before this container's cache (SECRET_CACHE_TTL_SECONDS)
        has seen it, and Genesys does not retry a 401: without the re-read the event would be lost. The
        re-read happens at most once per secret every ``secret_refresh_interval_seconds``, so forged
        requests cannot turn into a Secrets Manager call each.
        """
        header = request.headers.get(SIGNATURE_HEADER)
        cached = self._get_secret(secret_name)
        try:
            verify_signature(request.body, header, cached.values())
        except InvalidSignature as refused:
            fresh = self._fresh_secret(secret_name) if refused.code == CODE_MISMATCH else None
            if fresh is None or fresh.values() == cached.values():
                raise
            verify_signature(request.body, header, fresh.values())

    def _fresh_secret(self, secret_name: str) -> RotatingSecret | None:
        if self._refresh_secret is None:
            return None
        now = self._monotonic()
        last = self._secret_refreshed_at.get(secret_name)
        if last is not None and now - last < self._secret_refresh_interval:
            return None
        self._secret_refreshed_at[secret_name] = now
        try:
            return self._refresh_secret(secret_name)
        except (DependencyUnavailable, ConfigurationError):
            return None  # keep the refusal: an unverifiable request is not a reason for a 5xx

    def _parse_open_message(self, body: bytes) -> tuple[str, dict[str, Any]]:
        """The body as text (what the targets get, unchanged) and as the message it must be."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the body is not UTF-8 text") from None
        try:
            message = load_finite_json(text)
        except NonFiniteNumber as refused:
            # 1e400 would reach the targets as Infinity or null: refused, like NaN and Infinity.
            raise BadRequest(f"the body is not valid JSON for the relay: {refused}") from None
        except (ValueError, RecursionError):
            raise BadRequest("the body is not valid JSON") from None
        if _nested_deeper_than(message, MAX_NESTING):
            raise BadRequest(f"the body is nested deeper than {MAX_NESTING} levels")
        if _SURROGATE_ESCAPE.search(text) and _lone_surrogates(json.dumps(message, ensure_ascii=False)):
            raise BadRequest("the body contains an unpaired UTF-16 surrogate escape")
        if not isinstance(message, dict):
            raise BadRequest("the body must be a JSON object (an Open Messaging message)")
        try:
            OPEN_MESSAGE.validate_python(message)
        except ValidationError as invalid:
            detail = _describe_validation_error(invalid)
            raise BadRequest(
                f"the message does not match the Open Messaging schema: {detail}",
                code="invalid_message",
            ) from None
        return text, message

    # --- shared path --------------------------------------------------------------------------------------
    def _fan_out(self, entry: IntegrationEntry, incoming: IncomingEvent) -> dict[str, Any]:
        """Queue one task per enabled target, once per event identity; repeats get the first answer."""
        event_id = incoming.event_id
        claim = self._claim(incoming.key)
        if claim is not None and claim.state == "completed" and claim.response is not None:
            self._metrics.count("EventsDuplicate")
            logger.info("duplicate event answered from the idempotency record", extra={"event_id": event_id})
            answer: dict[str, Any] = json.loads(claim.response)
            return answer
        if claim is not None and claim.state != "acquired":
            raise RequestInProgress("the same event is being accepted right now; retry shortly")
        try:
            answer = self._queue_tasks(entry, incoming)
        except BaseException:
            if claim is not None and self._idempotency is not None:
                self._release_quietly(claim)
            raise
        if claim is not None and self._idempotency is not None:
            try:
                self._idempotency.complete(claim, json.dumps(answer, separators=(",", ":")))
            except DependencyUnavailable:
                # Every task is queued, so the answer is still 202. The claim stays in progress until its
                # lease ends; a later repeat would queue again with the same deliveryIds, which the
                # dispatcher's receivers deduplicate on.
                logger.warning("could not record the idempotency answer", extra={"event_id": event_id})
        self._metrics.count("EventsAccepted")
        return answer

    def _claim(self, key: str) -> Claim | None:
        """Claim ``key``; while a concurrent repeat holds it, wait briefly for its answer."""
        if self._idempotency is None:
            return None
        claim = self._idempotency.claim(key)
        for _ in range(self._in_progress_polls):
            if claim.state != "in_progress":
                break
            self._sleep(self._in_progress_poll)
            claim = self._idempotency.claim(key)
        return claim

    def _release_quietly(self, claim: Claim) -> None:
        assert self._idempotency is not None
        try:
            self._idempotency.release(claim)
        except DependencyUnavailable:
            # The claim's lease runs out on its own (shorter than Genesys' retry period).
            logger.warning("could not release the idempotency claim")

    def _queue_tasks(self, entry: IntegrationEntry, incoming: IncomingEvent) -> dict[str, Any]:
        integration_id = entry.integration.integration_id
        targets = [target for target in entry.targets if target.enabled]
        received_at = self._now()
        # The text as a JSON string: ASCII, and json.loads gives back the identical text.
        event_field = json.dumps(incoming.event_json, ensure_ascii=True)
        event_ref: S3Ref | None = None
        if targets and len(event_field) + 1_024 > self._max_inline_body_bytes:
            event_ref = self._claim_check(incoming.key, integration_id, incoming.event_json.encode())
        bodies: list[str] = []
        delivery_ids: list[str] = []
        for target in targets:
            delivery_id = uuid.uuid5(DELIVERY_ID_NAMESPACE, f"{incoming.key}\n{target.target_id}")
            task = DeliveryTask(
                delivery_id=delivery_id,
                integration_id=integration_id,
                target_id=target.target_id,
                event_id=incoming.event_id,
                event_source=incoming.source,
                received_at=received_at,
                # Dumped once for all targets and spliced in (_task_body).
                event_json=None if event_ref else incoming.event_json,
                event_ref=event_ref,
            )
            bodies.append(_task_body(task, None if event_ref else event_field))
            delivery_ids.append(str(delivery_id))
        if bodies:
            self._queue.send(bodies)
            self._metrics.count("TasksQueued", len(bodies))
        logger.info(
            "event accepted",
            extra={"integration_id": integration_id, "event_id": incoming.event_id, "tasks": len(bodies)},
        )
        return {
            "status": "accepted",
            "eventId": incoming.event_id,
            "integrationId": integration_id,
            "deliveryIds": delivery_ids,
            "claimCheck": event_ref is not None,
        }

    def _claim_check(self, key: str, integration_id: str, body: bytes) -> S3Ref:
        if self._claim_checks is None:
            raise PayloadTooLarge("the body is too large to queue and no claim-check store is configured")
        return self._claim_checks.put(f"events/{integration_id}/{key.removeprefix('intake#')}.json", body)


def _task_body(task: DeliveryTask, event_field: str | None) -> str:
    """The task as JSON, with ``eventJson`` spliced in already encoded (encoded once for all targets).

    ASCII-only (``ensure_ascii``): SQS refuses some valid Unicode characters (e.g. U+FFFE), escapes never.
    """
    head = task.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"event_json"})
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=True)
    if event_field is None:
        return text
    return text[:-1] + ',"eventJson":' + event_field + "}"


# --- per-container wiring ---------------------------------------------------------------------------------


class PowertoolsMetrics:
    """The architecture's intake metrics through the shared powertools Metrics (EMF)."""

    def count(self, name: str, value: int = 1, *, reason: str | None = None) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        from relay.observability import metrics

        if reason is not None:
            # A rejection is the only metric of its invocation, and log_metrics clears dimensions on
            # flush, so the reason dimension never spreads to another metric.
            metrics.add_dimension(name="reason", value=reason)
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def build_intake(settings: Settings) -> Intake:
    """The intake wired to AWS as ``settings`` describe it."""
    from relay.adapters.delivery_queue import S3ClaimCheckStore, SqsDeliveryQueue
    from relay.adapters.idempotency import DynamoDBIdempotencyStore
    from relay.adapters.secrets import get_secret
    from relay.adapters.target_store import TargetStore

    return Intake(
        integrations=TargetStore(
            settings.need("targets_table"), cache_ttl_seconds=settings.target_cache_ttl_seconds
        ),
        get_secret=get_secret,
        refresh_secret=lambda name: get_secret(name, force_fetch=True),
        queue=SqsDeliveryQueue(settings.need("delivery_queue_url")),
        idempotency=DynamoDBIdempotencyStore(
            settings.need("idempotency_table"), ttl_seconds=settings.idempotency_ttl_seconds
        ),
        claim_checks=S3ClaimCheckStore(settings.audit_bucket) if settings.audit_bucket else None,
        max_body_bytes=settings.max_body_bytes,
        eventbridge_integration_id=settings.eventbridge_integration_id,
        metrics=PowertoolsMetrics(),
    )


_container: tuple[Settings, Intake] | None = None


def container_intake() -> Intake:
    """The intake held once per container; rebuilt when the settings were re-read (tests, local stack)."""
    global _container
    settings = get_settings()
    if _container is None or _container[0] is not settings:
        _container = (settings, build_intake(settings))
    return _container[1]


def handle_lambda_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The intake Lambda's one entry point (API Gateway HTTP API v2 or EventBridge)."""
    return container_intake().handle(event)

"""The intake: let in every genuine Genesys Cloud event exactly once, fast, and nothing else.

Two triggers reach the same ``Intake``:

* **API Gateway HTTP API (payload v2)**, ``POST /webhooks/{integrationId}`` from Genesys Open Messaging:
  method, size, content type, integration, signature, JSON, schema, channel.id are checked in that
  order (cheap and input-only checks first, one DynamoDB read at most before the signature is known
  good); the event is claimed in the idempotency store, one ``DeliveryTask`` per target whose event
  filters let it through (disabled targets included) is queued, carrying the body's JSON text exactly
  as received, and the answer is 202. Refusals are 4xx JSON ``{"error", "message"}``; an AWS
  dependency that fails is 503 with ``Retry-After`` so Genesys retries; client input never causes a 5xx.
* **EventBridge** (Genesys' partner event source), routed by a rule: no signature (the trust is the
  AWS partner source), fanned out to the targets of ``EVENTBRIDGE_INTEGRATION_ID``. Failures raise,
  so Lambda's asynchronous retries and the function's on-failure destination keep the event.

Errors become answers in exactly one place: ``Intake.handle_http``, the HTTP trigger's boundary.

Bodies too large for one SQS message (with headroom for the dispatcher's attributes) are stored once
in the audit bucket under ``events/`` and queued by reference (claim check), up to ``MAX_BODY_BYTES``;
larger bodies get 413. See docs/intake.md.

Every collaborator (integration lookup, secret lookup, queue, idempotency store, claim-check store,
clock, metrics) is a constructor parameter (relay.ports; relay.wiring builds the real ones), so tests
and the benchmark run this with in-memory fakes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from relay.errors import (
    BadRequest,
    ConfigurationError,
    DependencyUnavailable,
    InvalidSignature,
    MethodNotAllowed,
    PayloadTooLarge,
    RejectedRequest,
    RequestInProgress,
    RetryShortly,
    SecretNotFound,
    SignatureRecheckPending,
    UnknownIntegration,
    UnsupportedMediaType,
)
from relay.logic.intake.fan_out import FanOut, IncomingEvent
from relay.logic.intake.filters import EventFacts
from relay.logic.intake.http_api import (
    HttpRequest,
    is_eventbridge_event,
    is_http_event,
    json_response,
    read_http_request,
)
from relay.logic.intake.messages import parse_eventbridge_event, parse_open_message
from relay.logic.intake.metrics import NoMetrics
from relay.logic.intake.ordering import eventbridge_key, open_messaging_key
from relay.logic.signature import CODE_MISMATCH, SIGNATURE_HEADER, verify_signature
from relay.models.genesys import ID_MAX_LENGTH, INTEGRATION_ID, utc_instant
from relay.models.queue import MAX_INLINE_BODY_BYTES
from relay.models.secrets import RotatingSecret
from relay.observability import logger
from relay.ports import (
    ClaimCheckStore,
    FirstHopQueue,
    IdempotencyStore,
    IntegrationLookup,
    MetricsRecorder,
    OrderedTaskQueue,
    TaskQueue,
)

_JSON_TYPES = ("application/json",)


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
        ordered_queue: OrderedTaskQueue | None = None,
        first_hop: FirstHopQueue | None = None,
    ) -> None:
        """``ordered_queue``: the FIFO queue for ordered targets' tasks (without it they go unordered).
        ``first_hop``: the FIFO first hop for every other task, deduplicated by SQS (then no
        ``idempotency`` store is needed; without it they go to ``queue``)."""
        self._integrations = integrations
        self._get_secret = get_secret
        self._refresh_secret = refresh_secret
        self._secret_refresh_interval = secret_refresh_interval_seconds
        self._monotonic = monotonic
        self._secret_refreshed_at: dict[str, float] = {}
        self._max_body_bytes = max_body_bytes
        self._eventbridge_integration_id = eventbridge_integration_id
        self._metrics = metrics or NoMetrics()
        self._fan_out = FanOut(
            queue=queue,
            idempotency=idempotency,
            claim_checks=claim_checks,
            metrics=self._metrics,
            max_inline_body_bytes=max_inline_body_bytes,
            now=now,
            ordered_queue=ordered_queue,
            first_hop=first_hop,
        )

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
            return json_response(rejected.status, {"error": rejected.code, "message": rejected.message})
        except RetryShortly as later:
            # 429 is retried by Genesys like a 5xx, and is not a server failure.
            logger.info("retry shortly", extra={"error": later.code})
            return json_response(
                429,
                {"error": later.code, "message": str(later)},
                {"retry-after": str(later.retry_after_seconds)},
            )
        except DependencyUnavailable as unavailable:
            logger.warning("dependency unavailable", extra={"reason": str(unavailable)})
            return json_response(
                503,
                {"error": "service_unavailable", "message": "a dependency is unavailable; retry later"},
                {"retry-after": str(unavailable.retry_after_seconds)},
            )
        except Exception:  # the HTTP trigger's boundary: a bug or a deployment error, never leaked
            logger.exception("intake failed")
            # A 500 is not a Lambda error: this count is what a canary's rollback watches.
            self._metrics.count("InternalErrors")
            return json_response(500, {"error": "internal_error", "message": "internal error"})
        logger.debug("accepted", extra={"elapsed_ms": round((time.perf_counter() - started) * 1000, 3)})
        return response

    def handle_eventbridge(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A Genesys EventBridge event: fan out, or raise (Lambda retries, then on-failure destination)."""
        parsed, event_json = parse_eventbridge_event(event)
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
            facts=EventFacts.of_eventbridge(parsed.detail_type),
            ordering_key=eventbridge_key(event),
            conversation_id=_text_or_none(parsed.detail.event_body.get("conversationId")),
        )
        try:
            return self._fan_out(entry, incoming)
        except RequestInProgress:
            # A redelivery while another invocation holds the claim: that invocation is Lambda's to
            # retry if it fails or dies (then its on-failure destination keeps the event), so this
            # one succeeds without queueing rather than count as a function error.
            return {"status": "duplicate", "eventId": parsed.id, "integrationId": integration_id}

    # --- HTTP path ----------------------------------------------------------------------------------------
    def _accept_http(self, event: Mapping[str, Any]) -> dict[str, Any]:
        request = read_http_request(event, self._max_body_bytes)
        if request.method != "POST":
            raise MethodNotAllowed(f"method {request.method or '(none)'} is not allowed; use POST")
        if len(request.body) > self._max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {self._max_body_bytes} bytes")
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in _JSON_TYPES:
            raise UnsupportedMediaType("the content type must be application/json")
        # Genesys sends bodies as they are; one a proxy compressed would fail as "not UTF-8" without
        # saying why (RFC 7694 3: 415 for a content coding the server does not take).
        coding = request.headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity"):
            raise UnsupportedMediaType(
                f"Content-Encoding {coding[:40]} is not accepted: send the body uncompressed"
            )
        if not INTEGRATION_ID.fullmatch(request.integration_id):
            raise UnknownIntegration("the path does not name an integration")
        entry = self._integrations.get(request.integration_id)
        secret_name = entry.integration.signature_secret_name if entry else None
        # An integration without a signature secret (the EventBridge path's own) takes no webhooks.
        if entry is None or not entry.integration.enabled or secret_name is None:
            raise UnknownIntegration(f"integration {request.integration_id} is not known here")
        self._verify(secret_name, request)
        text, message = parse_open_message(request.body)
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
            facts=EventFacts.of_open_message(message),
            ordering_key=open_messaging_key(message),
            conversation_id=_text_or_none(message.get("conversationId")),
        )
        return json_response(202, self._fan_out(entry, incoming))

    def _verify(self, secret_name: str, request: HttpRequest) -> None:
        """Check the signature; on a mismatch, re-read a possibly stale cached secret once and retry.

        Genesys may sign with a rotated secret before this container's cache (SECRET_CACHE_TTL_SECONDS)
        has seen it, and Genesys does not retry a 401: without the re-read the event would be lost. The
        re-read happens at most once per secret every ``secret_refresh_interval_seconds``, so forged
        requests cannot turn into a Secrets Manager call each; a mismatch within that interval is not
        refused for good but asked to retry once the secret can be read again
        (``SignatureRecheckPending``), so a forged request that used the re-read just before a rotation
        cannot turn a genuine event into a 401 either.
        """
        header = request.headers.get(SIGNATURE_HEADER)
        cached = self._get_secret(secret_name)
        try:
            verify_signature(request.body, header, cached.values())
        except InvalidSignature as refused:
            refresh = self._refresh_secret
            if refused.code != CODE_MISMATCH or refresh is None:
                raise
            wait = self._until_secret_readable(secret_name)
            if wait > 0:
                raise SignatureRecheckPending(
                    "the signature does not match the cached secret, which was read again moments ago; "
                    f"retry in {wait} s, when it can be read again (a secret being rotated)",
                    retry_after_seconds=wait,
                ) from None
            fresh = self._reread_secret(refresh, secret_name)
            if fresh is None or fresh.values() == cached.values():
                raise
            verify_signature(request.body, header, fresh.values())

    def _until_secret_readable(self, secret_name: str) -> int:
        """Whole seconds until the secret may be re-read (0: now)."""
        last = self._secret_refreshed_at.get(secret_name)
        if last is None:
            return 0
        left = self._secret_refresh_interval - (self._monotonic() - last)
        return math.ceil(left) if left > 0 else 0

    def _reread_secret(
        self, refresh: Callable[[str], RotatingSecret], secret_name: str
    ) -> RotatingSecret | None:
        self._secret_refreshed_at[secret_name] = self._monotonic()
        try:
            return refresh(secret_name)
        except SecretNotFound:
            return None  # the secret is gone: nothing could ever check the request, the refusal stands
        # The request may be a genuine event signed with a rotated secret, and Genesys retries a 5xx but
        # never a 401: a value pasted out of shape (UnusableSecret) goes on to a 500, Secrets Manager
        # unreachable (DependencyUnavailable) to a 503, each checked again once it is put right.


def _text_or_none(value: object) -> str | None:
    """A conversation id as the audit keeps it: a non-empty string within the ids' bound, else none
    (an EventBridge body is not schema-checked; an Open Messaging message's is refused beyond it)."""
    return value if isinstance(value, str) and 0 < len(value) <= ID_MAX_LENGTH else None

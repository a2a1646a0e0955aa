"""One rooted hierarchy, grouped by what the caller must do.

    RelayError
    ├── ConfigurationError            the deployment is wrong: fix settings, not input
    ├── RejectedRequest               the client sent something we refuse (maps to a 4xx, never retried)
    │   ├── BadRequest (400)   ├── InvalidSignature (401)   ├── UnknownIntegration (404)
    │   ├── MethodNotAllowed (405)    ├── PayloadTooLarge (413)  └── UnsupportedMediaType (415)
    ├── DependencyUnavailable         an AWS dependency failed: answer 503 + Retry-After, the sender retries
    ├── RequestInProgress             the same event is being accepted right now: 429 + Retry-After
    ├── UnsafeUrl                     a target URL breaks the URL policy (scheme, private address, ...)
    ├── DeliveryError                 one delivery attempt failed
    │   ├── RetryableDelivery         timeouts, connection errors, 408/425/429/5xx, breaker open
    │   └── PermanentDelivery         other 4xx, 3xx: straight to the dead-letter queue
    │       └── TargetGone            410: disable the target, dead-letter
    └── GenesysError                  talking to Genesys Cloud failed (config sync only; never raised itself)
        ├── GenesysRunError           the sync run ends: Lambda error (alarm), `relay targets sync` exit 3;
        │   │                         raised itself for an answer nothing below covers (another 4xx)
        │   ├── GenesysAuthError      login refused (400/401/403), or a fresh token refused (401)
        │   ├── GenesysLoginError     the token endpoint's answer is unusable (not JSON, no expires_in, ...)
        │   ├── GenesysForbidden      403, names the scope the OAuth client lacks
        │   ├── GenesysRateLimited    429 past our bound
        │   ├── GenesysDeadlineExceeded  the run's deadline would pass (a wait, a request)
        │   └── GenesysUnavailable    connection failures, TLS, 5xx
        │       └── GenesysTimeout    connect/read timeout
        └── GenesysItemError          one item cannot be read: it is rejected, the run goes on
            ├── GenesysNotFound       404
            └── GenesysMalformedResponse  2xx with a body we cannot read

Each trigger (API handler, SQS handler, CLI) maps these to outcomes in exactly one place.
Messages never contain secret values.
"""

from __future__ import annotations


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""


class ConfigurationError(RelayError):
    """A required setting is missing or invalid."""


class RejectedRequest(RelayError):
    """Client input we refuse; carries the HTTP status and a stable error code."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(RejectedRequest):
    status = 400
    code = "bad_request"


class InvalidSignature(RejectedRequest):
    status = 401
    code = "invalid_signature"


class UnknownIntegration(RejectedRequest):
    status = 404
    code = "unknown_integration"


class MethodNotAllowed(RejectedRequest):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(RejectedRequest):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RejectedRequest):
    status = 415
    code = "unsupported_media_type"


class DependencyUnavailable(RelayError):
    """An AWS dependency (SQS, DynamoDB, S3, Secrets Manager) failed; the caller should retry later."""

    def __init__(self, message: str, *, retry_after_seconds: int = 5) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RequestInProgress(RelayError):
    """A concurrent attempt is accepting the same event right now; the sender should retry shortly."""

    def __init__(self, message: str, *, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class UnsafeUrl(RelayError):
    """A target URL that the URL policy refuses."""


class DeliveryError(RelayError):
    """One delivery attempt to a target failed."""

    def __init__(self, message: str, *, status: int | None = None, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class RetryableDelivery(DeliveryError):
    """Worth trying again later (timeouts, connection errors, 408/425/429/5xx)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, status=status, error_code=error_code)
        self.retry_after_seconds = retry_after_seconds


class PermanentDelivery(DeliveryError):
    """Will never succeed as sent (other 4xx, 3xx): dead-letter at once with the reason."""


class TargetGone(PermanentDelivery):
    """The target answered 410 Gone: disable it and dead-letter."""


class GenesysError(RelayError):
    """Talking to Genesys Cloud failed; always raised as a GenesysRunError or a GenesysItemError."""


class GenesysRunError(GenesysError):
    """The whole sync run cannot go on: it ends (a Lambda error), the next scheduled run starts over."""


class GenesysAuthError(GenesysRunError):
    """Login refused, or a fresh token refused (401): check the OAuth client id and secret."""


class GenesysLoginError(GenesysRunError):
    """The token endpoint answered, but not with a usable token (not JSON, no valid expires_in, ...)."""


class GenesysForbidden(GenesysRunError):
    """403: the OAuth client lacks a permission; ``scope`` names it."""

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class GenesysRateLimited(GenesysRunError):
    """429 past our bound on Retry-After waits: this run ends, the next scheduled run tries again."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class GenesysDeadlineExceeded(GenesysRunError):
    """The run's deadline (GENESYS_SYNC_DEADLINE_SECONDS) would pass in a Retry-After wait or a request."""


class GenesysUnavailable(GenesysRunError):
    """Connection refused or reset, TLS failure, or a 5xx from Genesys Cloud."""


class GenesysTimeout(GenesysUnavailable):
    """Connect or read timeout (GENESYS_TIMEOUT_SECONDS)."""


class GenesysItemError(GenesysError):
    """One item (integration, credential) cannot be read: it is rejected, its last good record stays."""


class GenesysNotFound(GenesysItemError):
    """404: the integration (or credential) named in settings does not exist."""


class GenesysMalformedResponse(GenesysItemError):
    """Genesys answered an item's read 2xx with a body that is not the JSON we expect."""

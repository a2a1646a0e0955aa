"""Genesys Cloud through the official SDK (``PureCloudPlatformClientV2``), made safe for a Lambda.

Only config sync uses this module, and the SDK is imported lazily inside it (about 3 s and 220 MB):
the intake and dispatcher never load it. What the SDK does not do, this wrapper does:

- **Token expiry.** The SDK discards ``expires_in`` and never refreshes client-credentials tokens.
  We read ``expires_in`` from the token response, log in again shortly before it runs out, and once
  more on a 401 (a token revoked early).
- **Timeouts and Retry-After.** The SDK has no request timeout and its urllib3 ``Retry`` sleeps on
  ``Retry-After`` silently (up to 6 h) on every method. Before the first request we give its pool
  connect/read timeouts, ``Retry(total=0, respect_retry_after_header=False)`` and our connection
  classes (relay.adapters.connections), and run every SDK call under a total deadline, so a peer
  trickling bytes cannot hold a call past GENESYS_TIMEOUT_SECONDS; we honour 429 ourselves, up to a
  bound, then end the run with ``GenesysRateLimited``.
- **One deadline per run.** No Retry-After wait and no request goes past the run's deadline
  (GENESYS_SYNC_DEADLINE_SECONDS from the client's creation): the run ends with
  ``GenesysDeadlineExceeded`` before Lambda's timeout would kill it.
- **Errors.** ``ApiException`` and urllib3's exceptions become our ``GenesysError`` subclasses: a
  ``GenesysRunError`` ends the run (login, 401/403, 429 past the bound, 5xx, timeouts, the deadline), a
  ``GenesysItemError`` concerns the one item read (404, an unreadable body). A 403 names the permission
  the OAuth client lacks. No message carries a token or a secret.

Responses go through the SDK's own models and come back as plain JSON-shaped dicts (camelCase keys),
so the logic layer never touches SDK types.
"""

from __future__ import annotations

import http.client
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from pydantic import SecretStr

from relay.adapters.connections import call_within_deadline, pool_classes
from relay.adapters.oauth import refresh_margin  # one renewal rule for every OAuth token the relay holds
from relay.errors import (
    ConfigurationError,
    GenesysAuthError,
    GenesysDeadlineExceeded,
    GenesysError,
    GenesysForbidden,
    GenesysLoginError,
    GenesysMalformedResponse,
    GenesysNotFound,
    GenesysRateLimited,
    GenesysRunError,
    GenesysTimeout,
    GenesysUnavailable,
)
from relay.json_input import load_json
from relay.models.secrets import RotatingSecret
from relay.observability import logger
from relay.settings import Settings

# Genesys answers 429 with Retry-After; if it ever does not, wait this long.
_DEFAULT_RETRY_AFTER_SECONDS = 1.0

# What the network and urllib3 raise under the SDK (the total deadline's DeadlineExceeded included).
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)

# The permission each call needs, for the 403 message.
SCOPE_OPEN_MESSAGING = "messaging:integration:view"
SCOPE_INTEGRATIONS = "integrations:integration:view"
SCOPE_CREDENTIALS = "integrations:credential:view"


def load_sdk() -> Any:
    """Import the SDK (about 3 s). Config sync calls this during Lambda init, where CPU is free."""
    import PureCloudPlatformClientV2

    return PureCloudPlatformClientV2


@dataclass(frozen=True)
class GenesysCredentials:
    client_id: str
    client_secret: SecretStr


def api_host_for(settings: Settings) -> str:
    """GENESYS_API_HOST if set, else the SDK's host for GENESYS_REGION.

    GENESYS_REGION may be an AWS-style region (``eu-west-1``, ``us_east_1``) or a Genesys Cloud domain
    (``mypurecloud.ie``).
    """
    if settings.genesys_api_host:
        return settings.genesys_api_host.rstrip("/")
    region = settings.genesys_region.strip()
    from PureCloudPlatformClientV2 import PureCloudRegionHosts

    by_name = {member.name: member for member in PureCloudRegionHosts}
    member = by_name.get(region.replace("-", "_").lower())
    if member is not None:
        host: str = member.get_api_host()
        return host
    for member in PureCloudRegionHosts:
        if member.get_api_host() == f"https://api.{region}":
            host = member.get_api_host()
            return host
    raise ConfigurationError(
        f"GENESYS_REGION {region!r} is neither a known region nor a Genesys Cloud domain"
    )


def credentials_from_settings(
    settings: Settings, read_secret: Callable[[str], RotatingSecret] | None = None
) -> GenesysCredentials:
    """GENESYS_CLIENT_ID/SECRET (local mode) or the Secrets Manager secret GENESYS_CREDENTIALS_SECRET,
    read with ``read_secret`` (relay.wiring passes the container's secret reader).

    The secret has the relay's shape: ``{"current": <client secret>, "keyId": <client id>}``.
    """
    if settings.genesys_client_id and settings.genesys_client_secret:
        return GenesysCredentials(settings.genesys_client_id, settings.genesys_client_secret)
    if settings.genesys_credentials_secret:
        if read_secret is None:
            raise ConfigurationError("GENESYS_CREDENTIALS_SECRET is set but no secret reader was given")
        try:
            secret = read_secret(settings.genesys_credentials_secret)
        except ConfigurationError as exc:
            raise ConfigurationError(f"GENESYS_CREDENTIALS_SECRET: {exc}") from None
        if not secret.key_id:
            raise ConfigurationError(
                f"secret {settings.genesys_credentials_secret} lacks keyId (the Genesys OAuth client id)"
            )
        return GenesysCredentials(secret.key_id, secret.current)
    raise ConfigurationError(
        "Genesys credentials missing: set GENESYS_CREDENTIALS_SECRET, or GENESYS_CLIENT_ID and "
        "GENESYS_CLIENT_SECRET (local mode)"
    )


def _retry_after_seconds(headers: Any) -> float:
    value = None
    if headers is not None:
        value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else _DEFAULT_RETRY_AFTER_SECONDS
    except ValueError:  # an HTTP-date: Genesys does not send these; wait the default
        return _DEFAULT_RETRY_AFTER_SECONDS


class GenesysClient:
    """A logged-in Genesys Cloud API client with timeouts, token refresh and bounded 429 handling."""

    def __init__(
        self,
        api_host: str,
        credentials: GenesysCredentials,
        *,
        timeout_seconds: float = 10.0,
        max_rate_limit_retries: int = 3,
        max_retry_after_seconds: float = 10.0,
        deadline_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``deadline_seconds``: the run's budget from now (None: unbounded); see ``_start_request``."""
        self.api_host = api_host.rstrip("/")
        self._credentials = credentials
        self._timeout_seconds = timeout_seconds
        self._max_rate_limit_retries = max_rate_limit_retries
        self._max_retry_after_seconds = max_retry_after_seconds
        self._clock = clock
        self._sleep = sleep
        self._deadline_seconds = deadline_seconds
        self._deadline = None if deadline_seconds is None else clock() + deadline_seconds
        self._request_timeout = timeout_seconds  # the current request's, cut short near the deadline
        self._expires_at: float | None = None
        self._last_response: Any = None
        self.logins = 0  # how many times this client logged in (reported by the sync)
        self.rate_limit_waits: list[float] = []  # Retry-After waits honoured, in seconds
        self._api_client = self._make_api_client()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credentials: GenesysCredentials | None = None,
        read_secret: Callable[[str], RotatingSecret] | None = None,
        **kwargs: Any,
    ) -> GenesysClient:
        return cls(
            api_host_for(settings),
            credentials or credentials_from_settings(settings, read_secret),
            timeout_seconds=settings.genesys_timeout_seconds,
            max_rate_limit_retries=settings.genesys_max_rate_limit_retries,
            max_retry_after_seconds=settings.genesys_max_retry_after_seconds,
            deadline_seconds=settings.genesys_sync_deadline_seconds,
            **kwargs,
        )

    # --- SDK set-up --------------------------------------------------------------------------------
    def _make_api_client(self) -> Any:
        import urllib3
        from PureCloudPlatformClientV2 import ApiClient, Configuration
        from PureCloudPlatformClientV2.logger import LogLevel

        # The SDK's logger would write request headers (the bearer token) if a config file enabled it.
        Configuration().logger.log_level = LogLevel.LNone
        api_client = ApiClient(host=self.api_host)
        http_client = api_client.get_http_client()
        # Must happen before the first request: urllib3 makes its connection pools lazily from these.
        pool_manager = http_client.rest_client.pool_manager
        pool_kw = pool_manager.connection_pool_kw
        pool_kw["timeout"] = urllib3.Timeout(connect=self._timeout_seconds, read=self._timeout_seconds)
        pool_kw["retries"] = urllib3.Retry(total=0, respect_retry_after_header=False, raise_on_status=False)
        # Connections that honour the total deadline each SDK call runs under (_within_deadline).
        pool_manager.pool_classes_by_scheme = pool_classes(None)

        def remember(response: Any) -> Any:
            self._last_response = response
            return response

        http_client.set_post_request_hook(remember)
        return api_client

    def _within_deadline(self, call: Callable[[], Any]) -> Any:
        """One SDK request, all of it (connect, TLS, answer) within GENESYS_TIMEOUT_SECONDS, cut to the
        time the run has left (``_start_request``). Past it, urllib3's own timeout error is raised, which
        _translate turns into GenesysTimeout (or GenesysDeadlineExceeded near the run's deadline)."""
        return call_within_deadline(self._request_timeout, call)

    # --- login -------------------------------------------------------------------------------------
    def login(self) -> None:
        """Client-credentials login; remembers when the token expires (the SDK does not)."""
        from PureCloudPlatformClientV2.rest import ApiException

        rate_limited = 0
        while True:
            started = self._clock()
            self._start_request("login")
            self._last_response = None
            try:
                self._within_deadline(
                    lambda: self._api_client.get_client_credentials_token(
                        self._credentials.client_id, self._credentials.client_secret.get_secret_value()
                    )
                )
                break
            except ApiException as exc:
                if exc.status != 429:
                    raise self._translate(exc, what="login", scope=None) from None
                self._wait_out_rate_limit(exc, what="login", already=rate_limited)
                rate_limited += 1
            except (ValueError, KeyError, TypeError, RecursionError):
                # An unusable token answer ends the run, never just the item being read. (The SDK parses
                # with json.loads: a body nested too deep raises RecursionError.)
                raise GenesysLoginError("Genesys token endpoint answered with an unreadable body") from None
            except _TRANSPORT_ERRORS as exc:  # mapped to our hierarchy right here
                raise self._translate(exc, what="login", scope=None) from None
        expires_in = self._token_lifetime()
        self._expires_at = started + expires_in - refresh_margin(expires_in)
        self.logins += 1
        logger.info("genesys login", extra={"api_host": self.api_host, "expires_in": expires_in})

    def _token_lifetime(self) -> float:
        """``expires_in`` of the token just issued (seconds, positive), which the SDK does not keep."""
        try:
            expires_in = float(load_json(self._last_response.data)["expires_in"])
        except (AttributeError, ValueError, KeyError, TypeError):
            expires_in = math.nan
        if not math.isfinite(expires_in) or expires_in <= 0:
            raise GenesysLoginError("Genesys token response lacks a positive numeric expires_in")
        return expires_in

    def _ensure_token(self) -> None:
        if self._expires_at is None or self._clock() >= self._expires_at:
            self.login()

    # --- the run's deadline --------------------------------------------------------------------------
    def _time_left(self) -> float:
        return math.inf if self._deadline is None else self._deadline - self._clock()

    def _start_request(self, what: str) -> None:
        """Before each request: end the run if its deadline has passed, else fit the timeout into it.

        The request's connect/read timeout is GENESYS_TIMEOUT_SECONDS, cut to the time left before the
        deadline (urllib3 makes a new pool for a new timeout, so this happens only near the deadline).
        """
        left = self._time_left()
        if left <= 0:
            raise GenesysDeadlineExceeded(
                f"the run's deadline ({self._deadline_seconds:g} s) passed before the request for {what}; "
                "this run ends, the next scheduled run retries"
            )
        timeout = min(self._timeout_seconds, left)
        if timeout != self._request_timeout:
            import urllib3

            pool_kw = self._api_client.get_http_client().rest_client.pool_manager.connection_pool_kw
            pool_kw["timeout"] = urllib3.Timeout(connect=timeout, read=timeout)
            self._request_timeout = timeout

    # --- reads ---------------------------------------------------------------------------------------
    def get_open_integration(self, integration_id: str) -> dict[str, Any]:
        return self._read(
            "ConversationsApi",
            "get_conversations_messaging_integrations_open_integration_id",
            integration_id,
            what=f"open messaging integration {integration_id}",
            scope=SCOPE_OPEN_MESSAGING,
        )

    def get_integration(self, integration_id: str) -> dict[str, Any]:
        return self._read(
            "IntegrationsApi",
            "get_integration",
            integration_id,
            what=f"integration {integration_id}",
            scope=SCOPE_INTEGRATIONS,
        )

    def get_integration_config(self, integration_id: str) -> dict[str, Any]:
        return self._read(
            "IntegrationsApi",
            "get_integration_config_current",
            integration_id,
            what=f"configuration of integration {integration_id}",
            scope=SCOPE_INTEGRATIONS,
        )

    def get_credential(self, credential_id: str) -> dict[str, Any]:
        return self._read(
            "IntegrationsApi",
            "get_integrations_credential",
            credential_id,
            what=f"credential {credential_id}",
            scope=SCOPE_CREDENTIALS,
        )

    def _read(self, api_class: str, method: str, ident: str, *, what: str, scope: str) -> dict[str, Any]:
        api = getattr(load_sdk(), api_class)(self._api_client)
        return self._call(lambda: getattr(api, method)(ident), what=what, scope=scope)

    # --- one call, with token refresh, bounded 429 handling and error mapping ----------------------
    def _call(self, request: Callable[[], Any], *, what: str, scope: str) -> dict[str, Any]:
        from PureCloudPlatformClientV2.rest import ApiException

        relogged = False
        rate_limited = 0
        while True:
            self._ensure_token()
            self._start_request(what)
            self._last_response = None
            try:
                model = self._within_deadline(request)
            except ApiException as exc:
                if exc.status == 401 and not relogged:
                    relogged = True  # token revoked or expired early: one fresh login, then give up
                    self._expires_at = None
                    continue
                if exc.status == 429:
                    self._wait_out_rate_limit(exc, what=what, already=rate_limited)
                    rate_limited += 1
                    continue
                raise self._translate(exc, what=what, scope=scope) from None
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                # The SDK's deserializer chokes on bodies that are not the JSON it expects (json.loads
                # raises RecursionError for one nested too deep).
                raise GenesysMalformedResponse(f"Genesys answered {what} with an unreadable body") from None
            except _TRANSPORT_ERRORS as exc:  # mapped to our hierarchy right here
                raise self._translate(exc, what=what, scope=scope) from None
            return self._to_json(model, what)

    def _wait_out_rate_limit(self, exc: Any, *, what: str, already: int) -> None:
        """Sleep for Retry-After if within our bounds and the run's deadline, else end the run."""
        wait = _retry_after_seconds(exc.headers)
        if already >= self._max_rate_limit_retries or wait > self._max_retry_after_seconds:
            raise GenesysRateLimited(
                f"Genesys Cloud rate limit on {what}: still 429 after {already} wait(s) "
                f"(Retry-After {wait:g} s; bounds: {self._max_rate_limit_retries} waits of at most "
                f"{self._max_retry_after_seconds:g} s); this run ends, the next scheduled run retries",
                retry_after_seconds=wait,
            ) from None
        left = self._time_left()
        if wait >= left:  # no time would be left for the request after the wait
            raise GenesysDeadlineExceeded(
                f"Genesys Cloud rate limit on {what}: Retry-After {wait:g} s reaches past the run's "
                f"deadline ({self._deadline_seconds:g} s, {max(left, 0.0):.1f} s left); this run ends, "
                "the next scheduled run retries"
            ) from None
        self.rate_limit_waits.append(wait)
        logger.warning("genesys rate limited; waiting", extra={"what": what, "wait_s": wait})
        self._sleep(wait)

    def _to_json(self, model: Any, what: str) -> dict[str, Any]:
        raw = getattr(self._last_response, "data", None)
        try:
            parsed = load_json(raw) if raw is not None else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or model is None:
            raise GenesysMalformedResponse(f"Genesys answered {what} with a body that is not a JSON object")
        doc: dict[str, Any] = self._api_client.sanitize_for_serialization(model)
        return doc

    def _translate(self, exc: Exception, *, what: str, scope: str | None) -> GenesysError:
        import urllib3
        from PureCloudPlatformClientV2.rest import ApiException

        if isinstance(exc, ApiException):
            status = exc.status or 0
            if status == 0:  # the SDK's wrapping of a TLS failure
                return GenesysUnavailable(f"TLS failure talking to Genesys Cloud ({what})")
            if status in (400, 401, 403) and scope is None:  # the token endpoint
                return GenesysAuthError(
                    f"Genesys login refused ({status}): check the OAuth client id and secret "
                    "and that the client uses the Client Credentials grant"
                )
            if status < 500 and scope is None:  # e.g. 404: not a Genesys token endpoint
                return GenesysLoginError(f"Genesys token endpoint answered {status} at login")
            if status == 401:
                return GenesysAuthError(f"Genesys refused a fresh token reading {what} (401)")
            if status == 403:
                return GenesysForbidden(
                    f"Genesys denied reading {what} (403): the OAuth client's role lacks the "
                    f"permission {scope}",
                    scope=scope or "",
                )
            if status == 404:
                return GenesysNotFound(f"Genesys has no {what} (404)")
            if status >= 500:
                return GenesysUnavailable(f"Genesys Cloud answered {status} reading {what}")
            return GenesysRunError(f"Genesys Cloud answered {status} reading {what}")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            reason = getattr(exc, "reason", None) or exc
            # urllib3 makes NewConnectionError a ConnectTimeoutError, yet it is a refusal, not a timeout.
            timed_out = isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
                reason, urllib3.exceptions.NewConnectionError
            )
            if timed_out and self._request_timeout < self._timeout_seconds:
                return GenesysDeadlineExceeded(
                    f"Genesys Cloud did not answer {what} before the run's deadline "
                    f"({self._deadline_seconds:g} s); this run ends, the next scheduled run retries"
                )
            if timed_out:
                return GenesysTimeout(
                    f"Genesys Cloud did not answer {what} within {self._timeout_seconds:g} s "
                    f"({type(reason).__name__})"
                )
            return GenesysUnavailable(f"cannot reach Genesys Cloud for {what} ({type(reason).__name__})")
        if isinstance(exc, OSError):
            return GenesysUnavailable(f"cannot reach Genesys Cloud for {what} ({type(exc).__name__})")
        return GenesysRunError(
            f"unexpected failure talking to Genesys Cloud for {what} ({type(exc).__name__})"
        )

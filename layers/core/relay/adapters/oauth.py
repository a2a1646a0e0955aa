"""OAuth 2.0 client-credentials tokens for targets of security type oauth2 (relay.ports.AccessTokens).

- **The same road as deliveries.** The grant (RFC 6749 §4.4) is POSTed to the target's token URL by
  the dispatcher's own HttpSender: the URL policy on every address before the TCP handshake, the
  total deadline, no redirects followed, no proxies, a bounded answer. Config sync checked the token
  URL against the same policy.
- **Client authentication** ``client_secret_basic`` (the default; RFC 6749 §2.3.1: id and secret
  form-encoded, then HTTP Basic) or ``client_secret_post`` (both in the form); ``scope`` and
  ``audience`` go in the form when configured.
- **Cached per container per target** until ``expires_in`` less a margin: 10 % of the lifetime, at
  least 30 s, at most half of it (the Genesys client's rule, ``refresh_margin``). A token answer
  without ``expires_in`` is kept ``DEFAULT_LIFETIME_SECONDS``, none longer than
  ``MAX_LIFETIME_SECONDS``; ``expires_in`` 0 serves the request that fetched it only. A changed token
  URL, client, scope, audience or client secret is a new cache entry.
- **One token request per target at a time.** Threads that need the target's token meanwhile wait
  for that request and share its outcome, a failure included: a batch for a target whose token
  endpoint is down makes one token request, not one per record.
- **refused**: the token the target just answered 401 to is never handed out again; a fresh one is
  fetched, unless another thread has fetched one meanwhile.
- **A Retry-After is waited out.** A failed token request whose answer asked for quiet (a 429 or 503
  with Retry-After) is not repeated before then: a target's deliveries meanwhile end as
  ``TokenUnavailable`` at once, carrying the rest of the wait, without a request. Before, every batch
  asked again: a token endpoint that asked for 30 s got a request per batch and container throughout.
- **Errors** are ``TokenUnavailable``: the token endpoint's host and what happened (its status and
  OAuth ``error`` code, a timeout, an unusable answer), never the client secret, a token or the body;
  with the endpoint's Retry-After, so that the delivery's retry waits as long as it asked.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from pydantic import SecretStr

from relay.adapters.http import HttpSender
from relay.errors import ConfigurationError, TokenUnavailable
from relay.json_input import load_json
from relay.models.http import HttpResult, parse_retry_after
from relay.models.targets import OAuth2Client, Target, TokenEndpointAuthMethod
from relay.observability import logger

# Renew when less than this share of a token's lifetime is left (at least 30 s), but never before this
# share of its life has passed: a token shorter-lived than the minimum is still reused.
_REFRESH_MARGIN_RATIO = 0.1
_REFRESH_MARGIN_MIN_SECONDS = 30.0
_REFRESH_MARGIN_MAX_RATIO = 0.5
# A token answer without expires_in (RFC 6749 only recommends it) is reused this long.
DEFAULT_LIFETIME_SECONDS = 300.0
# A longer expires_in (a day and more, or an integer too large for a float) is cut to this: a cached
# token is fetched again at least daily, whatever the endpoint promised.
MAX_LIFETIME_SECONDS = 86_400.0
# A token answer is a small JSON object; more than this is not one.
TOKEN_ANSWER_LIMIT_BYTES = 16_384
# An OAuth error code (RFC 6749 §5.2) is quoted in errors only when it looks like one.
_OAUTH_ERROR_CODE = re.compile(r"^[\w.-]{1,64}$")
# A token must fit an Authorization header: visible ASCII only (RFC 6750's b64token and more).
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")


def refresh_margin(lifetime: float) -> float:
    """How long before a token's expiry to renew it: 10 % of its lifetime, at least 30 s, at most half.

    Without the cap a token living less than 30 s would be replaced before every use."""
    return min(
        max(_REFRESH_MARGIN_MIN_SECONDS, lifetime * _REFRESH_MARGIN_RATIO),
        lifetime * _REFRESH_MARGIN_MAX_RATIO,
    )


@dataclass
class _Slot:
    """One target's token, and the lock that lets one thread at a time fetch it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    client: bytes = b""  # digest of the client configuration the token (or failure) is for
    token: SecretStr | None = None
    renew_at: float = 0.0
    fetches: int = 0  # token requests finished, successful or not
    failure: TokenUnavailable | None = None  # why the last one failed, if it did
    quiet_until: float = 0.0  # the failed request's Retry-After: no token request before then


class ClientCredentialsTokens:
    """``http``: the dispatcher's HttpSender; ``clock``: monotonic seconds (a test moves it by hand);
    ``on_answer``: sees each token request's result as it came, before it is read (``relay targets
    check`` reports the endpoint's status and latency; it must not keep or show the body, which holds
    the token)."""

    def __init__(
        self,
        http: HttpSender,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_answer: Callable[[HttpResult], None] | None = None,
    ) -> None:
        self._http = http
        self._clock = clock
        self._on_answer = on_answer
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._slots_lock = threading.Lock()

    def token(
        self,
        target: Target,
        client_secret: SecretStr,
        *,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        refused: SecretStr | None = None,
    ) -> SecretStr:
        """The target's cached token, or a fresh one (relay.ports.AccessTokens): waiting for a token
        request in flight counts against ``total_timeout`` as much as making one does."""
        client = target.security.oauth2
        if client is None:
            raise ConfigurationError(
                f"target {target.target_id} has security type oauth2 but no oauth2 client"
            )
        identity = _client_digest(client, client_secret)
        slot = self._slot(target)
        finished_before = slot.fetches
        if total_timeout <= 0 or not slot.lock.acquire(timeout=total_timeout):
            raise TokenUnavailable(f"token endpoint {_host(client)}: no time left in the attempt for a token")
        try:
            if slot.client == identity:
                if slot.fetches != finished_before and (failed := slot.failure) is not None:
                    # the request this thread waited for failed
                    raise TokenUnavailable(str(failed), retry_after=failed.retry_after)
                if (
                    slot.token is not None
                    and self._clock() < slot.renew_at
                    and not _same(slot.token, refused)
                ):
                    return slot.token
                if (quiet := slot.quiet_until - self._clock()) > 0 and slot.failure is not None:
                    raise TokenUnavailable(
                        f"{slot.failure}; not asked again before its Retry-After",
                        retry_after=str(math.ceil(quiet)),
                    )
            return self._fetch(
                slot, identity, client, client_secret, (connect_timeout, read_timeout, total_timeout)
            )
        finally:
            slot.lock.release()

    def _slot(self, target: Target) -> _Slot:
        with self._slots_lock:
            return self._slots.setdefault((target.integration_id, target.target_id), _Slot())

    def _fetch(
        self,
        slot: _Slot,
        identity: bytes,
        client: OAuth2Client,
        client_secret: SecretStr,
        timeouts: tuple[float, float, float],
    ) -> SecretStr:
        """One token request, its outcome kept in ``slot`` (called holding the slot's lock)."""
        connect, read, total = timeouts
        body, headers = _grant(client, client_secret)
        started = self._clock()
        result = self._http.send(
            "POST",
            client.token_url,
            body=body,
            headers=headers,
            connect_timeout=min(connect, total),
            read_timeout=min(read, total),
            total_timeout=total,
            body_limit_bytes=TOKEN_ANSWER_LIMIT_BYTES,
        )
        if self._on_answer is not None:
            self._on_answer(result)
        slot.client, slot.token, slot.fetches = identity, None, slot.fetches + 1
        try:
            token, lifetime = _read_answer(result, _host(client), client_secret)
        except TokenUnavailable as exc:
            slot.failure = exc
            quiet = parse_retry_after(exc.retry_after, now=datetime.now(UTC))
            slot.quiet_until = self._clock() + quiet if quiet else 0.0
            raise
        slot.token, slot.failure, slot.quiet_until = token, None, 0.0
        slot.renew_at = started + lifetime - refresh_margin(lifetime)
        logger.info("oauth token issued", extra={"tokenHost": _host(client), "expiresIn": lifetime})
        return token


def _grant(client: OAuth2Client, client_secret: SecretStr) -> tuple[bytes, dict[str, str]]:
    """The client-credentials request's form body and headers."""
    form = {"grant_type": "client_credentials"}
    if client.scope:
        form["scope"] = client.scope
    if client.audience:
        form["audience"] = client.audience
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    secret = client_secret.get_secret_value()
    if client.token_endpoint_auth_method is TokenEndpointAuthMethod.CLIENT_SECRET_POST:
        form.update(client_id=client.client_id, client_secret=secret)
    else:  # RFC 6749 §2.3.1: each part form-encoded before it is joined and base64-encoded
        pair = f"{quote(client.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return urlencode(form).encode(), headers


def _read_answer(result: HttpResult, host: str, client_secret: SecretStr) -> tuple[SecretStr, float]:
    """(access token, lifetime in seconds) from the token endpoint's answer, or TokenUnavailable."""
    if result.error_code is not None:
        raise TokenUnavailable(f"token endpoint {host}: {result.error_code} ({result.error})")
    status = result.status
    doc = _json_object(result.body)
    if status is None or not 200 <= status < 300:
        code = doc.get("error") if isinstance(doc.get("error"), str) else None
        named = f" ({code})" if code and _quotable(code, client_secret) else ""
        raise TokenUnavailable(
            f"token endpoint {host} answered {status}{named}", retry_after=result.headers.get("retry-after")
        )
    if result.body_truncated:
        raise TokenUnavailable(f"token endpoint {host} answered more than {TOKEN_ANSWER_LIMIT_BYTES} bytes")
    token = doc.get("access_token")
    if not isinstance(token, str) or not _HEADER_SAFE.fullmatch(token):
        raise TokenUnavailable(f"token endpoint {host} answered without a usable access_token")
    token_type = doc.get("token_type")  # left out or null: taken as Bearer, as some servers answer
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
        raise TokenUnavailable(f"token endpoint {host} issued a token that is not a bearer token")
    return SecretStr(token), _lifetime(doc.get("expires_in"), host)


def _quotable(code: str, client_secret: SecretStr) -> bool:
    """Whether an answer's ``error`` may be quoted: it looks like an OAuth error code and is not the
    client secret, or a part of it, echoed back where the code belongs (a secret can look like a code,
    and the error goes to the audit, the log and ``relay deliveries show``)."""
    secret = client_secret.get_secret_value()
    return bool(_OAUTH_ERROR_CODE.fullmatch(code)) and code not in secret and secret not in code


def _lifetime(expires_in: Any, host: str) -> float:
    if expires_in is None:
        return DEFAULT_LIFETIME_SECONDS
    try:
        lifetime = float(expires_in) if not isinstance(expires_in, bool) else math.nan
    except OverflowError:  # an integer past a float's range: longer than any lifetime kept
        lifetime = MAX_LIFETIME_SECONDS if expires_in > 0 else math.nan
    except (TypeError, ValueError):
        lifetime = math.nan
    if math.isnan(lifetime) or lifetime < 0:
        raise TokenUnavailable(f"token endpoint {host} answered an expires_in that is not a count of seconds")
    return min(lifetime, MAX_LIFETIME_SECONDS)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = load_json(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _client_digest(client: OAuth2Client, client_secret: SecretStr) -> bytes:
    """What a cached token was issued for: the client's configuration and its secret (digested)."""
    parts = [client.model_dump_json(), client_secret.get_secret_value()]
    return hashlib.sha256("\0".join(parts).encode()).digest()


def _same(token: SecretStr, other: SecretStr | None) -> bool:
    return other is not None and token.get_secret_value() == other.get_secret_value()


def _host(client: OAuth2Client) -> str:
    return urlsplit(client.token_url).hostname or "?"

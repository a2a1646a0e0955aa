"""Outbound HTTP for deliveries: connections kept per container, one route per target URL.

- up to the dispatcher's concurrency kept per route, no retries here (retries are the queue's job);
- one request and its answer read by relay.adapters.http_exchange on connections urllib3's classes
  open, not requests or urllib3's pool on top: their request preparation and response objects cost
  most of the dispatcher's CPU per delivery and add nothing used here;
- a **total deadline** on every request (connect, TLS, request, response: relay.adapters.deadline),
  besides the connect timeout and the per-read timeout; redirects never followed (3xx is an answer);
- the response body read only up to a bound (for the audit), never whole;
- proxies from the environment ignored, and the host name resolved and *every* address handed to
  ``endpoint_check(address, port)`` before the TCP handshake (relay.adapters.connections): a DNS
  answer that changes between validation and connection (rebinding) cannot reach a private address,
  and a refused address never sees a connection attempt;
- TLS from relay.adapters.tls: certificates always verified against the trusted CAs, and a request
  that carries a client certificate (mTLS) goes over connections of its own, made with it (a route
  is a URL *and* the TLS context its connections use).

A result is an answer only when it arrived whole: a response cut off by the peer (closed after the
status line, or before its Content-Length or last chunk) is ``incomplete-response``; one the
deadline cut off is ``deadline-exceeded``. Both keep the status that arrived, for the audit.
A body longer than our own read bound is not incomplete: we stopped reading, the peer did not.
"""

from __future__ import annotations

import errno
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping

from pydantic import SecretStr
from urllib3.connectionpool import port_by_scheme
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
)
from urllib3.util import parse_url

from relay.adapters.connections import EndpointCheck, connection_classes
from relay.adapters.deadline import Deadline, request_deadline
from relay.adapters.http_exchange import NoAnswer, ReadTimedOut, Route
from relay.adapters.tls import TlsContexts, TlsTrust
from relay.errors import UnsafeUrl
from relay.models.http import (
    CONNECT_TIMEOUT,
    CONNECTION_ERROR,
    DEADLINE_EXCEEDED,
    INVALID_REQUEST,
    READ_TIMEOUT,
    UNSAFE_ADDRESS,
    HttpResult,
)

# Routes a sender keeps (each keeps at most ``pool_size`` idle connections).
_MAX_ROUTES = 64


class HttpSender:
    """Sends one request at a time per call; thread-safe for concurrent calls (pooled connections).
    ``trust``: the CAs https peers must chain to (default: certifi's)."""

    def __init__(
        self,
        *,
        pool_size: int,
        body_limit_bytes: int,
        endpoint_check: EndpointCheck | None = None,
        trust: TlsTrust | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._body_limit = body_limit_bytes
        self._clock = clock
        self._pool_size = pool_size
        self._tls = TlsContexts(trust)
        self._connection_classes = connection_classes(endpoint_check)
        # (URL, TLS context) -> its route: the URL parsed once, and its kept connections. No proxies:
        # nothing here reads the environment.
        self._routes: OrderedDict[tuple[str, ssl.SSLContext], Route] = OrderedDict()
        self._routes_lock = threading.Lock()

    def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float | None = None,
        client_certificate: SecretStr | None = None,
        body_limit_bytes: int | None = None,
    ) -> HttpResult:
        """One request. ``total_timeout`` bounds all of it (connect, TLS, sending, the response and
        its body); by default it is ``connect_timeout + read_timeout``, the budget the dispatcher
        plans with (docs/dispatcher.md). ``client_certificate``: a PEM bundle presented in the TLS
        handshake (ConfigurationError, before anything is sent, if it is unusable).
        ``body_limit_bytes`` overrides the sender's bound on the body read."""
        budget = total_timeout if total_timeout is not None else connect_timeout + read_timeout
        tls = (
            self._tls.for_client(client_certificate) if client_certificate is not None else self._tls.default
        )
        limit = self._body_limit if body_limit_bytes is None else body_limit_bytes
        started = self._clock()

        def elapsed() -> float:
            return (self._clock() - started) * 1000.0

        with request_deadline(budget) as deadline:
            return self._exchange(
                method, url, body, headers, (connect_timeout, read_timeout), tls, limit, deadline, elapsed
            )

    def _exchange(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: tuple[float, float],
        tls: ssl.SSLContext,
        body_limit: int,
        deadline: Deadline,
        elapsed: Callable[[], float],
    ) -> HttpResult:
        try:
            answer = self._route(url, tls).exchange(
                method,
                body,
                headers,
                connect_timeout=timeouts[0],
                read_timeout=timeouts[1],
                deadline=deadline,
                body_limit=body_limit,
            )
        except UnsafeUrl as exc:
            return HttpResult(None, elapsed(), error_code=UNSAFE_ADDRESS, error=str(exc))
        except (NoAnswer, HTTPError, OSError, ValueError) as exc:
            code, why = (DEADLINE_EXCEEDED, _past(deadline)) if deadline.exceeded else _no_response(exc)
            return HttpResult(None, elapsed(), error_code=code, error=why)
        status, retry = answer.status, _retry_headers(answer.headers)
        if answer.error_code is not None:  # cut off in its headers or body, or a read timeout in its body
            if deadline.exceeded:
                return HttpResult(status, elapsed(), b"", True, retry, DEADLINE_EXCEEDED, _past(deadline))
            cut = answer.error_code, answer.error
            return HttpResult(status, elapsed(), answer.body, answer.truncated, retry, *cut)
        body_read, truncated = _bounded(answer.body, answer.headers.get("content-encoding"), body_limit)
        if deadline.fired and not truncated:  # a close-delimited body ends "cleanly" when cut
            return HttpResult(status, elapsed(), body_read, True, retry, DEADLINE_EXCEEDED, _past(deadline))
        return HttpResult(status, elapsed(), body_read, truncated, retry)

    def _route(self, url: str, tls: ssl.SSLContext) -> Route:
        """The route for ``url`` made with ``tls``; raises ValueError for a URL that names no http(s)
        origin, or one HTTP cannot carry."""
        key = (url, tls)
        with self._routes_lock:
            route = self._routes.get(key)
            if route is not None:
                self._routes.move_to_end(key)
                return route
        parsed = parse_url(url)
        scheme = (parsed.scheme or "").lower()
        if scheme not in self._connection_classes or not parsed.host:
            raise LocationValueError("not an http(s) URL")
        # https: the context carries the trusted CAs (and the client certificate); verification is on.
        options = {"cert_reqs": "CERT_REQUIRED", "ssl_context": tls} if scheme == "https" else {}
        made = Route(
            self._connection_classes[scheme],
            parsed.host,
            parsed.port or port_by_scheme[scheme],
            default_port=port_by_scheme[scheme],
            request_target=parsed.request_uri,
            keep=self._pool_size,
            options=options,
        )
        with self._routes_lock:
            route = self._routes.setdefault(key, made)
            while len(self._routes) > _MAX_ROUTES:  # targets come and go: forget the least recent
                self._routes.popitem(last=False)[1].close()
        return route

    def close(self) -> None:
        with self._routes_lock:
            routes, self._routes = list(self._routes.values()), OrderedDict()
        for route in routes:
            route.close()


def _bounded(body: bytes, coding: str | None, limit: int) -> tuple[bytes, bool]:
    """The body (at most ``limit + 1`` bytes as it came) decoded when it is gzip or deflate, cut to
    ``limit``, and whether there was more. A body that does not decode is kept as it came: the answer
    arrived whole, and its body only feeds the audit and a token answer's JSON, so it never turns a
    complete answer into a cut-off one (and a small gzip cannot make us keep a large one)."""
    truncated = len(body) > limit
    decoded = _decoded(body, coding, limit + 1)
    if decoded is not None:
        body, truncated = decoded, truncated or len(decoded) > limit
    return body[:limit], truncated


# zlib's window bits per content coding (RFC 9110 8.4.1); deflate is zlib-wrapped, or raw from some servers.
_CODINGS = {
    "gzip": (16 + zlib.MAX_WBITS,),
    "x-gzip": (16 + zlib.MAX_WBITS,),
    "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS),
}


def _decoded(body: bytes, coding: str | None, max_length: int) -> bytes | None:
    """``body`` decoded (at most ``max_length`` bytes; a cut-off stream gives what it holds), or None
    when it is not gzip or deflate or does not decode."""
    for wbits in _CODINGS.get((coding or "").strip().lower(), ()):
        try:
            return zlib.decompressobj(wbits).decompress(body, max_length)
        except zlib.error:
            continue
    return None


def _past(deadline: Deadline) -> str:
    return f"no complete answer within the request's {deadline.seconds:g} s deadline"


def _no_response(exc: Exception) -> tuple[str, str]:
    """(error code, message) for a request that got no response at all."""
    if isinstance(exc, NewConnectionError):  # urllib3 makes it a ConnectTimeoutError too
        return CONNECTION_ERROR, _short(exc)
    if isinstance(exc, ConnectTimeoutError):
        return CONNECT_TIMEOUT, "connect timed out"
    if isinstance(exc, ReadTimedOut):
        return READ_TIMEOUT, "read timed out"
    if isinstance(exc, NoAnswer):  # closed, not HTTP, or past the limits: its message says which
        return CONNECTION_ERROR, str(exc)
    if isinstance(exc, ValueError):  # a request HTTP cannot carry (LocationValueError too): nothing sent
        return INVALID_REQUEST, _short(exc)
    return CONNECTION_ERROR, _short(exc)


def _retry_headers(headers: Mapping[str, str]) -> dict[str, str]:
    value = headers.get("retry-after")
    return {"retry-after": value} if value is not None else {}


def _short(exc: Exception) -> str:
    # urllib3's messages may quote the URL, whose query may hold a token: keep exception class names,
    # and a TLS failure's OpenSSL reason (which names no URL and no secret).
    tls = _tls_failure(exc)
    if tls is not None:
        return f"{type(exc).__name__}({_tls_reason(tls)})"
    if isinstance(exc, NewConnectionError) and isinstance(exc.__cause__, OSError):
        # Refused, unreachable, reset: the socket error says which (its class, or its errno's name).
        return f"{type(exc).__name__}({_os_reason(exc.__cause__)})"
    return type(exc).__name__


def _os_reason(error: OSError) -> str:
    if type(error) is not OSError or error.errno is None:
        return type(error).__name__
    return errno.errorcode.get(error.errno, type(error).__name__)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError behind a failed request (urllib3 wraps it), if one is."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop()
        if isinstance(current, ssl.SSLError):
            return current
        nested = [*current.args, current.__cause__, current.__context__]
        seen.extend(e for e in nested if isinstance(e, BaseException) and e is not current)
    return None


def _tls_reason(failure: ssl.SSLError) -> str:
    """``CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate`` (their certificate is not
    trusted), ``TLSV13_ALERT_CERTIFICATE_REQUIRED`` (they want ours), ``TLSV1_ALERT_UNKNOWN_CA`` ..."""
    reason = getattr(failure, "reason", None) or type(failure).__name__
    verify = getattr(failure, "verify_message", None)
    return f"{reason}: {verify}" if verify else str(reason)

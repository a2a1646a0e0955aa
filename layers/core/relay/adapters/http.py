"""Outbound HTTP for deliveries: one pooled ``requests.Session`` per container.

- pool sized to the dispatcher's concurrency, no urllib3 retries (retries are the queue's job);
- a **total deadline** on every request (connect, TLS, request, response: relay.adapters.deadline),
  besides the connect timeout and the per-read timeout; redirects never followed (3xx is an answer);
- the response body read only up to a bound (for the audit), never whole;
- proxies from the environment ignored, and the host name resolved and *every* address handed to
  ``endpoint_check(address, port)`` before the TCP handshake (relay.adapters.connections): a DNS
  answer that changes between validation and connection (rebinding) cannot reach a private address,
  and a refused address never sees a connection attempt.
- TLS from relay.adapters.tls: certificates always verified against the trusted CAs, and a request
  that carries a client certificate (mTLS) goes over connections of its own, made with it.

A result is an answer only when it arrived whole: a response cut off by the peer (closed after the
status line, or before its Content-Length or last chunk) is ``incomplete-response``; one the
deadline cut off is ``deadline-exceeded``. Both keep the status that arrived, for the audit.
A body longer than our own read bound is not incomplete: we stopped reading, the peer did not.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import TYPE_CHECKING, Any

import requests
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError, ReadTimeoutError
from urllib3.response import BaseHTTPResponse

from relay.adapters.connections import EndpointCheck, headers_complete, pool_classes
from relay.adapters.deadline import Deadline, request_deadline
from relay.adapters.tls import TlsContexts, TlsTrust
from relay.errors import UnsafeUrl
from relay.models.http import (
    CONNECT_TIMEOUT,
    CONNECTION_ERROR,
    DEADLINE_EXCEEDED,
    INCOMPLETE_RESPONSE,
    INVALID_REQUEST,
    READ_TIMEOUT,
    UNSAFE_ADDRESS,
    HttpResult,
)

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

_CHUNK_BYTES = 8192


class _GuardedAdapter(HTTPAdapter):
    """requests' adapter with our connection classes and our TLS contexts. requests hands a request's
    ``cert`` to exactly the two hooks below; HttpSender passes the client certificate's SSLContext
    there, and urllib3 keys its pools by context, so that request gets connections of its own."""

    def __init__(self, check: EndpointCheck | None, pool_size: int, tls: TlsContexts) -> None:
        self._check = check
        self._tls = tls
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0, pool_block=False)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = pool_classes(self._check)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, True, None)
        if host_params["scheme"] == "https":
            pool_kwargs["ssl_context"] = cert if isinstance(cert, ssl.SSLContext) else self._tls.default
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # Verification always on; the trusted CAs are in the context already (requests would have
        # every new connection load certifi's file into it again).
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = None


class HttpSender:
    """Sends one request at a time per call; thread-safe for concurrent calls (pooled connections)."""

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
        self._tls = TlsContexts(trust)
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or netrc from the environment
        adapter = _GuardedAdapter(endpoint_check, pool_size, self._tls)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

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
        tls = self._tls.for_client(client_certificate) if client_certificate is not None else None
        exchange = _Exchange(method, url, body, headers, (connect_timeout, read_timeout), tls)
        started = self._clock()

        def elapsed() -> float:
            return (self._clock() - started) * 1000.0

        limit = self._body_limit if body_limit_bytes is None else body_limit_bytes
        with request_deadline(budget) as deadline:
            return self._exchange(exchange, deadline, elapsed, limit)

    def _exchange(
        self, exchange: _Exchange, deadline: Deadline, elapsed: Callable[[], float], body_limit: int
    ) -> HttpResult:
        try:
            # Prepared directly: the session's cookie/auth/environment merging is of no use here and
            # costs a noticeable share of the CPU per delivery.
            prepared = requests.Request(
                exchange.method, exchange.url, data=exchange.body, headers=dict(exchange.headers)
            ).prepare()
            response = self.session.send(
                prepared,
                timeout=exchange.timeouts,
                allow_redirects=False,
                stream=True,
                cert=exchange.tls,  # type: ignore[arg-type]  # for _GuardedAdapter, which takes a context
            )
        except UnsafeUrl as exc:
            return HttpResult(None, elapsed(), error_code=UNSAFE_ADDRESS, error=str(exc))
        except (requests.exceptions.RequestException, ValueError) as exc:
            code, why = (DEADLINE_EXCEEDED, _past(deadline)) if deadline.exceeded else _no_response(exc)
            return HttpResult(None, elapsed(), error_code=code, error=why)
        status, answer = response.status_code, _retry_headers(response)
        try:
            body_read, truncated = _read_bounded(response.raw, body_limit)
        except (HTTPError, HTTPException, OSError) as exc:
            code, why = _body_failure(exc, deadline)
            return HttpResult(status, elapsed(), b"", True, answer, code, why)
        finally:
            response.close()
        if deadline.fired and not truncated:  # a close-delimited body ends "cleanly" when cut
            return HttpResult(status, elapsed(), body_read, True, answer, DEADLINE_EXCEEDED, _past(deadline))
        if not headers_complete(response.raw):
            why = "connection closed inside the response headers"
            return HttpResult(status, elapsed(), body_read, truncated, answer, INCOMPLETE_RESPONSE, why)
        return HttpResult(status, elapsed(), body_read, truncated, answer)

    def close(self) -> None:
        self.session.close()


@dataclass(frozen=True)
class _Exchange:
    """One request as HttpSender sends it; ``tls`` is the client certificate's context, if any."""

    method: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    timeouts: tuple[float, float]
    tls: ssl.SSLContext | None


def _read_bounded(raw: BaseHTTPResponse, limit: int) -> tuple[bytes, bool]:
    """The body up to ``limit`` bytes, and whether there was more. Never asks for more than one byte
    past the bound, so a peer that stalls after sending enough is not waited for."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = raw.read(min(_CHUNK_BYTES, limit + 1 - size), decode_content=True)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True


def _past(deadline: Deadline) -> str:
    return f"no complete answer within the request's {deadline.seconds:g} s deadline"


def _no_response(exc: Exception) -> tuple[str, str]:
    """(error code, message) for a request that got no response at all."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return CONNECT_TIMEOUT, "connect timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return READ_TIMEOUT, "read timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return CONNECTION_ERROR, _short(exc)
    return INVALID_REQUEST, _short(exc)


def _body_failure(exc: Exception, deadline: Deadline) -> tuple[str, str]:
    """(error code, message) for a response whose body could not be read to its end."""
    if deadline.exceeded:
        return DEADLINE_EXCEEDED, _past(deadline)
    if isinstance(exc, ReadTimeoutError):
        return READ_TIMEOUT, "read timed out in the response body"
    # The peer closed before the body's end (Content-Length, last chunk), or garbled it.
    return INCOMPLETE_RESPONSE, f"response body cut off ({type(exc).__name__})"


def _retry_headers(response: requests.Response) -> dict[str, str]:
    value = response.headers.get("Retry-After")
    return {"retry-after": value} if value is not None else {}


def _short(exc: Exception) -> str:
    # requests' messages quote the URL, whose query may hold a token: keep exception class names only.
    reason: object = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3 MaxRetryError wraps the real cause
    if isinstance(reason, BaseException):
        return f"{type(exc).__name__}({type(reason).__name__})"
    return type(exc).__name__

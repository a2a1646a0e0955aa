"""Outbound HTTP for deliveries: one pooled ``requests.Session`` per container.

- pool sized to the dispatcher's concurrency, no urllib3 retries (retries are the queue's job);
- explicit connect and read timeouts on every request; redirects never followed (3xx is an answer);
- the response body read only up to a bound (for the audit), never whole;
- proxies from the environment ignored, and every new connection's *peer address* (the IP actually
  connected to, after DNS) handed to ``address_check`` before a byte is sent: a DNS answer that
  changes between validation and connection (rebinding) cannot reach a private address.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from relay.errors import UnsafeUrl

AddressCheck = Callable[[str], None]

# Stable error codes for the audit and the outcome mapping (relay.logic.outcomes).
CONNECT_TIMEOUT = "connect-timeout"
READ_TIMEOUT = "read-timeout"
CONNECTION_ERROR = "connection-error"
UNSAFE_ADDRESS = "unsafe-address"
INVALID_REQUEST = "invalid-request"


@dataclass(frozen=True)
class HttpResult:
    """What one request produced: a status (and bounded body) or an error code, never both."""

    status: int | None
    elapsed_ms: float
    body: bytes = b""
    body_truncated: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    error_code: str | None = None
    error: str | None = None


def _check_peer(sock: socket.socket, check: AddressCheck) -> None:
    peer = sock.getpeername()[0]
    try:
        check(str(peer))
    except UnsafeUrl:
        sock.close()
        raise


def _checked_pool_classes(check: AddressCheck) -> dict[str, type[HTTPConnectionPool]]:
    class CheckedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _check_peer(sock, check)
            return sock

    class CheckedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _check_peer(sock, check)  # before the TLS handshake
            return sock

    class CheckedHTTPPool(HTTPConnectionPool):
        ConnectionCls = CheckedHTTPConnection

    class CheckedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = CheckedHTTPSConnection

    return {"http": CheckedHTTPPool, "https": CheckedHTTPSPool}


class _AddressCheckingAdapter(HTTPAdapter):
    def __init__(self, check: AddressCheck | None, pool_size: int) -> None:
        self._check = check
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0, pool_block=False)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        if self._check is not None:
            self.poolmanager.pool_classes_by_scheme = _checked_pool_classes(self._check)


class HttpSender:
    """Sends one request at a time per call; thread-safe for concurrent calls (pooled connections)."""

    def __init__(
        self,
        *,
        pool_size: int,
        body_limit_bytes: int,
        address_check: AddressCheck | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._body_limit = body_limit_bytes
        self._clock = clock
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or netrc from the environment
        adapter = _AddressCheckingAdapter(address_check, pool_size)
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
    ) -> HttpResult:
        started = self._clock()

        def elapsed() -> float:
            return (self._clock() - started) * 1000.0

        try:
            # Prepared directly: the session's cookie/auth/environment merging is of no use here and
            # costs a noticeable share of the CPU per delivery.
            prepared = requests.Request(method, url, data=body, headers=dict(headers)).prepare()
            response = self.session.send(
                prepared, timeout=(connect_timeout, read_timeout), allow_redirects=False, stream=True
            )
        except UnsafeUrl as exc:
            return HttpResult(None, elapsed(), error_code=UNSAFE_ADDRESS, error=str(exc))
        except requests.exceptions.ConnectTimeout:
            return HttpResult(None, elapsed(), error_code=CONNECT_TIMEOUT, error="connect timed out")
        except requests.exceptions.ReadTimeout:
            return HttpResult(None, elapsed(), error_code=READ_TIMEOUT, error="read timed out")
        except requests.exceptions.ConnectionError as exc:
            return HttpResult(None, elapsed(), error_code=CONNECTION_ERROR, error=_short(exc))
        except (requests.exceptions.RequestException, ValueError) as exc:
            return HttpResult(None, elapsed(), error_code=INVALID_REQUEST, error=_short(exc))
        try:
            body_read, truncated = self._read_bounded(response)
        except requests.exceptions.RequestException as exc:
            # The status line arrived; a body cut short still tells us the answer.
            body_read, truncated = b"", True
            code = READ_TIMEOUT if isinstance(exc, requests.exceptions.ConnectionError) else None
            return HttpResult(
                response.status_code, elapsed(), body_read, truncated, _retry_headers(response), code
            )
        finally:
            response.close()
        return HttpResult(response.status_code, elapsed(), body_read, truncated, _retry_headers(response))

    def _read_bounded(self, response: requests.Response) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(chunk_size=8192):
            chunks.append(chunk)
            size += len(chunk)
            if size > self._body_limit:
                return b"".join(chunks)[: self._body_limit], True
        return b"".join(chunks), False

    def close(self) -> None:
        self.session.close()


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

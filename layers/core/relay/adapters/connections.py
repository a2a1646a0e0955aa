"""urllib3 connection classes for every outbound request (deliveries, ``relay targets check``, Genesys).

They add three things to urllib3's own connections:

- **the total deadline** (relay.adapters.deadline): a new connection's socket is watched from the
  moment it is connected (TLS handshake, request and response), a pooled connection's socket when it
  is reused; connecting itself waits at most min(connect timeout, time left);
- **the endpoint check before the TCP handshake**: the host name is resolved, *every* address is
  handed to ``endpoint_check(address, port)`` and only then is a checked address connected to, so
  a refused address never sees a SYN (nobody can use a delivery or a check to learn whether an
  internal port is open) and a DNS answer that changed since the URL was validated (rebinding) is
  judged on the addresses actually used. The host name still goes to TLS (SNI, certificate) and Host;
- **a response that knows whether its header block ended** (``headers_complete``): a peer that closes
  the connection after the status line leaves http.client with a response it cannot tell apart
  from a complete one without a body.

``pool_classes(check)`` gives the classes to install in a urllib3 ``PoolManager``
(``pool_classes_by_scheme``), before its first request (the Genesys client); relay.adapters.http_exchange
opens ``connection_classes(check)`` itself (deliveries).
"""

from __future__ import annotations

import http.client
import socket
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import BaseHTTPResponse
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from relay.adapters.deadline import Deadline, current_deadline, request_deadline
from relay.errors import RelayError

# (address, port) -> None, or raise (relay.errors.UnsafeUrl) to refuse the connection.
EndpointCheck = Callable[[str, int], None]
# Bodies up to this size are sent in the same write as the header block.
_COALESCE_BYTES = 256 * 1024


class DeadlineExceeded(RelayError, Urllib3Timeout):
    """The request's total deadline passed. Also a urllib3 timeout, so code that maps urllib3's
    exceptions (the Genesys client) treats it exactly like a connect or read timeout."""


def call_within_deadline[T](seconds: float, call: Callable[[], T]) -> T:
    """Run one request under a total deadline of ``seconds``; if the deadline passed, raise
    DeadlineExceeded whatever ``call`` raised or returned (a body cut short may still have parsed)."""
    with request_deadline(seconds) as deadline:
        answered = False
        try:
            result = call()
            answered = True
        finally:
            # Raised from here it replaces whatever ``call`` raised: the deadline is the cause.
            if deadline.fired or (not answered and deadline.exceeded):
                raise DeadlineExceeded(f"no complete answer within {seconds:g} s") from None
        return result


class _HeaderEndWatch:
    """The response's stream while http.client parses the status line and headers: notes whether the
    header block ended with its empty line or with the end of the stream."""

    def __init__(self, fp: Any) -> None:
        self._fp = fp
        self.cut_off = False

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._fp.readline(limit)
        if not line:
            self.cut_off = True
        return line

    def close(self) -> None:
        self._fp.close()


class FramedResponse(http.client.HTTPResponse):
    """http.client's response, plus ``headers_complete``."""

    headers_complete = True

    def begin(self) -> None:
        if self.headers is not None:  # http.client calls begin() once; keep it idempotent
            return
        fp = self.fp
        watch = _HeaderEndWatch(fp)
        self.fp = watch
        try:
            super().begin()
        finally:
            if self.fp is watch:
                self.fp = fp
        self.headers_complete = not watch.cut_off

    def _read_status(self) -> tuple[str, int, str]:
        """The final answer's status line. Interim answers (102 Processing, 103 Early Hints) and their
        headers are skipped, as RFC 9110 15.2 asks of every client: http.client itself skips only
        100 Continue, and would take a 103 for the answer (a delivery the receiver accepted would be
        dead-lettered as a permanent 1xx, one it refused would never be retried)."""
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 101 < status < 200:  # 100: http.client's own loop; 101: never asked for, final
                return version, status, reason
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]


def headers_complete(response: BaseHTTPResponse) -> bool:
    """False when the peer closed the connection before the end of the response's header block."""
    original = getattr(response, "_original_response", None)  # urllib3 keeps http.client's response
    return bool(getattr(original, "headers_complete", True))


def _connect_timeout(timeout: object, deadline: Deadline | None) -> float | None | object:
    if deadline is None:
        return timeout
    left = deadline.remaining()
    if left <= 0:
        raise TimeoutError("the request's deadline passed before connecting")
    return min(timeout, left) if isinstance(timeout, int | float) else left


def open_checked_socket(
    host: str,
    port: int,
    timeout: object,
    *,
    check: EndpointCheck | None,
    source_address: tuple[str, int] | None = None,
    socket_options: list[tuple[int, int, int | bytes]] | None = None,
) -> socket.socket:
    """urllib3's create_connection, with every address checked before the first connect and the
    socket watched by the calling thread's deadline (if any)."""
    host = host.strip("[]")
    try:
        host.encode("idna")
    except UnicodeError:
        raise LocationParseError(f"'{host}', label empty or too long") from None
    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    if check is not None:
        for info in infos:
            check(str(info[4][0]), port)
    deadline = current_deadline()
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            wait = _connect_timeout(timeout, deadline)
            if wait is not _DEFAULT_TIMEOUT:
                sock.settimeout(wait)  # type: ignore[arg-type]
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
        except OSError as exc:
            error = exc
            sock.close()
            continue
        if deadline is not None:
            deadline.watch(sock)
        return sock
    raise error or OSError("getaddrinfo returns an empty list")


class GuardedHTTPConnection(HTTPConnection):
    """urllib3's HTTPConnection with the deadline, the endpoint check and FramedResponse."""

    response_class = FramedResponse
    endpoint_check: ClassVar[EndpointCheck | None] = None
    _watched_by: Deadline | None = None

    def _new_conn(self) -> socket.socket:
        # urllib3's own _new_conn, with open_checked_socket instead of create_connection.
        check = type(self).endpoint_check
        try:
            sock = open_checked_socket(
                self._dns_host,
                self.port,
                self.timeout,
                check=check,
                source_address=self.source_address,
                socket_options=self.socket_options,
            )
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        sys.audit("http.client.connect", self, self.host, self.port)
        self._watched_by = current_deadline()
        return sock

    _hold_head = False
    _held_head: bytes | None = None

    def request(self, method: str, url: str, body: Any = None, *args: Any, **kwargs: Any) -> None:
        deadline = current_deadline()
        if deadline is not None and self.sock is not None and self._watched_by is not deadline:
            deadline.watch(self.sock)  # a pooled connection, reused by this request
            self._watched_by = deadline
        # A body in one piece goes out with the header block in one write: one system call and one
        # packet instead of two (urllib3 sends them apart), which counts at a thousand requests/s.
        self._hold_head = isinstance(body, bytes) and len(body) <= _COALESCE_BYTES
        try:
            super().request(method, url, body, *args, **kwargs)
        finally:
            self._hold_head = False
        if self._held_head is not None:  # no body chunk came after all
            head, self._held_head = self._held_head, None
            super().send(head)

    def send(self, data: Any) -> None:
        if self._hold_head and self._held_head is None:
            self._held_head = bytes(data)  # the header block (http.client sends it first, whole)
            return
        if self._held_head is not None:
            data, self._held_head = self._held_head + data, None
        super().send(data)


class GuardedHTTPSConnection(GuardedHTTPConnection, HTTPSConnection):
    """The same for https: the check and the deadline's watch come before the TLS handshake."""


def connection_classes(check: EndpointCheck | None) -> dict[str, type[GuardedHTTPConnection]]:
    """Connection classes (by scheme) that carry the deadline, FramedResponse and ``check`` (None: no
    endpoint check, e.g. for Genesys Cloud, whose host is configuration, not input)."""
    # A staticmethod: a plain function stored on the class would be bound to each connection.
    attributes: dict[str, Any] = {"endpoint_check": staticmethod(check) if check is not None else None}
    return {
        "http": type("GuardedHTTPConnection", (GuardedHTTPConnection,), attributes),
        "https": type("GuardedHTTPSConnection", (GuardedHTTPSConnection,), attributes),
    }


def pool_classes(check: EndpointCheck | None) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes whose connections are ``connection_classes(check)``."""
    connections = connection_classes(check)
    http, https = connections["http"], connections["https"]
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
    }

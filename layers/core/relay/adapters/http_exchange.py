"""One HTTP/1.1 request and its answer on a kept connection: what a delivery needs, and nothing more.

Why not http.client's request and response (under urllib3's pool): http.client writes each header
through ``putheader`` (checks, encoding and a list append per header), parses the answer's headers
with the email package's feedparser, and urllib3 copies them into a dict and wraps the response once
more. For a delivery at 0 ms that was about 0.3 ms of CPU of the dispatcher's 0.8-1.5 ms (cProfile and
bench/dispatcher_bench.py, issue 11). A delivery needs the request in one write, the status, the
headers that frame the body (Content-Length, Transfer-Encoding, Connection), two more (Retry-After,
Content-Encoding), and a body read up to a bound.

What stays urllib3's: opening connections. A route's connections are relay.adapters.connections'
GuardedHTTP(S)Connection, so the endpoint check before the TCP handshake, the total deadline's watch
and TLS (chain and host name verified, a client certificate's own context) are the same code as for
the Genesys client, which keeps urllib3's whole path.

The answer is read within http.client's limits (a status or header line up to 64 KiB, at most 100
header lines), interim 1xx answers other than 101 are skipped (RFC 9110 15.2), and a connection goes
back to its route only when its answer was read to the end, framed by length or chunks.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from urllib3.connection import HTTPConnection
from urllib3.exceptions import SSLError
from urllib3.util.wait import wait_for_read

from relay import __version__
from relay.adapters.deadline import Deadline
from relay.models.http import INCOMPLETE_RESPONSE, READ_TIMEOUT

MAX_LINE_BYTES = 65536  # http.client's _MAXLINE
MAX_HEADER_LINES = 100  # http.client's _MAXHEADERS
# Sent when the caller names none (token requests, reachability checks): deliveries name their own.
DEFAULT_USER_AGENT = f"genesys-relay/{__version__}"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_NOT_IN_VALUE = re.compile(r"[\r\n\x00]")
_NOT_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")
_DIGITS = re.compile("[0-9]+")  # str.isdigit() also takes "²", which int() refuses
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # an empty body is still announced: Content-Length: 0
_RECV_BYTES = 65536
# The fields that frame the body or end the connection: lists, all of whose lines count (RFC 9110 5.3),
# never only the first.
_LISTS = frozenset({"content-length", "transfer-encoding", "connection"})


class NoAnswer(Exception):
    """No answer arrived, or none the relay can read. The message names why, never the peer's bytes."""


class ReadTimedOut(NoAnswer):
    """No byte for the read timeout, before the answer's headers ended."""


class ClosedUnanswered(NoAnswer):
    """The connection closed (or was reset) before any byte of an answer."""


@dataclass(slots=True)
class Answer:
    """A status that arrived, and what came of the rest.

    ``body``: as it came (content coding not undone), at most ``limit + 1`` bytes: more than the limit
    means there was more (``truncated``). ``error_code``/``error``: why the answer is not complete
    (cut off in its headers or body, or a read timeout in its body), else None."""

    status: int
    headers: dict[str, str]  # lower-case names, the first value of each (_LISTS: all, one list)
    body: bytes = b""
    truncated: bool = False
    error_code: str | None = None
    error: str | None = None
    reusable: bool = field(default=False, repr=False)


class _Reader:
    """Lines and byte counts from a socket, with the bytes read past them kept for the next call."""

    __slots__ = ("_sock", "_buffer")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""

    @property
    def holds_bytes(self) -> bool:
        return bool(self._buffer)

    def _fill(self) -> bool:
        data: bytes = self._sock.recv(_RECV_BYTES)
        self._buffer += data
        return bool(data)

    def readline(self, limit: int) -> bytes:
        """A line with its end; at most ``limit`` bytes (then without its end); b"" at the stream's end."""
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0:
                line, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
                return line
            if len(self._buffer) >= limit or not self._fill():
                line, self._buffer = self._buffer[:limit], self._buffer[limit:]
                return line

    def read(self, size: int) -> bytes:
        """``size`` bytes, or fewer when the stream ends first."""
        while len(self._buffer) < size and self._fill():
            pass
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class _Connection:
    __slots__ = ("http", "reader")

    def __init__(self, http: HTTPConnection) -> None:
        self.http = http
        self.reader = _Reader(http.sock)

    def close(self) -> None:
        self.http.close()


class Route:
    """The kept connections to one URL's origin (made with one TLS context), and its request target."""

    def __init__(
        self,
        connection_class: type[HTTPConnection],
        host: str,
        port: int,
        *,
        default_port: int,
        request_target: str,
        keep: int,
        options: Mapping[str, Any],
    ) -> None:
        if not request_target.isascii() or _NOT_IN_TARGET.search(request_target):
            raise ValueError("URL can't contain control characters, spaces or non-ASCII characters")
        self._connection_class = connection_class
        self._host, self._port = host, port
        self._options = dict(options)
        self._keep = keep
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        name = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self._host_header = name if port == default_port else f"{name}:{port}"
        self._target = request_target

    def exchange(
        self,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
        deadline: Deadline,
        body_limit: int,
    ) -> Answer:
        """Send one request and read its answer. Raises NoAnswer, ValueError (a request HTTP cannot
        carry: nothing was sent), urllib3's connection errors and OSError when no answer arrived."""
        request = self._request_bytes(method, body, headers)
        connection, kept = self._connection(connect_timeout, deadline)
        try:
            return self._on(connection, request, method, read_timeout, deadline, body_limit)
        except ClosedUnanswered:
            # A kept connection the peer closed as the request went out (its idle timeout, a restart):
            # once more on a new one, as browsers do, rather than spend an attempt and a breaker failure.
            # The peer may have read the request: the resend is an at-least-once repeat, same webhook-id.
            if not kept or deadline.exceeded:
                raise
        connection = self._connect(connect_timeout)
        return self._on(connection, request, method, read_timeout, deadline, body_limit)

    def _on(
        self,
        connection: _Connection,
        request: bytes,
        method: str,
        read_timeout: float,
        deadline: Deadline,
        body_limit: int,
    ) -> Answer:
        connection.http.sock.settimeout(read_timeout)
        answer: Answer | None = None
        try:
            answer = _exchange(connection.reader, connection.http.sock, request, method, body_limit)
        finally:
            # Unwatched before it is kept: this request's deadline passing later must never shut down
            # a connection another request has taken from the route meanwhile.
            if answer is not None and answer.reusable and deadline.unwatch(connection.http.sock):
                connection.http._watched_by = None  # type: ignore[attr-defined]
                self._put_back(connection)
            else:
                connection.close()
        return answer

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _request_bytes(self, method: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        if not _TOKEN.fullmatch(method):
            raise ValueError("the method is not an HTTP token")
        lines = [f"{method} {self._target} HTTP/1.1"]
        names = {name.lower() for name in headers}
        if "host" not in names:  # a caller's own framing and Host win, as they did with urllib3
            lines.append(f"Host: {self._host_header}")
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")
        if (body or method in _WITH_BODY) and not names & {"content-length", "transfer-encoding"}:
            lines.append(f"Content-Length: {len(body)}")
        if "user-agent" not in names:
            lines.append(f"User-Agent: {DEFAULT_USER_AGENT}")
        for name, value in headers.items():
            # Never quoted in the error: a header value may be a credential.
            if not _TOKEN.fullmatch(name):
                raise ValueError("a header name is not an HTTP token")
            if _NOT_IN_VALUE.search(value):
                raise ValueError(f"the value of header {name} holds a line break or NUL")
            lines.append(f"{name}: {value}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    def _connection(self, connect_timeout: float, deadline: Deadline) -> tuple[_Connection, bool]:
        """A kept connection still open (watched by this request's deadline), or a new one; and
        whether it was kept."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._connect(connect_timeout), False
            sock = connection.http.sock
            if sock is None or _stale(connection):
                connection.close()
                continue
            if getattr(connection.http, "_watched_by", None) is not deadline:
                deadline.watch(sock)
                connection.http._watched_by = deadline  # type: ignore[attr-defined]
            return connection, True

    def _connect(self, connect_timeout: float) -> _Connection:
        http = self._connection_class(self._host, self._port, timeout=connect_timeout, **self._options)
        try:
            http.connect()  # the endpoint check, the deadline's watch, then TLS
        except (ssl.SSLError, ssl.CertificateError) as exc:
            http.close()
            raise SSLError(exc) from exc
        except TimeoutError:  # the TLS handshake's reads (connecting has its own error)
            http.close()
            raise ReadTimedOut("read timed out") from None
        except BaseException:
            http.close()
            raise
        return _Connection(http)

    def _put_back(self, connection: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._keep:
                self._idle.append(connection)
                return
        connection.close()


def _stale(connection: _Connection) -> bool:
    """Bytes arrived on a kept connection while it was idle: the peer closed it, or sent what no
    request asked for (kept in our reader, in TLS's decrypted buffer, or still in the socket)."""
    sock = connection.http.sock
    pending = getattr(sock, "pending", None)  # an SSLSocket's
    return connection.reader.holds_bytes or bool(pending and pending()) or wait_for_read(sock, timeout=0.0)


def _send(sock: Any, request: bytes) -> bool:
    """Whether the whole request went out. A peer may answer before it has read the request's body
    and close (a 401 on the headers, a 413 on the length: RFC 9112 9.6), which fails the write with
    its answer already waiting to be read: urllib3 read it, and so do we (the connection is not kept)."""
    try:
        sock.sendall(request)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def _exchange(reader: _Reader, sock: Any, request: bytes, method: str, limit: int) -> Answer:
    try:
        sent = _send(sock, request)
        status, version, headers = _read_head(reader)
    except ssl.SSLError as exc:  # a TLS alert (a client certificate refused) arrives on the first read
        raise SSLError(exc) from exc
    except TimeoutError:
        raise ReadTimedOut("read timed out") from None
    except OSError as exc:
        raise ClosedUnanswered(f"connection lost before the answer ({type(exc).__name__})") from None
    if headers is None:
        why = "connection closed inside the response headers"
        return Answer(status, {}, error_code=INCOMPLETE_RESPONSE, error=why)
    answer = Answer(status, headers)
    try:
        _read_body(reader, answer, method, limit)
    except TimeoutError:
        answer.error_code, answer.error = READ_TIMEOUT, "read timed out in the response body"
    except (OSError, _CutOff) as exc:  # the peer closed before the body's end, or garbled its framing
        why = exc.args[0] if isinstance(exc, _CutOff) else type(exc).__name__
        answer.error_code, answer.error = INCOMPLETE_RESPONSE, f"response body cut off ({why})"
    if answer.error_code is not None:
        answer.body, answer.truncated, answer.reusable = b"", True, False
        return answer
    answer.reusable = answer.reusable and sent and not answer.truncated and _keeps_alive(version, headers)
    return answer


class _CutOff(Exception):
    """The body ended before its length or its last chunk, or its chunk framing is not HTTP."""


def _read_head(reader: _Reader) -> tuple[int, int, dict[str, str] | None]:
    """The final answer's status, HTTP minor version and headers (None: the connection closed inside
    the header block, after its status line)."""
    while True:
        status, version = _read_status(reader)
        headers = _read_headers(reader)
        if not (status == 100 or 101 < status < 200) or headers is None:
            return status, version, headers


def _read_status(reader: _Reader) -> tuple[int, int]:
    line = reader.readline(MAX_LINE_BYTES + 1)
    if not line:
        raise ClosedUnanswered("connection closed before an answer")
    if len(line) > MAX_LINE_BYTES:
        raise NoAnswer(_past_limits(f"got more than {MAX_LINE_BYTES} bytes when reading status line"))
    parts = line.decode("iso-8859-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise NoAnswer("answer is not HTTP: no status line")
    version, code = parts[0], parts[1]
    if len(code) != 3 or not _DIGITS.fullmatch(code) or not 100 <= int(code) <= 999:
        raise NoAnswer("answer is not HTTP: its status is not a number from 100 to 999")
    if version == "HTTP/1.0":
        return int(code), 0
    if not version.startswith("HTTP/1."):
        raise NoAnswer("answer is not HTTP/1.x")
    return int(code), 1


def _read_headers(reader: _Reader) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    last = ""
    for _ in range(MAX_HEADER_LINES):  # the empty line that ends the block counts, as for http.client
        line = reader.readline(MAX_LINE_BYTES + 1)
        if len(line) > MAX_LINE_BYTES:
            raise NoAnswer(_past_limits(f"got more than {MAX_LINE_BYTES} bytes when reading header line"))
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return headers
        text = line.decode("iso-8859-1")
        if text[0] in " \t" and last:  # an obsolete line folding: more of the last value
            headers[last] = f"{headers[last]} {text.strip()}".strip()
            continue
        name, colon, value = text.partition(":")
        if not colon:
            continue  # not a header field: http.client keeps it out of the headers too
        last, value = name.strip().lower(), value.strip()
        if last in _LISTS and last in headers:
            headers[last] = f"{headers[last]}, {value}"
        else:
            headers.setdefault(last, value)
    raise NoAnswer(_past_limits(f"got more than {MAX_HEADER_LINES} headers"))


def _past_limits(why: str) -> str:
    return f"answer not read, past http.client's limits: {why}"


def _read_body(reader: _Reader, answer: Answer, method: str, limit: int) -> None:
    """Fill ``answer.body`` (up to ``limit + 1`` bytes) and say whether the connection can be kept."""
    status, headers = answer.status, answer.headers
    if method == "HEAD" or status < 200 or status in (204, 304):
        answer.reusable = status >= 200  # after a final 101 the connection speaks another protocol
        return
    codings = headers.get("transfer-encoding")
    if codings is not None and codings.rsplit(",", 1)[-1].strip().lower() == "chunked":
        _read_chunked(reader, answer, limit)
        return
    length = _content_length(headers.get("content-length"))
    if length is None:  # the body ends when the connection does
        answer.body = reader.read(limit + 1)
        answer.truncated = len(answer.body) > limit
        return
    answer.body = reader.read(min(length, limit + 1))
    if len(answer.body) < min(length, limit + 1):
        raise _CutOff("IncompleteRead")
    answer.truncated = length > limit
    # A Transfer-Encoding other than chunked beside a Content-Length (older servers send "identity"):
    # read by its length, as http.client did (RFC 9112 6.3 would wait for a close that a keep-alive
    # server never makes: a delivered event taken for a read timeout), but the connection is not kept,
    # its framing being in doubt.
    answer.reusable = codings is None


def _content_length(value: str | None) -> int | None:
    """The length a Content-Length gives (a list of one repeated value included), or None. Raises
    NoAnswer when it gives different lengths: RFC 9112 6.3 has the answer discarded, and its
    connection closed (urllib3 refused it too)."""
    if value is None:
        return None
    values = {part.strip() for part in value.split(",")}
    if len(values) != 1:
        raise NoAnswer("answer's framing is invalid: its Content-Length values differ")
    (single,) = values
    return int(single) if _DIGITS.fullmatch(single) else None


def _read_chunked(reader: _Reader, answer: Answer, limit: int) -> None:
    kept: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(MAX_LINE_BYTES + 1)
        if not line.endswith(b"\n"):
            raise _CutOff("IncompleteRead")
        try:
            chunk_size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _CutOff("a chunk size that is not hex") from None
        if chunk_size < 0:
            raise _CutOff("a chunk size that is not hex")
        if chunk_size == 0:
            break
        wanted = min(chunk_size, limit + 1 - size)
        data = reader.read(wanted)
        if len(data) < wanted:
            raise _CutOff("IncompleteRead")
        kept.append(data)
        size += len(data)
        if size > limit:  # enough for the audit: the rest is not waited for, nor the connection kept
            answer.body, answer.truncated = b"".join(kept), True
            return
        if reader.read(2) != b"\r\n":
            raise _CutOff("IncompleteRead")
    answer.body = b"".join(kept)
    for _ in range(MAX_HEADER_LINES + 1):  # the trailer section, up to its empty line
        line = reader.readline(MAX_LINE_BYTES + 1)
        if not line:  # closed after the last chunk: complete (as for http.client), but not kept
            return
        if line in (b"\r\n", b"\n"):
            answer.reusable = True
            return
        if not line.endswith(b"\n"):
            raise _CutOff("IncompleteRead")
    raise _CutOff("a trailer section past http.client's limits")


def _keeps_alive(version: int, headers: Mapping[str, str]) -> bool:
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if "close" in tokens:
        return False
    return version == 1 or "keep-alive" in tokens

"""A local stand-in for the template's HTTP API: requests in, API Gateway payload v2 events out.

Routes come from the functions' ``HttpApi`` events in template.yaml (``Path`` with ``{params}``,
``Method``). A request becomes the event API Gateway would send (payload format 2.0), the handler's
answer becomes the HTTP response the way API Gateway reads it, and the gateway's own answers are
API Gateway's JSON ``{"message": ...}``: 404 for no route (any method, any path), 413 past the 10 MB
payload quota, 414/431 past the 10,240-byte quota on the request line and header values, 400 for a
request that is not well-formed HTTP/1.1 (bad framing, bad request line, bad header line), 408 for a
client that stops sending mid-request, and 500 when the function fails. Client input never gets a
5xx, never a traceback in the log, and a request the gateway refuses never reaches a function.

The stage name is part of the URL and of ``rawPath`` (as on a named stage in AWS), so the base URL is
``http://127.0.0.1:<port>/<stage>`` like the template's ``ApiUrl`` output. Local-only endpoints (the
EventBridge ``PutEvents`` stand-in) are served under the same base URL.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote

from relay.errors import LocalStackError
from relay.local.lambda_runtime import FunctionSettings, Handler, LocalFunction
from relay.local.log import log
from relay.local.loopback import LoopbackServer
from relay.local.template import Template

# API Gateway HTTP API quotas ("Quotas for configuring and running an HTTP API in API Gateway").
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # "Payload size: 10 MB"
MAX_HEAD_BYTES = 10_240  # "Total combined size of request line and header values: 10240 bytes"
# How long a client may pause mid-request, how long one request may take to arrive in full, and how
# long an idle keep-alive connection stays open (local choices; API Gateway does not document its own).
CLIENT_IDLE_SECONDS = 10.0
REQUEST_SECONDS = 30.0
KEEP_ALIVE_SECONDS = 60.0
_NOT_FOUND = {"message": "Not Found"}
_FUNCTION_ERROR = {"message": "Internal Server Error"}
# Bodies API Gateway passes through as text; every other content type reaches the function base64-encoded.
_TEXT_TYPES = re.compile(
    r"^(text/.*|application/(json|javascript|xml|.*\+json|.*\+xml))$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Route:
    """One ``HttpApi`` event of a template function."""

    method: str  # upper-case, or ANY
    path: str  # as written in the template, e.g. /webhooks/{integrationId}
    function: LocalFunction
    pattern: re.Pattern[str]

    @property
    def route_key(self) -> str:
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"

    @property
    def specificity(self) -> tuple[int, int, int]:
        # API Gateway prefers literal segments over {params}, and {params} over {greedy+}.
        greedy = int("+}" in self.path or self.path == "$default")
        params = self.path.count("{")
        return (greedy, params, -len(self.path))

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        found = self.pattern.fullmatch(path)
        return None if found is None else {k: unquote(v) for k, v in found.groupdict().items()}


def _path_pattern(path: str) -> re.Pattern[str]:
    if path == "$default":
        return re.compile(r"(?P<proxy>/.*)")
    parts: list[str] = []
    for piece in re.split(r"(\{[^}]+\})", path):
        if piece.startswith("{") and piece.endswith("+}"):
            parts.append(f"(?P<{piece[1:-2]}>.+)")
        elif piece.startswith("{"):
            parts.append(f"(?P<{piece[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def routes_from_template(
    template: Template,
    handlers: Mapping[str, Handler] | None = None,
    settings: FunctionSettings | None = None,
) -> tuple[str, list[Route]]:
    """The HTTP API's stage name and its routes, read from the functions' ``HttpApi`` events.

    ``handlers`` replaces a function's own handler by logical id (tests route to their own function);
    ``settings`` gives a function its own configuration (see relay.local.lambda_runtime).
    """
    stage = "$default"
    routes: list[Route] = []
    for logical_id in template.resources_of_type("AWS::Serverless::Function"):
        events = template.properties(logical_id).get("Events", {})
        http_events = [e for e in events.values() if e.get("Type") == "HttpApi"]
        if not http_events:
            continue
        function = LocalFunction.from_template(
            template, logical_id, (handlers or {}).get(logical_id), settings=(settings or {}).get(logical_id)
        )
        for event in http_events:
            props = event.get("Properties", {})
            api_ref = props.get("ApiId", {}).get("Ref") if isinstance(props.get("ApiId"), dict) else None
            if api_ref in template.resources:
                stage = str(template.resolve(template.properties(api_ref).get("StageName", stage)))
            path = str(props.get("Path", "$default"))
            method = str(props.get("Method", "ANY")).upper()
            routes.append(Route(method, path, function, _path_pattern(path)))
    routes.sort(key=lambda r: r.specificity)
    return stage, routes


@dataclass
class _Request:
    method: str
    target: str  # origin-form: /path?query
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str


def split_target(target: str) -> tuple[str, str]:
    """Path and query string of an origin-form request target (``//x`` stays a path, unlike urlsplit)."""
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def build_event(
    request: _Request, route: Route, path_parameters: dict[str, str], stage: str, api_id: str, domain: str
) -> dict[str, Any]:
    """The API Gateway HTTP API (payload format 2.0) event for one request."""
    path, query_string = split_target(request.target)
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    # The headers API Gateway adds on the way in.
    hops = [h for h in (headers.get("x-forwarded-for"), request.source_ip) if h]
    headers["x-forwarded-for"] = ", ".join(hops)
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-forwarded-port", domain.rpartition(":")[2] if ":" in domain else "80")
    headers["x-amzn-trace-id"] = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    query: dict[str, str] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    now = time.time()
    request_id = base64.b32encode(uuid.uuid4().bytes).decode()[:14] + "="
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": path,
        "rawQueryString": query_string,
        "headers": headers,
        "requestContext": {
            "accountId": route.function.account_id,
            "apiId": api_id,
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": request.method,
                "path": path,
                "protocol": request.protocol,
                "sourceIp": request.source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route.route_key,
            "stage": stage,
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if request.body:
        content_type = (headers.get("content-type") or "").split(";")[0].strip()
        text = _as_text(request.body) if _TEXT_TYPES.match(content_type) else None
        if text is None:
            event["body"] = base64.b64encode(request.body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
    return event


def _as_text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


# A local-only endpoint (not a template route): the raw request body in, the HTTP answer out.
LocalEndpoint = Callable[[bytes], HttpResponse]

_UNSAFE_HEADER_TEXT = re.compile(r"[\r\n\x00]")


def to_http_response(result: Any) -> HttpResponse:
    """Read a function's result the way API Gateway reads payload format 2.0 responses."""
    if isinstance(result, dict) and "statusCode" in result:
        status = result["statusCode"]
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("statusCode must be an integer HTTP status")
        headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
        if any(_UNSAFE_HEADER_TEXT.search(name + value) for name, value in headers):
            raise ValueError("a response header contains a line break")
        raw = result.get("body")
        body_text = "" if raw is None else raw if isinstance(raw, str) else json.dumps(raw)
        body = base64.b64decode(body_text) if result.get("isBase64Encoded") else body_text.encode()
        return HttpResponse(status, headers, body)
    # No statusCode: API Gateway assumes 200 and JSON; a string is the body as it is.
    body = result.encode() if isinstance(result, str) else json.dumps(result).encode()
    return HttpResponse(200, [("Content-Type", "application/json")], body)


def json_response(status: int, doc: Any) -> HttpResponse:
    return HttpResponse(status, [("Content-Type", "application/json")], json.dumps(doc).encode())


# API Gateway words these the RFC 7231 way; Python 3.13 renamed them (RFC 9110: "URI Too Long",
# "Content Too Large", ...), so its phrase table cannot stand in for API Gateway's.
_GATEWAY_PHRASES = {
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    416: "Requested Range Not Satisfiable",
    422: "Unprocessable Entity",
}


def gateway_error(status: int, message: str | None = None) -> HttpResponse:
    """One of API Gateway's own answers: ``{"message": <the status phrase>}`` unless told otherwise."""
    phrase = _GATEWAY_PHRASES.get(status) or HTTPStatus(status).phrase
    return json_response(status, {"message": message or phrase})


def payload_too_large(limit: int) -> HttpResponse:
    # Worded like the intake's own 413 ("the body is larger than N bytes"), so a client sees one message
    # shape whichever limit refused it; only the status is the contract (docs/local-stack.md).
    return gateway_error(413, f"the body is larger than {limit} bytes")


class ApiAdapter:
    """The local HTTP API on 127.0.0.1; ``start()`` returns the base URL including the stage.

    ``endpoints``: local-only POST endpoints by path under the stage (e.g. ``/eventbridge/events``);
    they may not shadow a template route. The timeouts bound how long a client can hold a connection
    without completing a request (see the module constants).
    """

    def __init__(
        self,
        template: Template,
        port: int = 0,
        *,
        handlers: Mapping[str, Handler] | None = None,
        settings: FunctionSettings | None = None,
        endpoints: Mapping[str, LocalEndpoint] | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        client_idle_seconds: float = CLIENT_IDLE_SECONDS,
        request_seconds: float = REQUEST_SECONDS,
        keep_alive_seconds: float = KEEP_ALIVE_SECONDS,
    ) -> None:
        self.stage, self.routes = routes_from_template(template, handlers, settings)
        self.endpoints = dict(endpoints or {})
        for path in self.endpoints:
            shadowed = [r.route_key for r in self.routes if r.match("POST", path) is not None]
            if shadowed:
                raise ValueError(f"local endpoint {path} would shadow the template route {shadowed[0]}")
        self.port = port
        self.max_payload_bytes = max_payload_bytes
        self.client_idle_seconds = client_idle_seconds
        self.request_seconds = request_seconds
        self.keep_alive_seconds = keep_alive_seconds
        self.api_id = "local"
        self.base_url = ""
        self._http: LoopbackServer | None = None
        # Open client connections and those in the middle of a request: stop() closes the idle ones
        # (keep-alive clients) and lets the busy ones finish their request.
        self._connections_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()
        self._stopping = False

    @property
    def stage_prefix(self) -> str:
        return "" if self.stage == "$default" else f"/{self.stage}"

    def start(self) -> str:
        handler = type("_BoundApiHandler", (_ApiHandler,), {"adapter": self})
        # stop() waits for requests in flight
        self._http = LoopbackServer(handler, name="api-adapter", port=self.port, wait_for_requests=True)
        self.port = self._http.start()
        self.base_url = f"http://127.0.0.1:{self.port}{self.stage_prefix}"
        return self.base_url

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop(before_close=self._close_idle_connections)
            self._http = None

    def _close_idle_connections(self) -> None:
        with self._connections_lock:
            self._stopping = True
            for idle in self._connections - self._busy:
                _shut_read(idle)

    def __enter__(self) -> ApiAdapter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle(self, request: _Request, domain: str) -> HttpResponse:
        path, _ = split_target(request.target)
        prefix = self.stage_prefix
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return gateway_error(404)
        route_path = path[len(prefix) :] or "/"
        endpoint = self.endpoints.get(route_path)
        if endpoint is not None and request.method == "POST":
            return endpoint(request.body)
        for route in self.routes:
            params = route.match(request.method, route_path)
            if params is None:
                continue
            event = build_event(request, route, params, self.stage, self.api_id, domain)
            invocation = route.function.invoke(event)
            if invocation.error is not None:
                return json_response(500, _FUNCTION_ERROR)
            try:
                return to_http_response(invocation.result)
            except (ValueError, TypeError, AttributeError):
                log.error("%s returned a malformed response", route.function.spec.logical_id)
                return json_response(500, _FUNCTION_ERROR)
        return json_response(404, _NOT_FOUND)


def _shut_read(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RD)  # the handler's next read returns EOF and the thread ends
    except OSError:
        pass  # already closed by the client


# --- reading requests off the wire -----------------------------------------------------------------
# http.server's own parsing is too lenient for a gateway (a header line without a colon ends the headers,
# a request line without a version is HTTP/0.9, Content-Length is trusted as int()) and answers in HTML;
# requests are read here instead, strictly, with every wait bounded.

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: methods and header names
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_DIGITS = re.compile(r"[0-9]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")
_RAW_HEAD_LIMIT = 64 * 1024  # header names and separators count too: bounds what is read at all
_CHUNK_LINE_LIMIT = 4096
_LINGER_SECONDS = 2.0


class _Refusal(LocalStackError):
    """The gateway answers this request itself and closes the connection; no function runs."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


class _Disconnect(LocalStackError):
    """Nothing to answer: the client closed, or idled out between requests."""


class _ClientReader:
    """Buffered reads of one client connection, each wait bounded.

    Between requests the client may be idle ``keep_alive`` seconds; once a request's first byte has
    arrived, it may pause at most ``idle`` seconds at a time and must be complete within ``total``.
    """

    def __init__(self, sock: socket.socket, *, idle: float, total: float, keep_alive: float) -> None:
        self._sock = sock
        self._idle = idle
        self._total = total
        self._keep_alive = keep_alive
        self._buffer = bytearray()
        self._deadline: float | None = None

    def await_request(self) -> None:
        """Wait for the next request's first byte; raises _Disconnect if none comes."""
        self._deadline = None
        if not self._buffer and not self._fill():
            raise _Disconnect
        self._deadline = time.monotonic() + self._total

    def readline(self, limit: int, too_long: int) -> bytes:
        """One line with its terminator; a line over ``limit`` bytes is refused with status ``too_long``."""
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) >= limit:
                raise _Refusal(gateway_error(too_long))
            if not self._fill():
                raise _Refusal(gateway_error(400))  # the client stopped sending mid-request

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise _Refusal(gateway_error(400))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _fill(self) -> bool:
        """Receive more bytes; False at end of stream."""
        if self._deadline is None:
            timeout = self._keep_alive
        else:
            timeout = min(self._idle, self._deadline - time.monotonic())
            if timeout <= 0:
                raise _Refusal(gateway_error(408))
        self._sock.settimeout(timeout)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            if self._deadline is None:
                raise _Disconnect from None
            raise _Refusal(gateway_error(408)) from None
        except OSError:
            raise _Disconnect from None
        self._buffer += chunk
        return bool(chunk)


@dataclass(frozen=True)
class _Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for v in self.values("connection") for t in v.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def expects_continue(self) -> bool:
        return self.version == "HTTP/1.1" and [v.lower() for v in self.values("expect")] == ["100-continue"]


def _read_head(reader: _ClientReader) -> _Head:
    """The request line and headers, refused (400/414/431) unless well-formed and within the quota."""
    request_line = reader.readline(MAX_HEAD_BYTES + 2, too_long=414).rstrip(b"\r\n").decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _Refusal(gateway_error(400))
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not target.startswith("/") or version not in _VERSIONS:
        raise _Refusal(gateway_error(400))
    budget = MAX_HEAD_BYTES - len(request_line)
    headers: list[tuple[str, str]] = []
    for line in _field_lines(reader, _RAW_HEAD_LIMIT):
        name, colon, value = line.partition(":")
        value = value.strip(" \t")
        # No colon, a space before it, or a folded continuation line: not a header line.
        if not colon or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise _Refusal(gateway_error(400))
        budget -= len(value)
        if budget < 0:
            raise _Refusal(gateway_error(431))
        headers.append((name, value))
    return _Head(method, target, version, headers)


def _field_lines(reader: _ClientReader, raw_limit: int) -> Iterator[str]:
    """The header (or trailer) lines up to the blank line that ends them; 431 past ``raw_limit`` bytes."""
    left = raw_limit
    while True:
        line = reader.readline(left, too_long=431)
        left -= len(line)
        if line in (b"\r\n", b"\n"):
            return
        yield line.rstrip(b"\r\n").decode("latin-1")


def _body_length(head: _Head, limit: int) -> int | None:
    """The Content-Length (0 if none), or None for a chunked body; refused when ambiguous or too large."""
    transfer_encodings = head.values("transfer-encoding")
    lengths = {part.strip() for value in head.values("content-length") for part in value.split(",")}
    if transfer_encodings:
        codings = [c.strip().lower() for value in transfer_encodings for c in value.split(",")]
        # Both framings at once is how requests are smuggled past a proxy: refused, as is any coding
        # the gateway would have to undo.
        if lengths or codings != ["chunked"] or head.version != "HTTP/1.1":
            raise _Refusal(gateway_error(400))
        return None
    if not lengths:
        return 0
    length_text = lengths.pop()
    if lengths or not _DIGITS.fullmatch(length_text):  # several different lengths, or not 1*DIGIT
        raise _Refusal(gateway_error(400))
    # Compare as text first: int() of thousands of digits is refused by Python itself.
    if len(length_text.lstrip("0")) > len(str(limit)) or int(length_text) > limit:
        raise _Refusal(payload_too_large(limit))
    return int(length_text)


def _read_chunked(reader: _ClientReader, limit: int) -> bytes:
    body = bytearray()
    while True:
        size_text = reader.readline(_CHUNK_LINE_LIMIT, too_long=400).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise _Refusal(gateway_error(400))
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise _Refusal(payload_too_large(limit))
        body += reader.read(size)
        terminator = reader.read(1)  # each chunk's data ends with CRLF (a bare LF is tolerated)
        if terminator == b"\r":
            terminator = reader.read(1)
        if terminator != b"\n":
            raise _Refusal(gateway_error(400))
    for _trailer in _field_lines(reader, MAX_HEAD_BYTES):
        pass  # trailers are read past, not passed on (API Gateway's event has no place for them)
    return bytes(body)


class _ApiHandler(BaseHTTPRequestHandler):
    adapter: ApiAdapter
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between header and body writes
    server_version = "LocalHttpApi/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("api %s", format % args)

    def setup(self) -> None:
        super().setup()
        adapter = self.adapter
        self.reader = _ClientReader(
            self.connection,
            idle=adapter.client_idle_seconds,
            total=adapter.request_seconds,
            keep_alive=adapter.keep_alive_seconds,
        )
        with adapter._connections_lock:
            adapter._connections.add(self.connection)

    def finish(self) -> None:
        with self.adapter._connections_lock:
            self.adapter._connections.discard(self.connection)
        super().finish()

    def handle_one_request(self) -> None:
        """Serve one request; every way it can go wrong ends in an answer or a quiet close."""
        self.close_connection = True
        with self.adapter._connections_lock:
            if self.adapter._stopping:
                return
        try:
            self.reader.await_request()
        except _Disconnect:
            return
        with self.adapter._connections_lock:
            self.adapter._busy.add(self.connection)
        try:
            self._serve_one()
        except _Refusal as refusal:
            log.info("api refused a request: %s", refusal.response.status)
            self._send(refusal.response, close=True)
            self._drain_and_close()
        except _Disconnect:
            log.debug("api client went away mid-request")
        except Exception:  # a fault in the adapter itself, never client input: API Gateway's 500
            log.exception("the local API failed")
            self._send(json_response(500, _FUNCTION_ERROR), close=True)
        finally:
            with self.adapter._connections_lock:
                self.adapter._busy.discard(self.connection)

    def _serve_one(self) -> None:
        head = _read_head(self.reader)
        limit = self.adapter.max_payload_bytes
        length = _body_length(head, limit)
        if head.expects_continue and length != 0:
            self._send_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = _read_chunked(self.reader, limit) if length is None else self.reader.read(length)
        request = _Request(
            method=head.method,
            target=head.target,
            headers=head.headers,
            body=body,
            source_ip=self.client_address[0],
            protocol=head.version,
        )
        host = next(iter(head.values("host")), "")
        response = self.adapter.handle(request, host or f"127.0.0.1:{self.adapter.port}")
        self.close_connection = not head.keep_alive
        self._send(response, close=self.close_connection, head_only=head.method == "HEAD")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors, answered as API Gateway would: JSON, and never a 5xx for a request.

        The adapter parses requests itself, so this is only a safety net for http.server code paths.
        """
        status = 404 if code == HTTPStatus.NOT_IMPLEMENTED else 400 if code >= 500 else code
        self._send(gateway_error(status), close=True)

    def _send(self, response: HttpResponse, *, close: bool, head_only: bool = False) -> None:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {response.status} {phrase}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Length: {len(response.body)}",
            f"apigw-requestid: {uuid.uuid4().hex[:16]}",
        ]
        framing = {"content-length", "date", "connection", "transfer-encoding"}
        lines += [f"{name}: {value}" for name, value in response.headers if name.lower() not in framing]
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
        self._send_raw(head if head_only else head + response.body)

    def _send_raw(self, data: bytes) -> None:
        try:
            self.connection.sendall(data)
        except OSError:
            self.close_connection = True  # the client is gone; nothing more to say to it

    def _drain_and_close(self) -> None:
        """Close after a refusal without losing the answer: a client still sending would otherwise get a
        reset (and lose the response) when we close with its unread bytes in our receive buffer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + _LINGER_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            self.connection.settimeout(left)
            try:
                if not self.connection.recv(65536):
                    return
            except OSError:
                return

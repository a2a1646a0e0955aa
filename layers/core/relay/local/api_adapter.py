"""A local stand-in for the template's HTTP API: requests in, API Gateway payload v2 events out.

Routes come from the functions' ``HttpApi`` events in template.yaml (``Path`` with ``{params}``,
``Method``). A request becomes the event API Gateway would send (payload format 2.0), the handler's
answer becomes the HTTP response the way API Gateway reads it, and the gateway's own answers are
API Gateway's: 404 ``{"message":"Not Found"}`` for no route, 413 past the 10 MB payload limit,
500 ``{"message":"Internal Server Error"}`` when the function fails.

The stage name is part of the URL and of ``rawPath`` (as on a named stage in AWS), so the base URL is
``http://127.0.0.1:<port>/<stage>`` like the template's ``ApiUrl`` output.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from relay.local.lambda_runtime import Handler, LocalFunction
from relay.local.loopback import LoopbackServer
from relay.local.template import Template

log = logging.getLogger("relay.local")

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway HTTP API request payload quota
_NOT_FOUND = {"message": "Not Found"}
_TOO_LARGE = {"message": "Request Entity Too Large"}
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
    template: Template, handlers: Mapping[str, Handler] | None = None
) -> tuple[str, list[Route]]:
    """The HTTP API's stage name and its routes, read from the functions' ``HttpApi`` events.

    ``handlers`` replaces a function's own handler by logical id (tests route to their own function).
    """
    stage = "$default"
    routes: list[Route] = []
    for logical_id in template.resources_of_type("AWS::Serverless::Function"):
        events = template.properties(logical_id).get("Events", {})
        http_events = [e for e in events.values() if e.get("Type") == "HttpApi"]
        if not http_events:
            continue
        function = LocalFunction.from_template(template, logical_id, (handlers or {}).get(logical_id))
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
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str


def build_event(
    request: _Request, route: Route, path_parameters: dict[str, str], stage: str, api_id: str, domain: str
) -> dict[str, Any]:
    """The API Gateway HTTP API (payload format 2.0) event for one request."""
    split = urlsplit(request.target)
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
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    now = time.time()
    request_id = base64.b32encode(uuid.uuid4().bytes).decode()[:14] + "="
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": split.path,
        "rawQueryString": split.query,
        "headers": headers,
        "requestContext": {
            "accountId": route.function.account_id,
            "apiId": api_id,
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": request.method,
                "path": split.path,
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


def to_http_response(result: Any) -> HttpResponse:
    """Read a function's result the way API Gateway reads payload format 2.0 responses."""
    if isinstance(result, dict) and "statusCode" in result:
        status = result["statusCode"]
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("statusCode must be an integer HTTP status")
        headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
        raw = result.get("body")
        body_text = "" if raw is None else raw if isinstance(raw, str) else json.dumps(raw)
        body = base64.b64decode(body_text) if result.get("isBase64Encoded") else body_text.encode()
        return HttpResponse(status, headers, body)
    # No statusCode: API Gateway assumes 200 and JSON; a string is the body as it is.
    body = result.encode() if isinstance(result, str) else json.dumps(result).encode()
    return HttpResponse(200, [("Content-Type", "application/json")], body)


def _json_response(status: int, doc: Any) -> HttpResponse:
    return HttpResponse(status, [("Content-Type", "application/json")], json.dumps(doc).encode())


class ApiAdapter:
    """The local HTTP API on 127.0.0.1; ``start()`` returns the base URL including the stage."""

    def __init__(
        self,
        template: Template,
        port: int = 0,
        *,
        handlers: Mapping[str, Handler] | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.stage, self.routes = routes_from_template(template, handlers)
        self.port = port
        self.max_payload_bytes = max_payload_bytes
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
        path = urlsplit(request.target).path
        prefix = self.stage_prefix
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return _json_response(404, _NOT_FOUND)
        route_path = path[len(prefix) :] or "/"
        for route in self.routes:
            params = route.match(request.method, route_path)
            if params is None:
                continue
            event = build_event(request, route, params, self.stage, self.api_id, domain)
            invocation = route.function.invoke(event)
            if invocation.error is not None:
                return _json_response(500, _FUNCTION_ERROR)
            try:
                return to_http_response(invocation.result)
            except (ValueError, TypeError, AttributeError):
                log.error("%s returned a malformed response", route.function.spec.logical_id)
                return _json_response(500, _FUNCTION_ERROR)
        return _json_response(404, _NOT_FOUND)


def _shut_read(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RD)  # the handler's readline returns EOF and the thread ends
    except OSError:
        pass  # already closed by the client


class _ApiHandler(BaseHTTPRequestHandler):
    adapter: ApiAdapter
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between header and body writes
    server_version = "LocalHttpApi/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("api %s", format % args)

    def setup(self) -> None:
        super().setup()
        with self.adapter._connections_lock:
            self.adapter._connections.add(self.connection)

    def finish(self) -> None:
        with self.adapter._connections_lock:
            self.adapter._connections.discard(self.connection)
        super().finish()

    def handle_one_request(self) -> None:
        with self.adapter._connections_lock:
            if self.adapter._stopping:
                self.close_connection = True
                return
        super().handle_one_request()

    def _serve(self) -> None:
        with self.adapter._connections_lock:
            self.adapter._busy.add(self.connection)
        try:
            self._serve_one()
        finally:
            with self.adapter._connections_lock:
                self.adapter._busy.discard(self.connection)

    def _serve_one(self) -> None:
        body = self._read_body()
        if body is None:
            self._write(_json_response(413, _TOO_LARGE), close=True)
            return
        request = _Request(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            protocol=self.request_version,
        )
        domain = self.headers.get("Host") or f"127.0.0.1:{self.adapter.port}"
        self._write(self.adapter.handle(request, domain))

    def _read_body(self) -> bytes | None:
        """The request body, or None when it is over the payload limit (the rest is not read)."""
        limit = self.adapter.max_payload_bytes
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self, limit: int) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > limit:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _write(self, response: HttpResponse, close: bool = False) -> None:
        self.send_response_only(response.status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("apigw-requestid", uuid.uuid4().hex[:16])
        sent = {"content-length", "date"}
        for name, value in response.headers:
            if name.lower() not in sent:
                self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve  # noqa: N815

"""A fake Genesys Cloud API on loopback, seeded from the fixtures file, with faults settable at runtime.

It serves just what config sync reads, in the shapes the real ``PureCloudPlatformClientV2`` models
deserialize (see docs/config-sync.md for the mapping from fixtures):

- ``POST /oauth/token``: client credentials with Basic auth -> ``{access_token, token_type, expires_in}``
- ``GET /api/v2/conversations/messaging/integrations/open/{id}``: one per fixture integration
- ``GET /api/v2/integrations/{id}`` and ``/api/v2/integrations/{id}/config/current``: one webhook
  integration per fixture target (its id is the target id)
- ``GET /api/v2/integrations/credentials/{id}``: the target's secret values, as credential fields

Faults (``add_fault`` or the helpers ``expire_tokens``, ``deny``, ``rate_limit``, ``slow_down``,
``malform``, ``omit_expires_in``) apply to the next matching requests, so a test can drive every error
path of the real SDK. The same faults can be set at runtime from another process (the local stack runs
in its own) through the fake's control endpoints: ``POST /_fake/faults`` with ``{"kind", "times",
"path", "status", "retryAfter", "delaySeconds"}``, ``DELETE /_fake/faults``,
``POST /_fake/expire-tokens``, ``GET /_fake/requests``. The server binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import ValidationError

from relay.errors import UnsafeUrl
from relay.local.fixtures import FixtureIntegration, Fixtures, FixtureTarget
from relay.local.loopback import LoopbackServer
from relay.logic.url_policy import UrlPolicy
from relay.models.webhook_config import safe_errors, webhook_config_from_genesys

FaultKind = Literal["status", "slow", "malformed", "no-expires-in"]
FAULT_KINDS: tuple[FaultKind, ...] = ("status", "slow", "malformed", "no-expires-in")

# Credential keys in a webhook integration's config (config.credentials) and what they hold.
CREDENTIAL_SECURITY = "security"
CREDENTIAL_SIGNING = "signingSecret"
CREDENTIAL_ENCRYPTION = "encryptionKey"
CREDENTIAL_CLIENT_CERTIFICATE = "clientCertificate"
WEBHOOK_INTEGRATION_TYPE = "webhook"

# Control endpoints (not Genesys): POST/DELETE {CONTROL_PREFIX}faults, POST ...expire-tokens, GET ...requests.
CONTROL_PREFIX = "/_fake/"
FAULT_SHAPE = (
    "expected {kind: status|slow|malformed|no-expires-in, times?, path?, status?, retryAfter?, delaySeconds?}"
)
NOT_JSON = b'{"id": "truncated'
TOKEN_PATHS = ("/oauth/token", "/api/v2/oauth/token")
_OPEN_PATH = re.compile(r"^/api/v2/conversations/messaging/integrations/open/([^/]+)$")
_INTEGRATION_PATH = re.compile(r"^/api/v2/integrations/([^/]+)$")
_CONFIG_PATH = re.compile(r"^/api/v2/integrations/([^/]+)/config/current$")
_CREDENTIAL_PATH = re.compile(r"^/api/v2/integrations/credentials/([^/]+)$")


@dataclass
class Fault:
    """Answer the next ``times`` requests whose path matches ``path`` (a regex; None = any) with a fault.

    kind "status": answer ``status`` with a Genesys-style error body (+ ``Retry-After`` if set);
    kind "slow": sleep ``delay_seconds`` before answering normally, or less once ``until`` is set (a
    test holds a request exactly as long as it needs); kind "malformed": answer 200 with ``body``, by
    default one that is not JSON; kind "no-expires-in": a login issues its token without ``expires_in``.
    """

    kind: FaultKind
    times: int = 1
    path: str | None = None
    status: int = 500
    retry_after: float | None = None
    delay_seconds: float = 0.0
    until: threading.Event | None = None
    body: bytes = NOT_JSON

    def matches(self, path: str) -> bool:
        return self.times > 0 and (self.path is None or re.search(self.path, path) is not None)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    authorized: bool


@dataclass
class _State:
    open_integrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    integrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    credentials: dict[str, dict[str, Any]] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def open_integration_doc(integration: FixtureIntegration) -> dict[str, Any]:
    """A fixture integration as GET .../messaging/integrations/open/{id} returns it."""
    return {
        "id": integration.id,
        "name": integration.name,
        "outboundNotificationWebhookUrl": f"https://relay.invalid/webhooks/{integration.id}",
        "outboundNotificationWebhookSignatureSecretToken": integration.signature_secret,
        "webhookHeaders": {},
        "status": "Active",
        "createStatus": "Completed",
        "dateCreated": _now(),
        "dateModified": _now(),
        "selfUri": f"/api/v2/conversations/messaging/integrations/open/{integration.id}",
    }


def webhook_docs(
    integration_id: str, target: FixtureTarget, version: int = 1
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """A fixture target as a Genesys webhook integration: (integration, config/current, credentials)."""
    credentials: dict[str, dict[str, Any]] = {}
    refs: dict[str, dict[str, Any]] = {}

    def credential(key: str, type_name: str, fields: dict[str, str]) -> None:
        cred_id = f"{target.id}-{key}"
        credentials[cred_id] = {
            "id": cred_id,
            "name": f"{target.name} {key}",
            "type": {"name": type_name},
            "credentialFields": fields,
            "selfUri": f"/api/v2/integrations/credentials/{cred_id}",
        }
        refs[key] = {
            "id": cred_id,
            "name": f"{target.name} {key}",
            "type": {"name": type_name},
            "selfUri": f"/api/v2/integrations/credentials/{cred_id}",
        }

    if target.security.value is not None:
        credential(CREDENTIAL_SECURITY, "userDefined", {"value": target.security.value})
    if target.signing_secret is not None:
        credential(CREDENTIAL_SIGNING, "userDefined", {"value": target.signing_secret})
    if target.encryption_key is not None:
        credential(CREDENTIAL_ENCRYPTION, "userDefined", {"value": target.encryption_key})
    if target.client_certificate is not None:
        credential(CREDENTIAL_CLIENT_CERTIFICATE, "userDefined", {"value": target.client_certificate})
    properties: dict[str, Any] = {
        "openMessagingIntegrationId": integration_id,
        "url": target.url,
        "method": target.method,
        "headers": dict(target.headers),
        "securityType": target.security.type.value,
    }
    oauth2 = target.security.oauth2
    if oauth2 is not None:
        properties["oauth2"] = oauth2.model_dump(by_alias=True, exclude_none=True, mode="json")
    if target.retry_matrix is not None:
        properties["retryMatrix"] = target.retry_matrix.model_dump(by_alias=True)
    if target.ordering is not None:
        properties["ordering"] = target.ordering.value
    if target.on_exhausted is not None:
        properties["onExhausted"] = target.on_exhausted.value
    if target.filters is not None:
        properties["filters"] = target.filters.model_dump(mode="json", by_alias=True, exclude_none=True)
    if target.rate_limit is not None:
        properties["rateLimit"] = target.rate_limit.model_dump(mode="json", by_alias=True, exclude_none=True)
    if target.connect_timeout_seconds is not None:
        properties["connectTimeoutSeconds"] = target.connect_timeout_seconds
    if target.read_timeout_seconds is not None:
        properties["readTimeoutSeconds"] = target.read_timeout_seconds
    integration = {
        "id": target.id,
        "name": target.name,
        "integrationType": {"id": WEBHOOK_INTEGRATION_TYPE, "name": "Webhook"},
        "notes": "",
        "intendedState": "ENABLED" if target.enabled else "DISABLED",
        "config": {"current": {"id": target.id, "name": target.name, "version": version}},
        "reportedState": {"code": "ACTIVE", "effective": "Active"},
        "attributes": {},
        "selfUri": f"/api/v2/integrations/{target.id}",
    }
    config = {
        "id": target.id,
        "name": target.name,
        "version": version,
        "properties": properties,
        "advanced": {},
        "notes": "",
        "credentials": refs,
        "selfUri": f"/api/v2/integrations/{target.id}/config/current",
    }
    return integration, config, credentials


def config_problems(fixtures: Fixtures) -> list[str]:
    """What config sync would refuse in ``fixtures``, found before anything starts: each enabled target
    as this fake serves it, validated as config sync validates it, and its URLs checked by the URL
    policy up to the host's lookup (form, credentials, scheme); the address checks, which resolve the
    host, are left to config sync. A disabled target is not stored at all."""
    problems = []
    for integration in fixtures.integrations:
        for target in (t for t in integration.targets if t.enabled):
            doc, config, credentials = webhook_docs(integration.id, target)
            values = {
                key: credentials[ref["id"]]["credentialFields"]["value"]
                for key, ref in config["credentials"].items()
            }
            try:
                checked = webhook_config_from_genesys(doc, config, values)
            except ValidationError as exc:
                problems.append(f"target {target.id}: invalid config: {safe_errors(exc)}")
                continue
            oauth2 = checked.security.oauth2
            urls = [("URL", checked.url)] + ([("OAuth token URL", oauth2.token_url)] if oauth2 else [])
            problems += [
                f"target {target.id}: {what} refused: {reason}"
                for what, url in urls
                if (reason := _url_problem(url)) is not None
            ]
    return problems


class _LookupNeeded(Exception):
    """The URL policy got as far as resolving the host: what is left needs the network."""


def _no_lookup(host: str, port: int) -> list[str]:
    raise _LookupNeeded


def _url_problem(url: str) -> str | None:
    """Why config sync's URL policy (the local stack's: loopback allowed) refuses ``url`` before it
    resolves the host, else None."""
    try:
        UrlPolicy(allow_loopback=True).check_url(url, resolve=_no_lookup)
    except UnsafeUrl as refused:
        return str(refused)
    except _LookupNeeded:
        pass
    return None


class FakeGenesys:
    """The fake API; ``start()`` returns its base URL (use it as GENESYS_API_HOST)."""

    def __init__(
        self,
        fixtures: Fixtures,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_lifetime_seconds: int = 86_400,
    ) -> None:
        self.client_id = client_id or f"fake-client-{secrets.token_hex(4)}"
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.token_lifetime_seconds = token_lifetime_seconds
        self._lock = threading.Lock()
        self._state = _State()
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._http: LoopbackServer | None = None
        self.base_url = ""
        self.load(fixtures)

    # --- data ------------------------------------------------------------------------------------
    def load(self, fixtures: Fixtures) -> None:
        """Replace everything served with what ``fixtures`` describes."""
        state = _State()
        for integration in fixtures.integrations:
            state.open_integrations[integration.id] = open_integration_doc(integration)
            for target in integration.targets:
                doc, config, creds = webhook_docs(integration.id, target)
                state.integrations[target.id] = doc
                state.configs[target.id] = config
                state.credentials.update(creds)
        with self._lock:
            self._state = state

    @property
    def open_messaging_integration_ids(self) -> list[str]:
        with self._lock:
            return list(self._state.open_integrations)

    @property
    def webhook_integration_ids(self) -> list[str]:
        with self._lock:
            return list(self._state.integrations)

    def update_config_properties(self, integration_id: str, **changes: Any) -> None:
        """Edit a webhook integration's config properties as an admin would in Genesys (bumps its version)."""
        with self._lock:
            config = self._state.configs[integration_id]
            config["properties"].update(changes)
            config["version"] += 1
            self._state.integrations[integration_id]["config"]["current"]["version"] = config["version"]

    def set_intended_state(self, integration_id: str, state: str) -> None:
        with self._lock:
            self._state.integrations[integration_id]["intendedState"] = state

    def set_open_integration_status(self, integration_id: str, status: str) -> None:
        """Set an Open Messaging integration's ``status`` (``Active``, ``Inactive``) as an admin would."""
        with self._lock:
            self._state.open_integrations[integration_id]["status"] = status

    def set_signature_secret(self, integration_id: str, token: str | None) -> None:
        """What an Open Messaging integration answers as its signature secret (redacted: ``"****"``)."""
        with self._lock:
            self._state.open_integrations[integration_id][
                "outboundNotificationWebhookSignatureSecretToken"
            ] = token

    def set_credential(self, integration_id: str, key: str, value: str) -> None:
        """Change one secret value of a webhook integration (e.g. rotate its encryption key)."""
        self.set_credential_fields(integration_id, key, {"value": value})

    def set_credential_fields(self, integration_id: str, key: str, fields: dict[str, str]) -> None:
        """Serve one credential's fields as given, e.g. ``{"userName": ..., "password": "****"}``."""
        with self._lock:
            cred_id = self._state.configs[integration_id]["credentials"][key]["id"]
            self._state.credentials[cred_id]["credentialFields"] = dict(fields)

    def settings_env(self) -> dict[str, str]:
        """The environment variables that point config sync at this fake (local mode)."""
        return {
            "GENESYS_API_HOST": self.base_url,
            "GENESYS_CLIENT_ID": self.client_id,
            "GENESYS_CLIENT_SECRET": self.client_secret,
            "GENESYS_OPEN_MESSAGING_INTEGRATION_IDS": ",".join(self.open_messaging_integration_ids),
            "GENESYS_WEBHOOK_INTEGRATION_IDS": ",".join(self.webhook_integration_ids),
        }

    # --- faults and observation ------------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def reset(self, fixtures: Fixtures) -> None:
        """Serve ``fixtures`` again, with no pending faults and an empty request log (between tests)."""
        self.load(fixtures)
        self.clear_faults()
        self.clear_requests()

    def expire_tokens(self) -> None:
        """Every token issued so far is now expired: API calls answer 401 until a new login."""
        with self._lock:
            self._tokens.clear()

    def deny(self, path: str | None = None, times: int = 1) -> None:
        self.add_fault(Fault("status", times=times, path=path, status=403))

    def rate_limit(self, retry_after: float = 1, path: str | None = None, times: int = 1) -> None:
        self.add_fault(Fault("status", times=times, path=path, status=429, retry_after=retry_after))

    def slow_down(
        self,
        delay_seconds: float,
        path: str | None = None,
        times: int = 1,
        *,
        until: threading.Event | None = None,
    ) -> None:
        """Answer the matching requests after ``delay_seconds``, or as soon as ``until`` is set."""
        self.add_fault(Fault("slow", times=times, path=path, delay_seconds=delay_seconds, until=until))

    def malform(self, path: str | None = None, times: int = 1, body: bytes | None = None) -> None:
        self.add_fault(Fault("malformed", times=times, path=path, body=body or NOT_JSON))

    def omit_expires_in(self, times: int = 1) -> None:
        """The next ``times`` logins answer 200 with a usable token but no ``expires_in``."""
        self.add_fault(Fault("no-expires-in", times=times, path="oauth/token$"))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, path_regex: str) -> int:
        return sum(1 for r in self.requests if re.search(path_regex, r.path))

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> str:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._http = LoopbackServer(handler, name="fake-genesys")
        self.base_url = f"http://127.0.0.1:{self._http.start()}"
        return self.base_url

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    def __enter__(self) -> FakeGenesys:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- request handling (called from the server threads) ---------------------------------------
    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(path):
                    fault.times -= 1
                    return Fault(**{**fault.__dict__, "times": 1})
        return None

    def _issue_token(self, authorization: str | None, form: dict[str, list[str]]) -> tuple[int, Any]:
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type", "description": "client_credentials only"}
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if authorization is None or not secrets.compare_digest(authorization, expected):
            return 401, {"error": "invalid_client", "description": "client authentication failed"}
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime_seconds
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime_seconds}

    def _authorized(self, authorization: str | None) -> bool:
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        token = authorization.split(" ", 1)[1].strip()
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    def _lookup(self, path: str) -> dict[str, Any] | None:
        routes: Iterable[tuple[re.Pattern[str], dict[str, dict[str, Any]]]] = (
            (_OPEN_PATH, self._state.open_integrations),
            (_CONFIG_PATH, self._state.configs),
            (_CREDENTIAL_PATH, self._state.credentials),
            (_INTEGRATION_PATH, self._state.integrations),
        )
        with self._lock:
            for pattern, table in routes:
                found = pattern.match(path)
                if found:
                    # The SDK percent-encodes path parameters (":" arrives as %3A); Genesys decodes them.
                    doc = table.get(unquote(found.group(1)))
                    return json.loads(json.dumps(doc)) if doc is not None else None
        return None

    def _record(self, method: str, path: str, authorized: bool) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(method, path, authorized))


def _error_body(status: int, message: str, code: str) -> dict[str, Any]:
    return {"message": message, "code": code, "status": status, "contextId": secrets.token_hex(8)}


_STATUS_CODES = {
    401: ("authentication required", "authentication.required"),
    403: ("missing the required permission", "missing.any.permissions"),
    404: ("resource not found", "not.found"),
    429: (
        "Rate limit exceeded the maximum. Retry the request in [%s] seconds",
        "too.many.requests.retry.after",
    ),
    500: ("internal server error", "internal.server.error"),
    503: ("service unavailable", "service.unavailable"),
}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGenesys
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave in separate writes; no delayed-ACK stall
    server_version = "FakeGenesys/1"

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet; tests read .requests
        return

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), headers)

    def _send_status(self, status: int, retry_after: float | None = None) -> None:
        message, code = _STATUS_CODES.get(status, ("error", "error"))
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(int(retry_after) if float(retry_after).is_integer() else retry_after)
            if "%s" in message:  # only the 429 message names the wait
                message = message % headers["Retry-After"]
        self._send_json(status, _error_body(status, message, code), headers)

    def _apply_fault(self, fault: Fault | None) -> bool:
        """Serve ``fault`` (pending for this request) if any; True when the request has been answered."""
        if fault is None or fault.kind == "no-expires-in":  # changes the token answer (do_POST)
            return False
        if fault.kind == "slow":
            if fault.until is not None:
                fault.until.wait(fault.delay_seconds)
            else:
                time.sleep(fault.delay_seconds)
            return False
        if fault.kind == "malformed":
            self._send(200, fault.body, {})
            return True
        self._send_status(fault.status, fault.retry_after)
        return True

    def _control(self, path: str, raw: str) -> bool:
        """The fake's own control endpoints (``/_fake/...``): faults set at runtime from another process."""
        if not path.startswith(CONTROL_PREFIX):
            return False
        action = path.removeprefix(CONTROL_PREFIX)
        if self.command == "POST" and action == "faults":
            try:
                doc = json.loads(raw or "{}")
                if doc.get("kind") not in FAULT_KINDS:
                    raise ValueError("unknown fault kind")
                fault = Fault(
                    kind=doc["kind"],
                    times=int(doc.get("times", 1)),
                    path=doc.get("path"),
                    status=int(doc.get("status", 500)),
                    retry_after=doc.get("retryAfter"),
                    delay_seconds=float(doc.get("delaySeconds", 0.0)),
                )
            except (ValueError, KeyError, TypeError):
                self._send_json(400, {"error": FAULT_SHAPE})
                return True
            self.fake.add_fault(fault)
            self._send_json(201, {"added": fault.kind})
        elif self.command == "DELETE" and action == "faults":
            self.fake.clear_faults()
            self._send_json(200, {"cleared": True})
        elif self.command == "POST" and action == "expire-tokens":
            self.fake.expire_tokens()
            self._send_json(200, {"expired": True})
        elif self.command == "GET" and action == "requests":
            self._send_json(200, [r.__dict__ for r in self.fake.requests])
        else:
            self._send_status(404)
        return True

    def do_DELETE(self) -> None:  # noqa: N802 - http.server naming
        if not self._control(urlsplit(self.path).path, ""):
            self._send_status(404)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        if self._control(path, raw):
            return
        self.fake._record("POST", path, False)
        fault = self.fake._take_fault(path)
        if self._apply_fault(fault):
            return
        if path not in TOKEN_PATHS:
            self._send_status(404)
            return
        status, doc = self.fake._issue_token(self.headers.get("Authorization"), parse_qs(raw))
        if fault is not None and fault.kind == "no-expires-in":
            doc.pop("expires_in", None)
        self._send_json(status, doc)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = urlsplit(self.path).path
        if self._control(path, ""):
            return
        authorized = self.fake._authorized(self.headers.get("Authorization"))
        self.fake._record("GET", path, authorized)
        if self._apply_fault(self.fake._take_fault(path)):
            return
        if not authorized:
            self._send_status(401)
            return
        doc = self.fake._lookup(path)
        if doc is None:
            self._send_status(404)
            return
        self._send_json(200, doc)

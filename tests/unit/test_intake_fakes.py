"""In-memory collaborators and request builders for the intake's unit tests (no sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from relay.logic.intake import Intake
from relay.models.secrets import RotatingSecret
from relay.models.targets import Integration, IntegrationEntry, Target
from relay.testing.fakes import InMemoryClaimCheckStore, InMemoryDeliveryQueue, InMemoryIdempotencyStore

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
INTEGRATION_ID = "6685901b-6d0e-43db-95ff-d64406e9dce2"
SECRET = "local-demo-signature-secret-0001"
PREVIOUS_SECRET = "previous-signature-secret-0000"
SECRET_NAME = f"relay/local/signature/{INTEGRATION_ID}"


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return loaded


def make_entry(
    target_ids: tuple[str, ...] = ("t-a", "t-b"), disabled: tuple[str, ...] = ()
) -> IntegrationEntry:
    integration = Integration(integration_id=INTEGRATION_ID, name="Acme", signature_secret_name=SECRET_NAME)
    targets = tuple(
        Target(
            integration_id=INTEGRATION_ID,
            target_id=target_id,
            name=target_id,
            url=f"https://example.com/{target_id}",
            enabled=target_id not in disabled,
        )
        for target_id in target_ids
    )
    return IntegrationEntry(integration, targets)


class Integrations:
    def __init__(self, *entries: IntegrationEntry) -> None:
        self.entries = {entry.integration.integration_id: entry for entry in entries}
        self.lookups = 0

    def get(self, integration_id: str) -> IntegrationEntry | None:
        self.lookups += 1
        return self.entries.get(integration_id)


class Secrets:
    def __init__(self, current: str = SECRET, previous: str | None = None) -> None:
        self.secret = RotatingSecret(current=current, previous=previous)

    def __call__(self, name: str) -> RotatingSecret:
        assert name == SECRET_NAME
        return self.secret


class CountingMetrics:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str | None], int] = {}

    def count(self, name: str, value: int = 1, *, reason: str | None = None) -> None:
        self.counts[(name, reason)] = self.counts.get((name, reason), 0) + value


def make_intake(**overrides: Any) -> tuple[Intake, InMemoryDeliveryQueue]:
    queue = overrides.pop("queue", None) or InMemoryDeliveryQueue()
    options: dict[str, Any] = {
        "integrations": Integrations(make_entry()),
        "get_secret": Secrets(),
        "queue": queue,
        "idempotency": InMemoryIdempotencyStore(),
        "claim_checks": InMemoryClaimCheckStore(),
        "in_progress_wait_seconds": 0.0,
    }
    options.update(overrides)
    return Intake(**options), queue


def signature(body: bytes, secret: str = SECRET, *, encoding: str = "base64") -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if encoding == "hex":
        return "sha256=" + digest.hex()
    return "sha256=" + base64.b64encode(digest).decode()


def http_event(
    payload: dict[str, Any] | bytes | str | None = None,
    *,
    method: str = "POST",
    integration_id: str = INTEGRATION_ID,
    headers: dict[str, str] | None = None,
    sign_with: str | None = SECRET,
    base64_body: bool = False,
) -> dict[str, Any]:
    """An API Gateway HTTP API payload-v2 event, signed like Genesys signs unless told otherwise."""
    if payload is None:
        payload = sample("openmessaging_text.json")
    if isinstance(payload, dict):
        body = json.dumps(payload, separators=(",", ":")).encode()
    elif isinstance(payload, str):
        body = payload.encode()
    else:
        body = payload
    all_headers = {"content-type": "application/json"}
    if sign_with is not None:
        all_headers["x-hub-signature-256"] = signature(body, sign_with)
    all_headers.update(headers or {})
    return {
        "version": "2.0",
        "routeKey": "POST /webhooks/{integrationId}",
        "rawPath": f"/webhooks/{integration_id}",
        "headers": all_headers,
        "requestContext": {"http": {"method": method, "path": f"/webhooks/{integration_id}"}},
        "pathParameters": {"integrationId": integration_id},
        "body": base64.b64encode(body).decode() if base64_body else body.decode("utf-8", "surrogatepass"),
        "isBase64Encoded": base64_body,
    }


def answer(response: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(response["body"])
    return loaded

"""Lambda events for tests, built from the samples in events/.

API Gateway HTTP API (payload v2) events carrying Genesys webhooks, SQS records and batches as the
event source mapping hands them to the dispatcher, and EventBridge events with the PutEvents entries
that publish them. Each builder starts from a sample, so the fields a test does not set (the
requestContext, the record's eventSourceARN, ...) are the ones AWS sends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from support import ROOT

EVENTS = ROOT / "events"
WEBHOOK_SAMPLE = "apigw_text.json"
DELIVERY_BATCH_SAMPLE = "sqs_delivery_batch.json"
CONVERSATION_START_SAMPLE = "eventbridge_conversation_start.json"
SIGNATURE_HEADER = "x-hub-signature-256"


def sample(name: str) -> dict[str, Any]:
    """events/<name>, read afresh: each caller gets its own copy to change."""
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return loaded


def _fixture_integration(integration_id: str) -> dict[str, Any]:
    fixtures = json.loads((EVENTS / "fixtures" / "local.json").read_text())
    found: dict[str, Any] = next(i for i in fixtures["integrations"] if i["id"] == integration_id)
    return found


# The integration the webhook samples belong to, and the secret Genesys signs them with (from
# events/fixtures/local.json, which the local stack and the integration tests seed).
INTEGRATION_ID: str = sample(WEBHOOK_SAMPLE)["pathParameters"]["integrationId"]
SIGNATURE_SECRET: str = _fixture_integration(INTEGRATION_ID)["signatureSecret"]


# --- API Gateway (HTTP API, payload v2) -------------------------------------------------------------


def genesys_signature(body: bytes, secret: str = SIGNATURE_SECRET, *, encoding: str = "base64") -> str:
    """X-Hub-Signature-256 as Genesys computes it (HMAC-SHA256 of the raw body), base64 or hex.

    Computed here rather than with relay's own code, so the intake's check meets an independent signer.
    """
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return "sha256=" + (digest.hex() if encoding == "hex" else base64.b64encode(digest).decode())


def _raw(body: Mapping[str, Any] | str | bytes) -> bytes:
    if isinstance(body, Mapping):
        return _compact(body).encode()
    return body.encode() if isinstance(body, str) else body


def api_gateway_event(
    body: Mapping[str, Any] | str | bytes | None = None,
    *,
    integration_id: str = INTEGRATION_ID,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    sign_with: str | None = SIGNATURE_SECRET,
    base64_body: bool = False,
) -> dict[str, Any]:
    """The event API Gateway gives the intake for a Genesys webhook (the apigw_text.json sample).

    ``body``: a mapping is sent as compact JSON, text and bytes as they are; by default the sample's
    own message. Signed like Genesys signs unless ``sign_with`` is None; ``headers`` are set last (they
    may replace the signature). A body that is not UTF-8 arrives base64-encoded, as API Gateway sends it.
    """
    event = sample(WEBHOOK_SAMPLE)
    raw = event["body"].encode() if body is None else _raw(body)
    path = f"/{event['requestContext']['stage']}/webhooks/{integration_id}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    event["pathParameters"] = {"integrationId": integration_id}
    event["headers"]["content-length"] = str(len(raw))
    del event["headers"][SIGNATURE_HEADER]
    if sign_with is not None:
        event["headers"][SIGNATURE_HEADER] = genesys_signature(raw, sign_with)
    event["headers"].update(headers or {})
    if not base64_body:
        try:
            event["body"] = raw.decode()
        except UnicodeDecodeError:
            base64_body = True  # API Gateway passes a body that is not text base64-encoded
    if base64_body:
        event["body"] = base64.b64encode(raw).decode()
    event["isBase64Encoded"] = base64_body
    return event


def holder_of(value: Any, path: Sequence[str | int]) -> Any:
    """The object or list that holds the member at ``path`` (``("channel", "id")``: the channel)."""
    for step in path[:-1]:
        value = value[step]
    return value


def with_member_twice(value: Any, path: Sequence[str | int], first: Any) -> str:
    """``value`` as compact JSON text in which the member at ``path`` (``("channel", "id")``,
    ``("events", 0, "eventType")``) is written twice: ``first``, then its own value. Python's json (the
    last one counts) reads it back as ``value``; a parser that keeps the first one reads ``first``."""
    if not path:
        return _compact(value)
    step, rest = path[0], path[1:]
    if isinstance(value, list):
        items = (
            with_member_twice(item, rest, first) if i == step else _compact(item)
            for i, item in enumerate(value)
        )
        return "[" + ",".join(items) + "]"
    members = [_compact(step) + ":" + _compact(first)] if not rest else []
    members += (
        _compact(name) + ":" + (with_member_twice(item, rest, first) if name == step else _compact(item))
        for name, item in value.items()
    )
    return "{" + ",".join(members) + "}"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- SQS (the dispatcher's event source) ---------------------------------------------------------------


def sqs_record(
    body: Mapping[str, Any] | str,
    *,
    receive_count: int = 1,
    attributes: Mapping[str, str | int] | None = None,
) -> dict[str, Any]:
    """One record of the SQS event Lambda gives the dispatcher (shaped like sqs_delivery_batch.json's).

    A fresh messageId; a mapping body is sent as JSON; message ``attributes`` as Lambda spells them
    (numbers as Number, text as String).
    """
    record: dict[str, Any] = sample(DELIVERY_BATCH_SAMPLE)["Records"][0]
    record["body"] = body if isinstance(body, str) else json.dumps(body)
    record["md5OfBody"] = hashlib.md5(record["body"].encode()).hexdigest()  # SQS's checksum of the body
    record["messageId"] = str(uuid.uuid4())
    record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    record["messageAttributes"] = {
        name: {
            "stringValue": str(value),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Number" if isinstance(value, int) else "String",
        }
        for name, value in (attributes or {}).items()
    }
    return record


def sqs_batch(*records: dict[str, Any]) -> dict[str, Any]:
    """The SQS event carrying ``records``, as one invocation of the dispatcher gets it."""
    return {"Records": list(records)}


# --- EventBridge ---------------------------------------------------------------------------------------


def eventbridge_event(name: str = CONVERSATION_START_SAMPLE, **fields: Any) -> dict[str, Any]:
    """An event as EventBridge delivers it to a rule's target: the sample ``name`` with ``fields`` set
    (e.g. ``id=...`` for another event, ``detail=...``)."""
    event = sample(name)
    event.update(fields)
    return event


def put_events_entry(event: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The PutEvents entry that publishes ``event`` (``overrides`` e.g. ``EventBusName``)."""
    return {
        "Source": event["source"],
        "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"]),
        "Time": event["time"],
        "Resources": event["resources"],
        **overrides,
    }

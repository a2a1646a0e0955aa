"""API Gateway HTTP API (payload v2) events in and responses out: the intake's HTTP edge."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.errors import BadRequest, PayloadTooLarge


@dataclass(frozen=True)
class HttpRequest:
    method: str
    integration_id: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes


def is_http_event(event: Mapping[str, Any]) -> bool:
    context = event.get("requestContext")
    return isinstance(context, dict) and isinstance(context.get("http"), dict)


def is_eventbridge_event(event: Mapping[str, Any]) -> bool:
    return "detail-type" in event and "source" in event and "detail" in event


def read_http_request(event: Mapping[str, Any], max_body_bytes: int) -> HttpRequest:
    """Method, path parameter, lower-cased headers and the raw body of a payload-v2 event."""
    method = str(event["requestContext"]["http"].get("method", "")).upper()
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    path_parameters = event.get("pathParameters") or {}
    integration_id = str(path_parameters.get("integrationId") or "")
    raw = event.get("body")
    text = raw if isinstance(raw, str) else ""
    if event.get("isBase64Encoded"):
        # Refuse before decoding: 4 base64 characters carry 3 bytes.
        if len(text) // 4 * 3 > max_body_bytes + 3:
            raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("the body is marked base64-encoded but is not valid base64") from None
    else:
        body = text.encode("utf-8", errors="surrogatepass")
    return HttpRequest(method=method, integration_id=integration_id, headers=headers, body=body)


def json_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": json.dumps(body, separators=(",", ":")),
    }

"""Loopback proxies in front of moto that change how AWS behaves for one test (answers late, an answer
lost): a request is forwarded as it came, and the answer written back without its framing headers."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests

_NOT_FORWARDED = {"host", "content-length", "connection"}
_FRAMING = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def forward(request: BaseHTTPRequestHandler, upstream: str, *, timeout: float) -> requests.Response:
    """``request`` (a POST, as every AWS JSON and query API call is) sent on to ``upstream``."""
    body = request.rfile.read(int(request.headers.get("Content-Length", 0)))
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
    return requests.post(upstream + request.path, data=body, headers=headers, timeout=timeout)


def answer(request: BaseHTTPRequestHandler, response: requests.Response) -> None:
    """Write ``response`` back as the answer to ``request``."""
    request.send_response(response.status_code)
    for name, value in response.headers.items():
        if name.lower() not in _FRAMING:
            request.send_header(name, value)
    request.send_header("Content-Length", str(len(response.content)))
    request.end_headers()
    request.wfile.write(response.content)


def answer_json(request: BaseHTTPRequestHandler, status: int, document: dict[str, Any]) -> None:
    """Answer ``request`` as an AWS JSON-protocol service does (SQS, DynamoDB): ``document`` as the body,
    an error's ``__type`` and ``message`` included, with ``status``."""
    body = json.dumps(document).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/x-amz-json-1.0")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)

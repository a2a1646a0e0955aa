"""The local HTTP API: requests become API Gateway payload v2 events; results become HTTP responses."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from relay.local.api_adapter import MAX_PAYLOAD_BYTES, ApiAdapter
from relay.local.aws_stack import LocalResources
from relay.local.template import load_template

pytestmark = pytest.mark.integration

INTEGRATION_ID = "6685901b-6d0e-43db-95ff-d64406e9dce2"


class Scripted:
    """A stand-in IntakeFunction: records events and answers what the test sets."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.contexts: list[Any] = []
        self.answer: Any = {"statusCode": 202, "headers": {"content-type": "application/json"}, "body": "{}"}

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        self.contexts.append(context)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def scripted() -> Scripted:
    return Scripted()


@pytest.fixture
def api(scripted: Scripted) -> Iterator[ApiAdapter]:
    template = load_template(parameters={"Stage": "local"})
    with ApiAdapter(template, handlers={"IntakeFunction": scripted}) as adapter:
        yield adapter


def test_a_request_becomes_a_payload_v2_event(api: ApiAdapter, scripted: Scripted) -> None:
    # Given a POST with a query string, a repeated header and a cookie
    conn = http.client.HTTPConnection("127.0.0.1", api.port)
    body = b'{"id":"m1"}'
    conn.putrequest("POST", f"/local/webhooks/{INTEGRATION_ID}?a=1&a=2&b=")
    for name, value in (
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("X-Hub-Signature-256", "sha256=abc"),
        ("X-Dup", "one"),
        ("X-Dup", "two"),
        ("Cookie", "c1=v1; c2=v2"),
        ("User-Agent", "Genesys-Cloud-Webhooks"),
    ):
        conn.putheader(name, value)
    conn.endheaders(body)

    # When the adapter answers
    response = conn.getresponse()
    response.read()
    conn.close()

    # Then the function got the event API Gateway would send, and the client got its answer
    assert response.status == 202
    event = scripted.events[0]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /webhooks/{integrationId}"
    assert event["rawPath"] == f"/local/webhooks/{INTEGRATION_ID}"
    assert event["rawQueryString"] == "a=1&a=2&b="
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["pathParameters"] == {"integrationId": INTEGRATION_ID}
    assert event["headers"]["x-hub-signature-256"] == "sha256=abc"
    assert event["headers"]["x-dup"] == "one,two"
    assert event["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert event["headers"]["x-amzn-trace-id"].startswith("Root=1-")
    assert "cookie" not in event["headers"]
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert event["body"] == body.decode() and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["http"] == {
        "method": "POST",
        "path": f"/local/webhooks/{INTEGRATION_ID}",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "Genesys-Cloud-Webhooks",
    }
    assert context["stage"] == "local"
    assert context["routeKey"] == event["routeKey"]
    assert context["accountId"] == "123456789012"
    assert context["requestId"] and context["apiId"] and context["domainName"]
    assert isinstance(context["timeEpoch"], int) and context["time"].endswith("+0000")


def test_binary_bodies_arrive_base64_encoded(api: ApiAdapter, scripted: Scripted) -> None:
    # Given a body that is not text
    raw = bytes(range(256))

    # When it is posted
    requests.post(
        f"{api.base_url}/webhooks/x",
        data=raw,
        headers={"Content-Type": "application/octet-stream"},
        timeout=5,
    )

    # Then the function gets it base64-encoded, as from API Gateway
    event = scripted.events[0]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


def test_the_context_is_lambda_like(api: ApiAdapter, scripted: Scripted) -> None:
    requests.post(f"{api.base_url}/webhooks/x", json={}, timeout=5)
    template = load_template(parameters={"Stage": "local"})
    spec = template.function("IntakeFunction")
    context = scripted.contexts[0]
    assert "IntakeFunction" in context.function_name
    assert context.invoked_function_arn.endswith(f":function:{context.function_name}")
    assert context.memory_limit_in_mb == int(
        template.resolve(template.properties("IntakeFunction"))["MemorySize"]
    )
    assert 0 < context.get_remaining_time_in_millis() <= spec.timeout_seconds * 1000
    assert context.aws_request_id


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/local/nowhere"),
        ("GET", f"/local/webhooks/{INTEGRATION_ID}"),  # the route is POST only
        ("POST", f"/webhooks/{INTEGRATION_ID}"),  # outside the stage
        ("POST", f"/local/webhooks/{INTEGRATION_ID}/extra"),  # {param} is one segment
    ],
)
def test_no_route_is_api_gateways_404(api: ApiAdapter, scripted: Scripted, method: str, path: str) -> None:
    response = requests.request(method, f"http://127.0.0.1:{api.port}{path}", timeout=5)
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}
    assert scripted.events == []


def test_a_body_over_the_payload_limit_is_413_without_calling_the_function(
    api: ApiAdapter, scripted: Scripted
) -> None:
    # Given a request announcing a body one byte over API Gateway's 10 MB limit
    conn = http.client.HTTPConnection("127.0.0.1", api.port)
    conn.putrequest("POST", "/local/webhooks/x")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_PAYLOAD_BYTES + 1))
    conn.endheaders()

    # When the adapter answers (before the body is even sent)
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()

    # Then it is refused as too large (worded like the intake's own 413) and the function never ran
    assert response.status == 413
    assert payload == {"message": f"the body is larger than {MAX_PAYLOAD_BYTES} bytes"}
    assert scripted.events == []


@pytest.mark.parametrize(
    ("answer", "status", "content_type", "body"),
    [
        pytest.param({"ok": True}, 200, "application/json", b'{"ok": true}', id="bare-dict"),
        pytest.param("plain words", 200, "application/json", b"plain words", id="bare-string"),
        pytest.param(
            {
                "statusCode": 201,
                "headers": {"content-type": "image/png"},
                "body": "AAEC",
                "isBase64Encoded": True,
            },
            201,
            "image/png",
            b"\x00\x01\x02",
            id="base64-body",
        ),
        pytest.param(
            RuntimeError("boom"), 500, "application/json", b'{"message": "Internal Server Error"}', id="error"
        ),
        pytest.param(
            {"statusCode": "teapot"},
            500,
            "application/json",
            b'{"message": "Internal Server Error"}',
            id="bad",
        ),
    ],
)
def test_results_become_responses_as_api_gateway_reads_them(
    api: ApiAdapter, scripted: Scripted, answer: Any, status: int, content_type: str, body: bytes
) -> None:
    scripted.answer = answer
    response = requests.post(f"{api.base_url}/webhooks/x", json={}, timeout=5)
    assert response.status_code == status
    assert response.headers["Content-Type"] == content_type
    assert response.content == body


def test_cookies_in_a_result_become_set_cookie_headers(api: ApiAdapter, scripted: Scripted) -> None:
    scripted.answer = {"statusCode": 200, "cookies": ["a=1", "b=2"], "body": ""}
    response = requests.post(f"{api.base_url}/webhooks/x", json={}, timeout=5)
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]


def test_keep_alive_connections_serve_several_requests(api: ApiAdapter, scripted: Scripted) -> None:
    with requests.Session() as session:
        answers = [session.post(f"{api.base_url}/webhooks/x", json={"n": n}, timeout=5) for n in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [json.loads(e["body"])["n"] for e in scripted.events] == [0, 1, 2]


def test_the_template_handler_is_loaded_from_its_code_uri(aws_stack: LocalResources) -> None:
    # Given the adapter with the real IntakeFunction (functions/intake/intake_handler.py)
    with ApiAdapter(aws_stack.template) as adapter:
        # When an unsigned event is posted for an integration nobody configured
        response = requests.post(
            f"{adapter.base_url}/webhooks/unknown-integration", json={"id": "x"}, timeout=10
        )

    # Then the intake itself answered (its JSON error shape), not the gateway
    assert urlsplit(adapter.base_url).path == "/local"
    assert response.status_code in (401, 404)
    assert set(response.json()) >= {"error", "message"}

"""Property-based fuzzing of the intake handler, in process, with a real moto server behind it.

Over 800 generated requests in ``make test``, 5,200 in ``make chaos`` (``RELAY_FUZZ_EXAMPLES``):
well-formed and broken Genesys messages, random JSON and bytes, right, wrong, malformed and missing
signatures, base64 bodies, odd methods, content types and integration ids:

* no request gets a 5xx, and every answer is the JSON the OpenAPI document describes;
* a 202 is given only to a correctly signed, schema-valid message; every other answer is a 4xx;
* exactly one task per target is queued for each new accepted event, none for a repeat or a refusal,
  and every queued task is a valid DeliveryTask carrying the body's text, exactly as sent.

moto's SQS answers about 100 calls/s, so most cases are refused before SQS and the queue is drained
after every accepted one (it never holds more than two messages).
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.events import INTEGRATION_ID, SIGNATURE_SECRET, api_gateway_event, genesys_signature, sample
from support.handlers import LoadHandler
from support.lambda_context import lambda_context
from support.queues import drain
from test_intake_handler import queued_tasks, seed_fixture_integrations

from relay.local.aws_stack import LocalResources
from relay.models.genesys import OPEN_MESSAGE
from relay.settings import get_settings

# make test runs about a sixth of what make chaos runs: the full run takes about two minutes of one core,
# and make test must fit in ten minutes on two.
EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "800"))
MAX_BODY_BYTES = 4_096  # small, so that 413 is cheap to reach
SAMPLES = [sample(f"openmessaging_{name}.json") for name in ("text", "typing", "receipt")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
times = st.datetimes(timezones=st.just(UTC)).map(
    lambda moment: moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """Genesys messages: mostly valid with fresh ids, sometimes broken in one or two places."""
    message: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(SAMPLES))))
    message["id"] = draw(st.text(min_size=1, max_size=40))
    message["channel"]["time"] = draw(times)
    if draw(st.booleans()):
        message[draw(st.text(min_size=1, max_size=12))] = draw(json_values)  # unknown fields are kept
    if message["type"] == "Text" and draw(st.booleans()):
        message["text"] = draw(st.text(max_size=200))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        mutation = draw(st.sampled_from(["drop", "retype", "replace", "nest"]))
        field = draw(st.sampled_from(["id", "channel", "type", "text", "events", "status", "content"]))
        if mutation == "drop":
            message.pop(field, None)
        elif mutation == "retype":
            message[field] = draw(json_values)
        elif mutation == "replace" and isinstance(message.get("channel"), dict):
            message["channel"][draw(st.sampled_from(["id", "time", "to", "from"]))] = draw(json_values)
        else:
            message[field] = {"nested": draw(json_values)}
    return message


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["message", "message", "message", "json", "text", "bytes"]))
    if kind == "message":
        body = json.dumps(draw(messages()), separators=(",", ":"), ensure_ascii=draw(st.booleans())).encode()
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "text":
        body = draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    else:
        body = draw(st.binary(max_size=300))
    if draw(st.sampled_from([False] * 30 + [True])):
        body += b" " * (MAX_BODY_BYTES + 1 - len(body))  # just over the limit
    signing = draw(
        st.sampled_from(["right", "right", "right", "hex", "previous", "wrong", "malformed", "missing"])
    )
    header_name = draw(st.sampled_from(["x-hub-signature-256", "X-Hub-Signature-256", "X-HUB-SIGNATURE-256"]))
    secret = {"wrong": "not-the-integration-secret", "previous": PREVIOUS_SECRET}.get(
        signing, SIGNATURE_SECRET
    )
    headers: dict[str, str] = {}
    if signing in ("right", "wrong", "previous"):
        headers[header_name] = genesys_signature(body, secret)
    elif signing == "hex":
        headers[header_name] = genesys_signature(body, secret, encoding="hex")
    elif signing == "malformed":
        headers[header_name] = draw(st.text(max_size=80).filter(lambda s: "\x00" not in s))
    content_type = draw(
        st.sampled_from(
            ["application/json"] * 4
            + ["application/json; charset=utf-8", "APPLICATION/JSON"]
            + ["text/plain", "application/xml", "", "multipart/form-data"]
        )
    )
    if content_type:
        headers[draw(st.sampled_from(["content-type", "Content-Type"]))] = content_type
    for name, value in draw(
        st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=2)
    ).items():
        headers.setdefault(name, value)
    integration_id = draw(
        st.sampled_from([INTEGRATION_ID] * 15 + ["", "unknown", "6685901b", "other"])
        if draw(st.sampled_from([True] * 9 + [False]))
        else st.text(max_size=20)
    )
    method = draw(st.sampled_from(["POST"] * 14 + ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
    as_base64 = draw(st.booleans())
    event = api_gateway_event(body, integration_id=integration_id, method=method, base64_body=as_base64)
    event["headers"] = headers  # exactly the drawn ones: no sample headers, no signature but the drawn one
    return event


PREVIOUS_SECRET = "previous-signature-secret-0000"


def _finite(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _no_constant(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


def genuine(event: dict[str, Any]) -> dict[str, Any] | None:
    """The message if this request deserves a 202 (judged independently of the handler), else None."""
    headers = {k.lower(): v for k, v in event["headers"].items()}
    body = base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"].encode()
    if event["requestContext"]["http"]["method"] != "POST" or len(body) > MAX_BODY_BYTES:
        return None
    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return None
    if event["pathParameters"]["integrationId"] != INTEGRATION_ID:
        return None
    signature = headers.get("x-hub-signature-256", "")
    valid = {
        genesys_signature(body, secret, encoding=encoding)
        for secret in (SIGNATURE_SECRET, PREVIOUS_SECRET)
        for encoding in ("base64", "hex")
    }
    if signature not in valid:
        return None
    try:
        message = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
        OPEN_MESSAGE.validate_python(message)
    except ValueError:
        return None
    if message["channel"]["id"] != INTEGRATION_ID:
        return None  # integration_mismatch
    return message if isinstance(message, dict) else None


@pytest.mark.slow
def test_fuzzed_requests_never_get_a_5xx_and_never_queue_an_invalid_event(
    aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch, function_handler: LoadHandler
) -> None:
    # Given the fixtures' integration (two targets) and a small body limit
    monkeypatch.setenv("MAX_BODY_BYTES", str(MAX_BODY_BYTES))
    get_settings.cache_clear()
    seed_fixture_integrations(previous_secret=PREVIOUS_SECRET)
    handler = function_handler("intake")
    seen_events: set[tuple[str, str]] = set()
    outcomes: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(requests())
    def check(event: dict[str, Any]) -> None:
        # When the request reaches the handler
        response = handler(event, lambda_context("intake"))
        status = response["statusCode"]
        outcomes[status] = outcomes.get(status, 0) + 1
        answer = json.loads(response["body"])

        # Then never a 5xx; 202 exactly for genuine messages, the documented error shape otherwise
        assert status < 500, answer
        expected = genuine(event)
        if expected is None:
            assert status in (400, 401, 404, 405, 413, 415) or (
                # a forged signature while the secret's re-read is spent: retry later, never a 5xx
                status == 429 and answer["error"] == "signature_recheck_pending"
            ), (status, answer)
            assert set(answer) == {"error", "message"}
            return
        assert status == 202, answer
        key = (expected["id"], datetime.fromisoformat(expected["channel"]["time"].replace("Z", "+00:00")))
        queued = queued_tasks(aws_stack.delivery_queue_url)
        if key in seen_events:
            assert queued == []  # a repeat: answered, not queued again
            return
        seen_events.add(key)
        assert len(queued) == 2 and {t.event_id for t in queued} == {expected["id"]}
        sent = base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"].encode()
        for task in queued:
            assert task.event_json == sent.decode()
            OPEN_MESSAGE.validate_python(json.loads(task.event_json))

    check()

    # And nothing a refused request sent is left in the queue
    assert drain(aws_stack.delivery_queue_url) == []
    assert sum(outcomes.values()) >= EXAMPLES * 0.95  # hypothesis may stop a little short
    assert outcomes.get(202, 0) > 100 and all(status < 500 for status in outcomes)
    print(json.dumps({"fuzz_requests": sum(outcomes.values()), "by_status": dict(sorted(outcomes.items()))}))

"""tests/support does what the tests rely on: events shaped like the samples, the handler the template
names, a context with a deadline, and waits that fail naming what did not happen."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from support.events import (
    INTEGRATION_ID,
    api_gateway_event,
    eventbridge_event,
    put_events_entry,
    sample,
    sqs_batch,
    sqs_record,
)
from support.handlers import FUNCTIONS, load_handler
from support.lambda_context import lambda_context
from support.waiting import wait_until

from relay.local.template import load_template

TEMPLATE = load_template()
FUNCTION_IDS = sorted(TEMPLATE.resources_of_type("AWS::Serverless::Function"))


# --- waiting --------------------------------------------------------------------------------------------


def test_wait_until_returns_what_the_condition_found() -> None:
    calls: list[int] = []

    def third_time() -> list[int]:
        calls.append(1)
        return calls if len(calls) == 3 else []

    assert wait_until(third_time, what="the third call") == [1, 1, 1]


def test_wait_until_fails_naming_what_did_not_happen() -> None:
    with pytest.raises(AssertionError, match=r"the receiver got the event: did not happen within 0.2 s"):
        wait_until(lambda: None, timeout=0.2, what="the receiver got the event")


# --- events ---------------------------------------------------------------------------------------------


def test_the_default_webhook_is_the_sample_signed_as_genesys_signed_it() -> None:
    built, recorded = api_gateway_event(), sample("apigw_text.json")
    assert built["body"] == recorded["body"] and built["isBase64Encoded"] is False
    assert built["headers"] == recorded["headers"]  # the sample's signature, computed independently here
    assert built["requestContext"]["http"] == recorded["requestContext"]["http"]
    assert built["pathParameters"] == {"integrationId": INTEGRATION_ID}


def test_a_webhook_carries_its_body_path_and_method() -> None:
    event = api_gateway_event({"id": "x"}, integration_id="other", method="GET", sign_with=None)
    assert event["body"] == '{"id":"x"}' and event["headers"]["content-length"] == "10"
    assert "x-hub-signature-256" not in event["headers"]
    assert event["pathParameters"] == {"integrationId": "other"}
    assert event["rawPath"] == event["requestContext"]["http"]["path"] == "/dev/webhooks/other"
    assert event["requestContext"]["http"]["method"] == "GET"


def test_a_body_that_is_not_utf8_arrives_base64_encoded_as_api_gateway_sends_it() -> None:
    event = api_gateway_event(b"\xff\xfe{}")
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"\xff\xfe{}"


def test_an_sqs_record_has_the_samples_shape_and_its_own_id() -> None:
    record = sqs_record({"a": 1}, receive_count=3, attributes={"relay-attempts": 2, "relay-note": "x"})
    recorded = sample("sqs_delivery_batch.json")["Records"][0]
    assert set(record) == set(recorded) and record["messageId"] != sqs_record("{}")["messageId"]
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    assert record["attributes"]["ApproximateReceiveCount"] == "3"
    attributes = record["messageAttributes"]
    assert attributes["relay-attempts"] == {
        "stringValue": "2",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "Number",
    }
    assert attributes["relay-note"]["dataType"] == "String"
    assert sqs_batch(record) == {"Records": [record]}


def test_a_put_events_entry_publishes_the_event() -> None:
    event = eventbridge_event(detail={"version": "2"})
    entry = put_events_entry(event, EventBusName="partner/bus")
    assert entry["Source"] == event["source"] and entry["DetailType"] == event["detail-type"]
    assert json.loads(entry["Detail"]) == {"version": "2"} and entry["EventBusName"] == "partner/bus"


# --- handlers and context -------------------------------------------------------------------------------


@pytest.mark.parametrize("logical_id", FUNCTION_IDS)
def test_the_loader_finds_the_handler_the_template_names(logical_id: str) -> None:
    function = TEMPLATE.function(logical_id)
    name = function.code_dir.name
    assert function.code_dir == FUNCTIONS / name
    assert (function.handler_module, function.handler_function) == (f"{name}_handler", "lambda_handler")
    # The slow lane runs the dispatcher's code: a test calling that code gets the fast lane's context.
    named = "DispatcherFunction" if function.environment.get("DISPATCH_LANE") == "slow" else logical_id
    assert lambda_context(name).function_name.rsplit("-", 1)[-1] == named


def test_each_load_is_a_new_container() -> None:
    assert load_handler("intake") is not load_handler("intake")


def test_a_missing_handler_is_named() -> None:
    with pytest.raises(FileNotFoundError, match="no handler for function 'nope'"):
        load_handler("nope")


def test_the_context_counts_down_from_the_timeout() -> None:
    context = lambda_context("dispatcher", timeout_seconds=5)
    assert 0 < context.get_remaining_time_in_millis() <= 5_000
    assert lambda_context("intake").aws_request_id != lambda_context("intake").aws_request_id
    assert lambda_context("dispatcher", timeout_seconds=0).get_remaining_time_in_millis() == 0

"""The local EventBridge path: PutEvents in, the template's rule, Lambda's asynchronous invocation with its
retries, and the on-failure destination (a real queue in moto). The function is a stand-in that records
events and fails or blocks on cue; tests/e2e/test_local_eventbridge.py runs the real intake."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from support.events import CONVERSATION_START_SAMPLE, EVENTS, eventbridge_event, put_events_entry, sample

from relay.cli import main as relay_main
from relay.local.api_adapter import ApiAdapter
from relay.local.aws_stack import LocalResources, local_client
from relay.local.eventbridge import PUT_EVENTS_PATH, LocalEventBridge
from relay.local.loopback import LoopbackServer

pytestmark = pytest.mark.integration

WAIT = 30.0  # bound on waiting for the asynchronous side; generous, not a performance claim


class Intake:
    """A stand-in IntakeFunction: records each event, fails the first ``failures`` calls, can be held."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures = 0
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        assert self.release.wait(WAIT), "the test never released the function"
        with self._lock:
            self.events.append(event)
            failing = len(self.events) <= self.failures
        if failing:
            raise ValueError(f"refused event {event['id']}")
        return {"status": "accepted"}


@pytest.fixture
def intake() -> Intake:
    return Intake()


@pytest.fixture
def eventbridge(aws_stack: LocalResources, intake: Intake) -> Iterator[LocalEventBridge]:
    bridge = LocalEventBridge(
        aws_stack.template,
        sqs=local_client("sqs", aws_stack.endpoint_url),
        handlers={"IntakeFunction": intake},
        retry_delays=(0.05, 0.1),
    )
    yield bridge
    intake.release.set()
    bridge.stop()


@pytest.fixture
def api(aws_stack: LocalResources, eventbridge: LocalEventBridge) -> Iterator[str]:
    """The local API serving PutEvents; yields the PutEvents URL."""
    with ApiAdapter(aws_stack.template, endpoints={PUT_EVENTS_PATH: eventbridge.handle_http}) as adapter:
        yield adapter.base_url + PUT_EVENTS_PATH


def invoke_config(aws_stack: LocalResources) -> dict[str, Any]:
    config: dict[str, Any] = aws_stack.template.resolve(aws_stack.template.properties("IntakeFunction"))[
        "EventInvokeConfig"
    ]
    return config


def failure_records(aws_stack: LocalResources) -> list[dict[str, Any]]:
    """What the template's on-failure destination queue holds."""
    arn = invoke_config(aws_stack)["DestinationConfig"]["OnFailure"]["Destination"]
    sqs = local_client("sqs", aws_stack.endpoint_url)
    url = sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[1])["QueueUrl"]
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


# --- PutEvents and the rule -------------------------------------------------------------------------------


def test_put_events_answers_before_the_function_runs_and_the_function_gets_an_eventbridge_event(
    api: str, eventbridge: LocalEventBridge, intake: Intake, aws_stack: LocalResources
) -> None:
    # Given a function that is held until the test lets it go
    intake.release.clear()
    published = eventbridge_event()

    # When Genesys' event is published
    answer = requests.post(api, json={"Entries": [put_events_entry(published)]}, timeout=10)

    # Then PutEvents has answered while the invocation is still waiting (asynchronous invocation)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["FailedEntryCount"] == 0
    (result,) = body["Entries"]
    assert intake.events == []

    # And once it runs, it receives the event EventBridge builds, with the EventId PutEvents returned
    intake.release.set()
    assert eventbridge.wait_idle(WAIT)
    (event,) = intake.events
    assert event == {
        "version": "0",
        "id": result["EventId"],
        "detail-type": published["detail-type"],
        "source": published["source"],
        "account": aws_stack.template.pseudo["AWS::AccountId"],
        "time": published["time"],
        "region": aws_stack.template.pseudo["AWS::Region"],
        "resources": published["resources"],
        "detail": published["detail"],
    }


def test_an_entry_no_rule_matches_is_accepted_and_goes_nowhere(
    api: str, eventbridge: LocalEventBridge, intake: Intake
) -> None:
    # Given a scheduler event (source aws.events), outside the rule's source prefix
    answer = requests.post(
        api, json={"Entries": [put_events_entry(sample("eventbridge_schedule.json"))]}, timeout=10
    )

    # Then it is accepted, and nothing is invoked
    assert answer.json()["FailedEntryCount"] == 0
    assert "EventId" in answer.json()["Entries"][0]
    assert eventbridge.wait_idle(WAIT)
    assert intake.events == []


def test_the_rule_is_the_templates_pattern_and_bus(aws_stack: LocalResources, intake: Intake) -> None:
    # Given the template's rule narrowed to another source prefix and listening on another bus
    template = aws_stack.template
    rule = template.document["Resources"]["IntakeFunction"]["Properties"]["Events"]["GenesysEventBridge"]
    rule["Properties"]["Pattern"] = {"source": [{"prefix": "custom."}], "detail-type": ["ping"]}
    rule["Properties"]["EventBusName"] = "arn:aws:events:us-east-1:123456789012:event-bus/partner/bus"
    bridge = LocalEventBridge(template, sqs=None, handlers={"IntakeFunction": intake})
    try:
        # When events are put on the default bus, on the rule's bus, and with another detail-type
        ping = {"Source": "custom.app", "DetailType": "ping", "Detail": "{}"}
        answer = bridge.put_events(
            [
                ping,
                {**ping, "EventBusName": "partner/bus"},
                {**ping, "EventBusName": "partner/bus", "DetailType": "pong"},
                put_events_entry(eventbridge_event(), EventBusName="partner/bus"),
            ]
        )
        assert bridge.wait_idle(WAIT)
    finally:
        bridge.stop()

    # Then only the entry on the rule's bus that matches its pattern was delivered
    assert answer["FailedEntryCount"] == 0
    assert [e["id"] for e in intake.events] == [answer["Entries"][1]["EventId"]]


@pytest.mark.parametrize(
    ("bad_entry", "code"),
    [
        pytest.param({"DetailType": "x", "Detail": "{}"}, "InvalidArgument", id="no-source"),
        pytest.param({"Source": "s", "Detail": "{}"}, "InvalidArgument", id="no-detail-type"),
        pytest.param({"Source": "s", "DetailType": "x"}, "InvalidArgument", id="no-detail"),
        pytest.param(
            {"Source": "s", "DetailType": "x", "Detail": "{nope"}, "MalformedDetail", id="detail-not-json"
        ),
        pytest.param(
            {"Source": "s", "DetailType": "x", "Detail": "[1]"}, "MalformedDetail", id="detail-not-object"
        ),
        pytest.param(
            {"Source": "s", "DetailType": "x", "Detail": '{"n": NaN}'}, "MalformedDetail", id="detail-nan"
        ),
        pytest.param(
            # PutEvents "will only process nested JSON up to 1000 levels deep" (its API reference)
            {"Source": "s", "DetailType": "x", "Detail": '{"a":' * 1001 + "1" + "}" * 1001},
            "MalformedDetail",
            id="detail-deeper-than-1000-levels",
        ),
        pytest.param(
            {"Source": "s", "DetailType": "x", "Detail": "{}", "Time": "yesterday"},
            "InvalidArgument",
            id="bad-time",
        ),
        pytest.param(
            {"Source": "s", "DetailType": "x", "Detail": "{}", "Resources": "arn"},
            "InvalidArgument",
            id="resources",
        ),
        pytest.param(
            {"Source": "s", "DetailType": "x", "Detail": "{}", "EventBusName": "elsewhere"},
            "ResourceNotFoundException",
            id="unknown-bus",
        ),
        pytest.param("not an object", "InvalidArgument", id="entry-not-object"),
    ],
)
def test_each_entry_is_refused_or_accepted_on_its_own(
    api: str, eventbridge: LocalEventBridge, intake: Intake, bad_entry: Any, code: str
) -> None:
    # Given a bad entry between two good ones
    good = put_events_entry(eventbridge_event())
    answer = requests.post(api, json={"Entries": [good, bad_entry, good]}, timeout=10).json()

    # Then only the bad one failed, with PutEvents' error shape, and the good ones were delivered
    assert answer["FailedEntryCount"] == 1
    first, refused, last = answer["Entries"]
    assert refused["ErrorCode"] == code and refused["ErrorMessage"]
    assert "EventId" in first and "EventId" in last
    assert eventbridge.wait_idle(WAIT)
    assert sorted(e["id"] for e in intake.events) == sorted([first["EventId"], last["EventId"]])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"Entries": []}', id="no-entries"),
        pytest.param(json.dumps({"Entries": [{}] * 11}).encode(), id="eleven-entries"),
        pytest.param(
            json.dumps(
                {"Entries": [{"Source": "s", "DetailType": "x", "Detail": json.dumps({"p": "x" * 300_000})}]}
            ).encode(),
            id="over-256-kib",
        ),
    ],
)
def test_a_malformed_request_is_a_validation_error(
    api: str, eventbridge: LocalEventBridge, intake: Intake, body: bytes
) -> None:
    answer = requests.post(api, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["__type"] == "ValidationException"
    assert eventbridge.wait_idle(WAIT)
    assert intake.events == []


def test_the_aws_sdk_can_publish_to_it(api: str, eventbridge: LocalEventBridge, intake: Intake) -> None:
    # Given boto3's EventBridge client pointed at the local PutEvents (it sends Time as epoch seconds)
    events = boto3.client(
        "events", endpoint_url=api, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    published = eventbridge_event()

    # When it puts the event
    answer = events.put_events(Entries=[put_events_entry(published)])

    # Then the function receives it with the same time
    assert answer["FailedEntryCount"] == 0
    assert eventbridge.wait_idle(WAIT)
    assert [e["time"] for e in intake.events] == [published["time"]]


# --- retries and the on-failure destination -------------------------------------------------------------


def test_a_failing_event_is_retried_then_recorded_on_the_failure_queue(
    api: str, eventbridge: LocalEventBridge, intake: Intake, aws_stack: LocalResources
) -> None:
    # Given a function that fails every time
    intake.failures = 100
    published = eventbridge_event()

    # When the event is published and every try is done
    answer = requests.post(api, json={"Entries": [put_events_entry(published)]}, timeout=10).json()
    event_id = answer["Entries"][0]["EventId"]
    assert eventbridge.wait_idle(WAIT)

    # Then it was tried 1 + MaximumRetryAttempts times (from the template)
    tries = 1 + int(invoke_config(aws_stack)["MaximumRetryAttempts"])
    assert [e["id"] for e in intake.events] == [event_id] * tries

    # And the on-failure queue holds Lambda's destination record for it
    (record,) = failure_records(aws_stack)
    assert record["version"] == "1.0"
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == tries
    assert record["requestContext"]["functionArn"].endswith("IntakeFunction:$LATEST")
    assert record["requestPayload"] == intake.events[0]
    assert record["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert record["responsePayload"] == {
        "errorType": "ValueError",
        "errorMessage": f"refused event {event_id}",
    }


def test_an_event_as_deep_as_put_events_takes_is_recorded_when_it_fails(
    api: str, eventbridge: LocalEventBridge, intake: Intake, aws_stack: LocalResources
) -> None:
    # Given a function that fails every time, and an event whose detail nests as deep as PutEvents
    # takes (1000 levels): accepted, it must end on the failure queue, never be lost
    intake.failures = 100
    published = eventbridge_event(detail=json.loads('{"a":' * 999 + "{}" + "}" * 999))

    # When the event is published and every try is done
    answer = requests.post(api, json={"Entries": [put_events_entry(published)]}, timeout=10).json()
    assert answer["FailedEntryCount"] == 0
    assert eventbridge.wait_idle(WAIT)

    # Then the on-failure queue holds its record, the event as it was delivered
    (record,) = failure_records(aws_stack)
    assert record["requestPayload"]["id"] == answer["Entries"][0]["EventId"]
    assert record["requestPayload"]["detail"] == published["detail"]


def test_an_event_that_succeeds_on_a_retry_leaves_no_failure_record(
    api: str, eventbridge: LocalEventBridge, intake: Intake, aws_stack: LocalResources
) -> None:
    intake.failures = 1
    requests.post(api, json={"Entries": [put_events_entry(eventbridge_event())]}, timeout=10)
    assert eventbridge.wait_idle(WAIT)
    assert len(intake.events) == 2
    assert failure_records(aws_stack) == []


# --- relay local put-event ------------------------------------------------------------------------------


def test_put_event_sends_a_sample_file_and_prints_the_answer(
    api: str,
    tmp_path: Path,
    eventbridge: LocalEventBridge,
    intake: Intake,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # When the CLI sends the sample event to the API, from a copy a Windows editor saved (a BOM first)
    api_url = api.removesuffix(PUT_EVENTS_PATH)
    saved = tmp_path / "event.json"
    saved.write_bytes(b"\xef\xbb\xbf" + (EVENTS / CONVERSATION_START_SAMPLE).read_bytes())
    code = relay_main(["local", "put-event", str(saved), "--api", api_url])

    # Then it prints PutEvents' answer, exits 0, and the function got the event
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["FailedEntryCount"] == 0
    assert eventbridge.wait_idle(WAIT)
    assert [e["id"] for e in intake.events] == [answer["Entries"][0]["EventId"]]
    assert intake.events[0]["detail"] == eventbridge_event()["detail"]


def test_put_event_exits_1_when_an_entry_fails_and_2_without_an_api(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"Entries": [{"Source": "s", "DetailType": "x", "Detail": "[]"}]}))
    assert relay_main(["local", "put-event", str(request), "--api", api.removesuffix(PUT_EVENTS_PATH)]) == 1
    assert json.loads(capsys.readouterr().out)["Entries"][0]["ErrorCode"] == "MalformedDetail"

    monkeypatch.delenv("RELAY_LOCAL_API", raising=False)
    assert relay_main(["local", "put-event", str(request)]) == 2
    assert "--api" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"[1, 2]"),
        (200, b'{"ok": true}'),
        (404, b"Not Found"),
        (500, b"<!doctype html><title>500</title>"),
    ],
    ids=["json-list", "another-service", "no-route", "html-error"],
)
def test_put_event_to_a_url_that_is_not_put_events_could_not_run_and_names_no_entry(
    capsys: pytest.CaptureFixture[str], status: int, body: bytes
) -> None:
    # Given an HTTP service that is not the local stack's PutEvents (a wrong --api)
    class NotPutEvents(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = LoopbackServer(NotPutEvents, name="not-put-events")
    url = f"http://127.0.0.1:{server.start()}"
    try:
        # When the CLI sends the sample event there
        code = relay_main(["local", "put-event", str(EVENTS / CONVERSATION_START_SAMPLE), "--api", url])
    finally:
        server.stop()

    # Then the command could not run (3), says why in one line, and prints no made-up PutEvents answer
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert captured.out == ""
    assert f"{url} did not answer as the local stack's PutEvents (HTTP {status})" in captured.err


def test_put_event_to_an_api_that_is_not_a_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = relay_main(["local", "put-event", str(EVENTS / CONVERSATION_START_SAMPLE), "--api", "notaurl"])

    assert code == 2
    assert "--api notaurl: not an http URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", [{"source": "genesys"}, "a string", 7, None], ids=["no-detail", "text", "number", "null"]
)
def test_put_event_answers_a_malformed_list_element_in_its_place_and_sends_the_others(
    api: str,
    eventbridge: LocalEventBridge,
    intake: Intake,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bad: Any,
) -> None:
    # Given a list of events, one of which is not an EventBridge event
    events = tmp_path / "events.json"
    events.write_text(json.dumps([eventbridge_event(), bad, eventbridge_event()]))

    # When the CLI sends it
    code = relay_main(["local", "put-event", str(events), "--api", api.removesuffix(PUT_EVENTS_PATH)])

    # Then, as PutEvents answers a request with one bad entry: that entry fails in its place, the
    # others go, and the command says something needs attention
    assert code == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["FailedEntryCount"] == 1
    assert ["EventId" in entry for entry in answer["Entries"]] == [True, False, True]
    assert answer["Entries"][1]["ErrorCode"]
    # naming what is wrong with it: a text, a number or null is no entry at all, not one without Source
    if not isinstance(bad, dict):
        assert answer["Entries"][1]["ErrorMessage"] == "An entry must be a JSON object."
    assert eventbridge.wait_idle(WAIT)
    assert sorted(e["id"] for e in intake.events) == sorted(answer["Entries"][i]["EventId"] for i in (0, 2))

"""The intake's logic with in-memory collaborators: every answer it gives, and what it queues."""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from support.emf import dimension_sets, emf_blobs, in_lambda
from support.events import (
    INTEGRATION_ID,
    SIGNATURE_SECRET,
    api_gateway_event,
    holder_of,
    sample,
    with_member_twice,
)
from test_intake_fakes import (
    PREVIOUS_SECRET,
    Integrations,
    Secrets,
    answer,
    make_entry,
    make_intake,
)

from relay.adapters.sqs import SqsQueues
from relay.errors import BadRequest, ConfigurationError, DependencyUnavailable
from relay.models.delivery import DeliveryTask
from relay.models.genesys import OPEN_MESSAGE
from relay.models.queue import MAX_BATCH_BYTES, OutgoingMessage, plan_batches
from relay.settings import Settings
from relay.testing.fakes import (
    CountingMetrics,
    InMemoryClaimCheckStore,
    InMemoryDeliveryQueue,
    InMemoryIdempotencyStore,
)
from relay.wiring.intake import build_intake


def tasks(queue: InMemoryDeliveryQueue) -> list[DeliveryTask]:
    return [DeliveryTask.model_validate_json(body) for body in queue.bodies]


def refusal(response: dict[str, Any]) -> tuple[int, str]:
    body = answer(response)
    assert set(body) == {"error", "message"} and body["message"]
    assert response["headers"]["content-type"] == "application/json"
    return response["statusCode"], body["error"]


# --- acceptance and fan-out -----------------------------------------------------------------------------


def test_one_task_per_target_disabled_included_carrying_the_event_as_received() -> None:
    # Given an integration with three targets, one disabled (its task is dead-lettered by the
    # dispatcher, so the event can reach it once it is enabled again)
    intake, queue = make_intake(
        integrations=Integrations(make_entry(("t-a", "t-b", "t-c"), disabled=("t-b",)))
    )
    message = sample("openmessaging_text.json")
    message["futureField"] = {"kept": True}

    # When Genesys posts a signed message
    event = api_gateway_event(message)
    response = intake.handle(event)

    # Then 202, and one task per target with the body's text untouched (unknown fields included)
    assert response["statusCode"] == 202
    queued = tasks(queue)
    assert sorted(t.target_id for t in queued) == ["t-a", "t-b", "t-c"]
    assert all(t.event_json == event["body"] and t.event_id == message["id"] for t in queued)
    assert all(t.integration_id == INTEGRATION_ID and t.event_source == "open-messaging" for t in queued)
    assert answer(response)["deliveryIds"] == [str(t.delivery_id) for t in queued]
    assert len({t.delivery_id for t in queued}) == 3


def test_tasks_carry_the_conversation_id_the_event_names_for_the_audit() -> None:
    # Given an Open Messaging message naming its conversation, and one that names none
    intake, queue = make_intake()
    named = sample("openmessaging_text.json")
    unnamed = sample("openmessaging_typing.json")
    unnamed.pop("conversationId", None)

    # When both are accepted
    intake.handle(api_gateway_event(named))
    intake.handle(api_gateway_event(unnamed))

    # Then the tasks say which conversation (so `relay deliveries show CONVERSATION_ID` finds them)
    by_event = {t.event_id: t.conversation_id for t in tasks(queue)}
    assert by_event == {named["id"]: named["conversationId"], unnamed["id"]: None}


def test_a_long_conversation_id_is_kept_whole_up_to_the_ids_bound_and_refused_past_it() -> None:
    # A 129-character conversation was accepted and delivered but left out of its tasks, so `relay
    # deliveries show CONVERSATION_ID` could not find it: now bounded like the ids, and kept.
    intake, queue = make_intake()
    longest = sample("openmessaging_text.json") | {"conversationId": "c" * 1024}
    too_long = sample("openmessaging_typing.json") | {"conversationId": "c" * 1025}

    kept = intake.handle(api_gateway_event(longest))
    refused = intake.handle(api_gateway_event(too_long))

    assert kept["statusCode"] == 202
    assert {t.conversation_id for t in tasks(queue)} == {"c" * 1024}
    assert refused["statusCode"] == 400 and answer(refused)["error"] == "invalid_message"
    assert "conversationId" in answer(refused)["message"]


def test_eventbridge_tasks_carry_the_event_bodys_conversation_id() -> None:
    intake, queue = make_intake(eventbridge_integration_id=INTEGRATION_ID)
    event = sample("eventbridge_conversation_start.json")
    intake.handle(event)
    assert {t.conversation_id for t in tasks(queue)} == {event["detail"]["eventBody"]["conversationId"]}


@pytest.mark.parametrize(
    "name", ["openmessaging_text.json", "openmessaging_typing.json", "openmessaging_receipt.json"]
)
def test_every_genesys_sample_is_accepted(name: str) -> None:
    intake, queue = make_intake()
    assert intake.handle(api_gateway_event(sample(name)))["statusCode"] == 202
    assert len(queue.bodies) == 2


def test_the_api_gateway_samples_are_signed_for_the_default_fixtures() -> None:
    for name in ("apigw_text.json", "apigw_typing.json", "apigw_receipt.json", "apigw_text_base64_hex.json"):
        intake, queue = make_intake()
        response = intake.handle(sample(name))
        assert response["statusCode"] == 202, (name, response)
        assert len(queue.bodies) == 2


def test_base64_encoded_bodies_are_decoded_before_the_signature_check() -> None:
    intake, queue = make_intake()
    event = api_gateway_event(base64_body=True)
    response = intake.handle(event)
    assert response["statusCode"] == 202
    assert tasks(queue)[0].event_json == base64.b64decode(event["body"]).decode()


def test_header_names_are_case_insensitive() -> None:
    event = api_gateway_event()
    signature = event["headers"].pop("x-hub-signature-256")
    event["headers"] = {"Content-Type": "Application/JSON; charset=utf-8", "X-Hub-Signature-256": signature}
    intake, _ = make_intake()
    assert intake.handle(event)["statusCode"] == 202


def test_previous_signature_secret_still_works_during_rotation() -> None:
    intake, _ = make_intake(get_secret=Secrets(current=SIGNATURE_SECRET, previous=PREVIOUS_SECRET))
    assert intake.handle(api_gateway_event(sign_with=PREVIOUS_SECRET))["statusCode"] == 202


class RotatedSecrets:
    """The cache still holds the old secret; Secrets Manager already has the rotated one."""

    def __init__(self) -> None:
        self.cached = Secrets(current=PREVIOUS_SECRET)
        self.fresh = Secrets(current=SIGNATURE_SECRET, previous=PREVIOUS_SECRET)
        self.refreshes = 0

    def refresh(self, name: str) -> Any:
        self.refreshes += 1
        return self.fresh(name)


def test_a_secret_rotated_behind_the_cache_is_re_read_once_and_accepted() -> None:
    # Given Genesys already signs with a secret this container's cache has not seen yet
    secrets = RotatedSecrets()
    clock = [0.0]
    intake, queue = make_intake(
        get_secret=secrets.cached, refresh_secret=secrets.refresh, monotonic=lambda: clock[0]
    )

    # When its event arrives, the secret is re-read and the event accepted
    assert intake.handle(api_gateway_event(sign_with=SIGNATURE_SECRET))["statusCode"] == 202
    assert secrets.refreshes == 1 and len(queue.bodies) == 2


def test_forged_signatures_re_read_the_secret_at_most_once_per_interval() -> None:
    secrets = RotatedSecrets()
    clock = [0.0]
    intake, _ = make_intake(
        get_secret=secrets.cached, refresh_secret=secrets.refresh, monotonic=lambda: clock[0]
    )
    # The first mismatch re-reads the secret, and is refused for good
    forged = api_gateway_event(sign_with="forged-secret-00000000")
    assert refusal(intake.handle(forged)) == (401, "signature_mismatch")
    # The others within the interval cannot be checked against a fresh secret: retry once it can be read
    for elapsed in (0.0, 2.5, 9.9):
        clock[0] = elapsed
        answer = intake.handle(forged)
        assert refusal(answer) == (429, "signature_recheck_pending")
        assert answer["headers"]["retry-after"] == str(math.ceil(10.0 - elapsed))
    assert secrets.refreshes == 1
    clock[0] = 10.0
    assert refusal(intake.handle(forged)) == (401, "signature_mismatch")
    assert secrets.refreshes == 2
    # missing or malformed signatures never cause a re-read
    intake.handle(api_gateway_event(sign_with=None))
    assert secrets.refreshes == 2


def test_a_forged_request_cannot_make_a_rotated_secrets_genuine_event_a_401() -> None:
    # Given a forged request that has just used the re-read (Secrets Manager still held the old secret)
    secrets = RotatedSecrets()
    secrets.fresh = secrets.cached
    clock = [0.0]
    intake, queue = make_intake(
        get_secret=secrets.cached, refresh_secret=secrets.refresh, monotonic=lambda: clock[0]
    )
    assert refusal(intake.handle(api_gateway_event(sign_with="forged-secret-00000000")))[0] == 401

    # When the secret is rotated and Genesys sends an event signed with the new one a second later
    secrets.fresh = Secrets(current=SIGNATURE_SECRET, previous=PREVIOUS_SECRET)
    clock[0] = 1.0
    genuine = api_gateway_event(sign_with=SIGNATURE_SECRET)
    first = intake.handle(genuine)

    # Then it is not refused for good: 429, which Genesys retries (about 5 s apart, 5 times), and the
    # retry after the interval is checked against the re-read secret and accepted
    assert refusal(first) == (429, "signature_recheck_pending") and queue.bodies == []
    clock[0] = 1.0 + int(first["headers"]["retry-after"])
    assert intake.handle(genuine)["statusCode"] == 202
    assert len(queue.bodies) == 2


def test_a_re_read_that_cannot_reach_secrets_manager_is_retried_not_refused() -> None:
    # Given a secret rotated behind the cache, and Secrets Manager unreachable when its first event
    # arrives (a forged request cannot be told from it: it is retried too, and never accepted)
    def unavailable(name: str) -> Any:
        raise DependencyUnavailable("Secrets Manager unavailable")

    intake, queue = make_intake(refresh_secret=unavailable)
    response = intake.handle(api_gateway_event(sign_with="rotated-secret-000000000"))

    # Then it is a 503 Genesys retries, not a 401 it never resends: the genuine event is not lost
    assert refusal(response) == (503, "service_unavailable")
    assert int(response["headers"]["retry-after"]) > 0
    assert queue.bodies == []


def test_task_bodies_are_ascii_so_sqs_accepts_any_unicode_text() -> None:
    # U+FFFE is valid Unicode that SQS refuses in a message body; escaped, it is plain ASCII
    message = sample("openmessaging_text.json")
    message["text"] = "caf\u00e9 \ufffe \U0001f600"
    event = api_gateway_event(json.dumps(message, ensure_ascii=False))
    intake, queue = make_intake()
    assert intake.handle(event)["statusCode"] == 202
    assert all(body.isascii() for body in queue.bodies)
    assert tasks(queue)[0].event_json == event["body"]


# --- rejections ---------------------------------------------------------------------------------------


def test_signature_missing_malformed_and_mismatched_are_told_apart() -> None:
    intake, queue = make_intake()
    missing = api_gateway_event(sign_with=None)
    malformed = api_gateway_event(headers={"x-hub-signature-256": "sha256=not-a-digest"})
    mismatched = api_gateway_event(sign_with="someone-elses-secret-0000")
    assert refusal(intake.handle(missing)) == (401, "signature_missing")
    assert refusal(intake.handle(malformed)) == (401, "signature_malformed")
    response = intake.handle(mismatched)
    assert refusal(response) == (401, "signature_mismatch")
    assert SIGNATURE_SECRET not in response["body"]
    assert queue.bodies == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1, col"),
        ('{"id": "a",\n  "x" 1}', "not valid JSON: Expecting ':' delimiter at line 2, column 7"),
        # json's own wording of these two ends in "at": said once, not "starting at at line 1".
        ('{"text": "abc', "not valid JSON: Unterminated string starting at line 1, column 10"),
        ('{"text": "a\x01"}', "not valid JSON: Invalid control character at line 1, column 12"),
        ("\ufeff" + '{"id": "a"}', "not valid JSON: it starts with a byte-order mark (U+FEFF)"),
        ("[1, 2]", "JSON object"),
        ('"text"', "JSON object"),
        ('{"text": "\\ud800"}', "surrogate"),
        ('{"id": NaN}', "not valid JSON"),
        ('{"id": -Infinity}', "not valid JSON"),
        ('{"id": ' + "9" * 5000 + "}", "not valid JSON"),
        # Deeper than Python's parser follows: valid JSON, or not, it is refused for its depth.
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64"),
        ('{"id": ' + '{"a": ' * 20_000 + "1" + "}" * 20_000 + "}", "nested deeper than 64"),
        ('{"id": ' + "[" * 50_000, "nested deeper than 64"),
        ('{"id": ' + "[" * 65 + "]" * 65 + "}", "nested deeper than 64"),
        # A repeated name hides the member before it from the parsed object, not from the text the
        # targets get: the limits hold for every member as written.
        ('{"text": "x\\ud800y", "text": "ok"}', "surrogate"),
        ('{"a": {"\\udc00": 1}, "a": 2}', "surrogate"),
        ('{"a": {"deep": ' + "[" * 70 + "]" * 70 + ', "deep": 1}}', "nested deeper than 64"),
        ('{"a": {"b": {"c": ' + "[" * 62 + "]" * 62 + ', "c": 1}, "b": 1}}', "nested deeper than 64"),
    ],
)
def test_malformed_json_is_400(body: str, fragment: str) -> None:
    intake, queue = make_intake()
    response = intake.handle(api_gateway_event(body))
    assert refusal(response) == (400, "bad_request")
    assert fragment in answer(response)["message"]
    assert queue.bodies == []


@pytest.mark.parametrize(
    "number",
    [
        "1e400",
        "-1e400",
        "1E+999",
        "123456789" * 40 + ".5",
        "NaN",
        "Infinity",
        "1" + "0" * 400,  # an integer as large as 1e400
        "-1" + "0" * 400,
        "1" + "0" * 5000,  # beyond what Python converts to int at all
    ],
)
def test_numbers_no_64_bit_float_holds_are_400_and_nothing_is_queued(number: str) -> None:
    # Given a genuine, signed message with a number a target could only read as Infinity (or null)
    body = json.dumps(sample("openmessaging_text.json"))[:-1] + ', "f": ' + number + "}"
    intake, queue = make_intake()

    # When it arrives, it is refused with a message that names the number
    response = intake.handle(api_gateway_event(body))
    assert refusal(response) == (400, "bad_request")
    assert number[:30] in answer(response)["message"] and "finite" in answer(response)["message"]
    assert queue.bodies == []


def test_numbers_are_queued_as_spelled() -> None:
    # 1E+2 is not re-spelled 100.0, and a long decimal keeps all its digits
    body = json.dumps(sample("openmessaging_text.json"))[:-1]
    body += (
        ', "n": [1E+2, 0.1000000000000000055511151231257827, -0, 1e308, ' + "9" * 30 + ", " + "9" * 308 + "]}"
    )
    intake, queue = make_intake()
    assert intake.handle(api_gateway_event(body))["statusCode"] == 202
    assert [t.event_json for t in tasks(queue)] == [body, body]


def test_a_message_for_another_integration_is_400_integration_mismatch() -> None:
    # Given a message whose channel.id names another integration than the URL
    message = sample("openmessaging_text.json")
    message["channel"]["id"] = "0d1b2c3a-0000-4000-8000-000000000099"
    intake, queue = make_intake()

    # When it is posted signed to this integration's URL, it is refused and nothing is queued
    response = intake.handle(api_gateway_event(message))
    assert refusal(response) == (400, "integration_mismatch")
    assert INTEGRATION_ID in answer(response)["message"]
    assert queue.bodies == []
    # and the signature comes first: unsigned, the same message is a 401
    assert refusal(intake.handle(api_gateway_event(message, sign_with=None))) == (401, "signature_missing")


# A member written twice: the relay's json reads the last one, a target's parser may keep the first. Each
# case: the sample, the member the relay reads (or the schema checks), and the value written first.
MEMBERS_READ = [
    ("openmessaging_text.json", ("id",), "another-event"),
    ("openmessaging_text.json", ("channel", "id"), "another-integration"),
    ("openmessaging_text.json", ("channel", "time"), "2026-03-25T13:20:06.000Z"),
    ("openmessaging_text.json", ("type",), "Receipt"),
    ("openmessaging_text.json", ("direction",), "Inbound"),
    ("openmessaging_text.json", ("originatingEntity",), "Bot"),
    ("openmessaging_text.json", ("conversationId",), "another-conversation"),
    ("openmessaging_text.json", ("channel", "to", "id"), "another-customer"),
    ("openmessaging_text.json", ("channel", "from", "id"), "another-customer"),
    ("openmessaging_typing.json", ("events", 0, "eventType"), "Other"),
    # not read by the relay, but checked by the schema
    ("openmessaging_text.json", ("channel",), {}),
    ("openmessaging_text.json", ("content", 0, "attachment", "mediaType"), "Video"),
    ("openmessaging_typing.json", ("events", 0, "typing", "duration"), "5000"),
    ("openmessaging_receipt.json", ("status",), "Read"),
    ("openmessaging_receipt.json", ("isFinalReceipt",), True),
]


@pytest.mark.parametrize(
    ("sample_name", "path", "first"), MEMBERS_READ, ids=[".".join(map(str, p)) for _, p, _ in MEMBERS_READ]
)
def test_a_member_the_relay_reads_written_twice_is_400_repeated_member(
    sample_name: str, path: tuple[str | int, ...], first: Any
) -> None:
    # Given a signed message that names the member twice, another value first
    body = with_member_twice(sample(sample_name), path, first)
    intake, queue = make_intake()

    # When it arrives
    response = intake.handle(api_gateway_event(body))

    # Then it is refused, naming the member's path but no value, and nothing is queued
    assert refusal(response) == (400, "repeated_member")
    said = answer(response)["message"]
    assert f'the member "{".".join(map(str, path))}" appears more than once' in said
    assert (first if isinstance(first, str) else json.dumps(first)) not in said
    assert queue.bodies == []


@pytest.mark.parametrize(("first", "last"), [("Text", "Event"), ("Event", "Receipt"), ("Receipt", "Text")])
def test_a_type_written_twice_is_400_repeated_member_even_when_the_last_fails_the_schema(
    first: str, last: str
) -> None:
    # Given a Text message whose "type" is written twice, the one Python's json keeps (the last) naming
    # a model the rest does not fit (an Event without events, a Receipt without status)
    message = sample("openmessaging_text.json")
    message["type"] = last
    body = with_member_twice(message, ("type",), first)
    intake, queue = make_intake()

    # When it arrives
    response = intake.handle(api_gateway_event(body))

    # Then it is refused for the repeated "type" (which model applies depends on the parser), not for
    # the last model's missing field, and nothing is queued
    assert refusal(response) == (400, "repeated_member")
    assert 'the member "type" appears more than once' in answer(response)["message"]
    assert queue.bodies == []


# Each case: the sample, and a member the relay neither reads nor checks there.
MEMBERS_NOT_READ = [
    ("openmessaging_text.json", ("x",)),
    ("openmessaging_text.json", ("channel", "x")),
    ("openmessaging_text.json", ("channel", "to", "x")),
    # a dict whose members the schema does not check
    ("openmessaging_text.json", ("channel", "metadata", "subType")),
    ("openmessaging_text.json", ("content", 0, "attachment", "x")),
    ("openmessaging_text.json", ("status",)),  # a Receipt's member, unknown to a Text message
    ("openmessaging_typing.json", ("events", 0, "x")),
]


@pytest.mark.parametrize(
    ("sample_name", "path"), MEMBERS_NOT_READ, ids=[".".join(map(str, p)) for _, p in MEMBERS_NOT_READ]
)
def test_a_member_the_relay_neither_reads_nor_checks_may_be_written_twice_and_is_queued_as_sent(
    sample_name: str, path: tuple[str | int, ...]
) -> None:
    # Given a signed message that names an unknown member twice
    message = sample(sample_name)
    holder_of(message, path)[path[-1]] = 2
    body = with_member_twice(message, path, 1)
    intake, queue = make_intake()

    # When it arrives, it is accepted and the targets get the text as sent, both members in it
    assert intake.handle(api_gateway_event(body))["statusCode"] == 202
    assert [t.event_json for t in tasks(queue)] == [body, body]


@pytest.mark.parametrize("separator", [",", ", ", " , "])
def test_one_signature_repeated_by_api_gateway_counts_once(separator: str) -> None:
    event = api_gateway_event()
    header = event["headers"]["x-hub-signature-256"]
    event["headers"]["x-hub-signature-256"] = header + separator + header
    intake, queue = make_intake()
    assert intake.handle(event)["statusCode"] == 202
    assert len(queue.bodies) == 2


@pytest.mark.parametrize("right_first", [True, False])
def test_two_different_signatures_are_malformed_even_if_one_matches(right_first: bool) -> None:
    event = api_gateway_event()
    right = event["headers"]["x-hub-signature-256"]
    wrong = api_gateway_event(sign_with="someone-elses-secret-0000")["headers"]["x-hub-signature-256"]
    event["headers"]["x-hub-signature-256"] = f"{right},{wrong}" if right_first else f"{wrong}, {right}"
    intake, queue = make_intake()
    assert refusal(intake.handle(event)) == (401, "signature_malformed")
    assert queue.bodies == []


@pytest.mark.parametrize("depth", [900, 950, 990, 999])
def test_deep_nesting_inside_a_valid_message_is_400_not_a_crash(depth: int) -> None:
    # Deep enough to parse but not to serialize again further down the stack: refused up front
    message = sample("openmessaging_text.json")
    body = json.dumps(message)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    intake, queue = make_intake()
    assert refusal(intake.handle(api_gateway_event(body))) == (400, "bad_request")
    assert queue.bodies == []


def test_nesting_up_to_the_limit_is_accepted() -> None:
    message = sample("openmessaging_text.json")
    message["deep"] = json.loads("[" * 62 + "]" * 62)
    intake, queue = make_intake()
    assert intake.handle(api_gateway_event(message))["statusCode"] == 202
    assert json.loads(tasks(queue)[0].event_json or "") == message


def test_a_body_that_is_not_utf8_is_400() -> None:
    intake, _ = make_intake()
    assert refusal(intake.handle(api_gateway_event(b"\xff\xfe{}", base64_body=True))) == (400, "bad_request")


def test_invalid_base64_is_400() -> None:
    event = api_gateway_event()
    event["isBase64Encoded"] = True
    event["body"] = "***not base64***"
    intake, _ = make_intake()
    assert refusal(intake.handle(event)) == (400, "bad_request")


def test_schema_invalid_message_is_400_naming_the_fields() -> None:
    message = sample("openmessaging_text.json")
    del message["channel"]["time"]
    message["content"][0]["attachment"].pop("mediaType")
    intake, queue = make_intake()
    response = intake.handle(api_gateway_event(message))
    assert refusal(response) == (400, "invalid_message")
    assert "channel.time" in answer(response)["message"]
    assert "content.0.attachment.mediaType" in answer(response)["message"]
    assert queue.bodies == []


def test_a_message_without_a_type_is_400_naming_type_as_the_missing_field() -> None:
    message = sample("openmessaging_text.json")
    del message["type"]
    intake, queue = make_intake()
    response = intake.handle(api_gateway_event(message))
    assert refusal(response) == (400, "invalid_message")
    said = answer(response)["message"]
    assert said.endswith("type: Field required"), said
    assert "discriminator" not in said and "(body)" not in said
    assert queue.bodies == []


def test_an_invalid_message_answer_names_the_problem_without_echoing_a_huge_value() -> None:
    message = sample("openmessaging_text.json")
    message["type"] = "T" * 200_000
    intake, queue = make_intake()
    response = intake.handle(api_gateway_event(message))
    assert refusal(response) == (400, "invalid_message")
    said = answer(response)["message"]
    assert "is not one of Text, Event, Receipt, Structured" in said and "characters left out" in said
    assert len(said) < 1_000
    assert queue.bodies == []


@pytest.mark.parametrize(
    ("written", "said"), [(None, "null"), ({"a": 1}, '{"a": 1}'), (5, "5"), ("Txt", '"Txt"')]
)
def test_a_type_no_model_takes_is_quoted_as_the_sender_wrote_it_in_json(written: object, said: str) -> None:
    message = sample("openmessaging_text.json")
    message["type"] = written
    intake, queue = make_intake()
    response = intake.handle(api_gateway_event(message))
    assert refusal(response) == (400, "invalid_message")
    assert answer(response)["message"].endswith(
        f"type: {said} is not one of Text, Event, Receipt, Structured"
    )
    assert queue.bodies == []


def _sent_with(sample_name: str, path: tuple[str | int, ...], value: Any) -> tuple[dict[str, Any], Any]:
    """The intake's answer to a sample message whose member at ``path`` holds ``value``, and its queue."""
    message = sample(sample_name)
    holder_of(message, path)[path[-1]] = value
    intake, queue = make_intake()
    return intake.handle(api_gateway_event(message)), queue


@pytest.mark.parametrize(
    ("sample_name", "path", "value", "said"),
    [
        ("openmessaging_text.json", ("channel",), None, "channel: Input should be a JSON object"),
        ("openmessaging_text.json", ("channel", "to"), [], "channel.to: Input should be a JSON object"),
        ("openmessaging_text.json", ("content", 0), "x", "content.0: Input should be a JSON object"),
        ("openmessaging_text.json", ("channel", "metadata"), [], "metadata: Input should be a JSON object"),
        ("openmessaging_typing.json", ("events", 0), 5, "events.0: Input should be a JSON object"),
        ("openmessaging_typing.json", ("events",), {}, "events: Input should be a JSON array"),
        ("openmessaging_receipt.json", ("reasons",), None, "reasons: Input should be a JSON array"),
    ],
)
def test_a_member_that_should_be_an_object_or_array_is_named_in_json_terms(
    sample_name: str, path: tuple[str | int, ...], value: Any, said: str
) -> None:
    # The sender wrote JSON: pydantic's "valid dictionary or instance of Content" names a Python type
    # and a class of the relay's own that Genesys never heard of.
    response, queue = _sent_with(sample_name, path, value)

    assert refusal(response) == (400, "invalid_message")
    message_text = answer(response)["message"]
    assert message_text.endswith(said), message_text
    assert "instance of" not in message_text and "dictionary" not in message_text
    assert queue.bodies == []


@pytest.mark.parametrize(
    ("sample_name", "path", "value"),
    [
        ("openmessaging_typing.json", ("events", 0, "typing", "duration"), "5000"),
        ("openmessaging_typing.json", ("events", 0, "typing", "duration"), True),
        ("openmessaging_receipt.json", ("isFinalReceipt",), "yes"),
        ("openmessaging_receipt.json", ("isFinalReceipt",), 1),
        ("openmessaging_text.json", ("content", 0, "attachment", "contentSizeBytes"), "1024"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_400_not_read_leniently(
    sample_name: str, path: tuple[str | int, ...], value: Any
) -> None:
    # Given a message whose integer or boolean field holds text (or another JSON type): the targets
    # would get it as sent, so it must not pass for the type the schema names
    response, queue = _sent_with(sample_name, path, value)

    assert refusal(response) == (400, "invalid_message")
    assert ".".join(str(step) for step in path) in answer(response)["message"]
    assert queue.bodies == []


def test_unknown_and_disabled_integrations_are_404() -> None:
    disabled = make_entry()
    disabled = type(disabled)(disabled.integration.model_copy(update={"enabled": False}), disabled.targets)
    intake, _ = make_intake()
    assert refusal(intake.handle(api_gateway_event(integration_id="nope"))) == (404, "unknown_integration")
    assert refusal(intake.handle(api_gateway_event(integration_id=""))) == (404, "unknown_integration")
    intake, _ = make_intake(integrations=Integrations(disabled))
    assert refusal(intake.handle(api_gateway_event())) == (404, "unknown_integration")


@pytest.mark.parametrize(
    "integration_id", ["x" * 5_000, "a/b", "\u00e9t\u00e9", "id with spaces", "-leading"]
)
def test_paths_that_cannot_name_an_integration_are_404_without_a_lookup(integration_id: str) -> None:
    # A DynamoDB key over 2 KiB would fail the Query: client input must not become a 503
    integrations = Integrations(make_entry())
    intake, _ = make_intake(integrations=integrations)
    assert refusal(intake.handle(api_gateway_event(integration_id=integration_id))) == (
        404,
        "unknown_integration",
    )
    assert integrations.lookups == 0


@pytest.mark.parametrize("base64_body", [False, True])
def test_bodies_over_the_limit_are_413_before_any_lookup(base64_body: bool) -> None:
    integrations = Integrations(make_entry())
    intake, _ = make_intake(integrations=integrations, max_body_bytes=1_000)
    message = sample("openmessaging_text.json")
    message["text"] = "x" * 2_000
    response = intake.handle(api_gateway_event(message, base64_body=base64_body))
    assert refusal(response) == (413, "payload_too_large")
    assert integrations.lookups == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "json"])
def test_wrong_content_type_is_415(content_type: str | None) -> None:
    event = api_gateway_event()
    if content_type is None:
        del event["headers"]["content-type"]
    else:
        event["headers"]["content-type"] = content_type
    intake, _ = make_intake()
    assert refusal(intake.handle(event)) == (415, "unsupported_media_type")


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "GZIP"])
def test_a_compressed_body_is_415_naming_its_content_encoding(coding: str) -> None:
    event = api_gateway_event()
    event["headers"]["content-encoding"] = coding
    intake, queue = make_intake()
    response = intake.handle(event)
    assert refusal(response) == (415, "unsupported_media_type")
    assert (
        answer(response)["message"]
        == f"Content-Encoding {coding.lower()} is not accepted: send the body uncompressed"
    )
    assert queue.bodies == []


def test_content_encoding_identity_is_the_body_as_it_is() -> None:
    event = api_gateway_event()
    event["headers"]["content-encoding"] = "identity"
    intake, _ = make_intake()
    assert intake.handle(event)["statusCode"] == 202


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(method: str) -> None:
    intake, _ = make_intake()
    assert refusal(intake.handle(api_gateway_event(method=method))) == (405, "method_not_allowed")


def test_rejections_are_counted_by_reason() -> None:
    metrics = CountingMetrics()
    intake, _ = make_intake(metrics=metrics)
    intake.handle(api_gateway_event(sign_with=None))
    intake.handle(api_gateway_event(method="GET"))
    intake.handle(api_gateway_event())
    assert metrics.counts[("EventsRejected", "signature_missing")] == 1
    assert metrics.counts[("EventsRejected", "method_not_allowed")] == 1
    assert metrics.counts[("EventsAccepted", None)] == 1
    assert metrics.counts[("TasksQueued", None)] == 2


# --- exactly once in the queue --------------------------------------------------------------------------


def test_a_genesys_retry_is_answered_the_same_and_not_queued_again() -> None:
    metrics = CountingMetrics()
    intake, queue = make_intake(metrics=metrics)
    first = intake.handle(api_gateway_event())
    repeat = intake.handle(api_gateway_event())
    assert first["statusCode"] == repeat["statusCode"] == 202
    assert first["body"] == repeat["body"]
    assert len(queue.bodies) == 2
    assert metrics.counts[("EventsDuplicate", None)] == 1


def test_an_accepted_event_costs_two_idempotency_writes_its_claim_and_its_answer() -> None:
    store = InMemoryIdempotencyStore()
    intake, queue = make_intake(idempotency=store)
    for number in range(5):
        message = sample("openmessaging_text.json")
        message["id"] = f"event-{number}"
        assert intake.handle(api_gateway_event(message))["statusCode"] == 202
    assert store.writes == 10 and len(queue.bodies) == 10


def test_a_repeat_long_after_the_lease_gets_the_first_answer_and_queues_nothing() -> None:
    # Given an event accepted, and its claim's lease long over
    now = [1_000_000.0]
    store = InMemoryIdempotencyStore(lease_seconds=10, clock=lambda: now[0])
    intake, queue = make_intake(idempotency=store)
    first = intake.handle(api_gateway_event())
    now[0] += 600

    # When the same signed request arrives again (a 202 Genesys never saw, or a replay)
    second = intake.handle(api_gateway_event())

    # Then it gets the first answer and nothing more is queued
    assert second["statusCode"] == 202 and answer(second) == answer(first)
    assert len(queue.bodies) == 2


class ProcessDied(BaseException):
    """Stands for the Lambda process dying mid-queue: no handler below the runtime catches it."""


class CutOffQueue(InMemoryDeliveryQueue):
    """Takes the first body of the first send, then the attempt dies."""

    def __init__(self) -> None:
        super().__init__()
        self.cut_off = True

    def send(self, bodies: Sequence[str]) -> None:
        if self.cut_off:
            self.cut_off = False
            super().send(bodies[:1])
            raise ProcessDied
        super().send(bodies)


class DyingStore(InMemoryIdempotencyStore):
    """A dying process releases nothing: the claim outlives the attempt."""

    def release(self, claim: Any) -> None:
        pass


def test_an_attempt_cut_off_mid_queue_is_completed_by_a_retry_after_the_lease() -> None:
    # Given an attempt that claimed the event, queued one of its two tasks and died
    now = [1_000_000.0]
    store = DyingStore(lease_seconds=10, clock=lambda: now[0])
    queue = CutOffQueue()
    intake, _ = make_intake(idempotency=store, queue=queue)
    with pytest.raises(ProcessDied):
        intake.handle(api_gateway_event())

    # When Genesys retries (it got no 2xx): once inside the lease, once after it
    inside = intake.handle(api_gateway_event())
    now[0] += 11
    after = intake.handle(api_gateway_event())

    # Then the first retry queues nothing (the attempt might still be live), the later one queues every
    # task, and the task queued twice is the same delivery
    assert refusal(inside) == (429, "duplicate_in_progress")
    assert after["statusCode"] == 202
    delivered = {(t.target_id, str(t.delivery_id)) for t in tasks(queue)}
    assert len(queue.bodies) == 3 and len(delivered) == 2
    assert sorted(d for _, d in delivered) == sorted(answer(after)["deliveryIds"])


@pytest.mark.parametrize(
    "time",
    [
        1_774_444_805,  # pydantic's datetime would read it as a Unix time
        1_774_444_805.5,
        True,
        None,
        "2026-03-25T13:20:05.493",  # no offset: RFC 3339 requires one
        "2026-03-25 13:20:05.493Z",
        "2026-03-25T13:20:60Z",
        "2026-02-30T13:20:05Z",
        "2026-03-25T13:20:05+24:00",
        "25/03/2026 13:20:05",
    ],
)
def test_channel_time_must_be_an_rfc3339_date_time_string_with_an_offset(time: Any) -> None:
    message = sample("openmessaging_typing.json")
    message["channel"]["time"] = time
    intake, queue = make_intake()
    response = intake.handle(api_gateway_event(message))
    assert refusal(response) == (400, "invalid_message")
    assert "channel.time" in answer(response)["message"]
    assert queue.bodies == []


@pytest.mark.parametrize(
    "time", ["2026-03-25t13:20:05.493z", "2026-03-25T15:20:05+02:00", "2026-03-25T13:20:05.1234567-00:00"]
)
def test_any_rfc3339_spelling_with_an_offset_is_accepted(time: str) -> None:
    message = sample("openmessaging_typing.json")
    message["channel"]["time"] = time
    intake, _ = make_intake()
    assert intake.handle(api_gateway_event(message))["statusCode"] == 202


def test_one_instant_spelled_three_ways_is_one_event() -> None:
    # Given an event accepted with channel.time in UTC
    intake, queue = make_intake()
    message = sample("openmessaging_text.json")
    message["channel"]["time"] = "2026-03-25T10:00:00Z"
    first = intake.handle(api_gateway_event(message))
    assert first["statusCode"] == 202 and len(queue.bodies) == 2

    # When the same message arrives with the same instant spelled otherwise
    for spelling in ("2026-03-25T10:00:00.000Z", "2026-03-25T12:00:00+02:00", "2026-03-25T05:30:00.0-04:30"):
        message["channel"]["time"] = spelling
        repeat = intake.handle(api_gateway_event(message))

        # Then it gets the first answer and nothing more is queued
        assert repeat["statusCode"] == 202 and repeat["body"] == first["body"], spelling
    assert len(queue.bodies) == 2


def test_instants_a_millisecond_apart_or_less_are_different_events() -> None:
    intake, queue = make_intake()
    message = sample("openmessaging_text.json")
    for time in ("2026-03-25T10:00:00.000Z", "2026-03-25T10:00:00.001Z", "2026-03-25T10:00:00.0000001Z"):
        message["channel"]["time"] = time
        assert intake.handle(api_gateway_event(message))["statusCode"] == 202
    assert len({answer["deliveryId"] for answer in map(json.loads, queue.bodies)}) == 6


def test_same_id_with_another_channel_time_is_a_new_event() -> None:
    intake, queue = make_intake()
    message = sample("openmessaging_text.json")
    intake.handle(api_gateway_event(message))
    message["channel"]["time"] = "2026-03-25T13:21:00.000Z"
    assert intake.handle(api_gateway_event(message))["statusCode"] == 202
    assert len(queue.bodies) == 4


class FlakyQueue(InMemoryDeliveryQueue):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send(self, bodies: Sequence[str]) -> None:
        if self.failures:
            self.failures -= 1
            raise DependencyUnavailable("queue down", retry_after_seconds=7)
        super().send(bodies)


def test_when_queueing_fails_the_answer_is_503_and_the_repeat_can_queue() -> None:
    intake, queue = make_intake(queue=FlakyQueue(failures=1))
    failed = intake.handle(api_gateway_event())
    assert failed["statusCode"] == 503
    assert failed["headers"]["retry-after"] == "7"
    assert queue.bodies == []
    repeat = intake.handle(api_gateway_event())
    assert repeat["statusCode"] == 202
    assert len(queue.bodies) == 2


class BuggyQueue(InMemoryDeliveryQueue):
    def send(self, bodies: Sequence[str]) -> None:
        raise RuntimeError("a bug in the release, not a dependency")


# In Lambda (AWS_LAMBDA_FUNCTION_NAME/VERSION set) the count names the release too; elsewhere it cannot.
@pytest.mark.parametrize("function_name", [None, "relay-prod-IntakeFunction-x1"], ids=["local", "lambda"])
def test_a_bug_is_a_500_counted_for_the_rollback_and_a_dependency_outage_is_not(
    capsys: pytest.CaptureFixture[str], function_name: str | None
) -> None:
    # A 500 is a normal return, not a Lambda error: the count is what a canary's rollback watches.
    metrics = CountingMetrics()
    intake, _ = make_intake(queue=BuggyQueue(), metrics=metrics)
    assert refusal(intake.handle(api_gateway_event())) == (500, "internal_error")
    assert metrics.counts[("InternalErrors", None)] == 1
    unavailable = CountingMetrics()
    intake, _ = make_intake(queue=FlakyQueue(failures=1), metrics=unavailable)
    assert intake.handle(api_gateway_event())["statusCode"] == 503
    assert ("InternalErrors", None) not in unavailable.counts

    # As the function counts it (the recorder relay.wiring builds from its settings): written at once,
    # per service, and in Lambda per release as well, so that the intake's deploy rolls back on its new
    # version's 500s only, never on those of the old version it replaces
    capsys.readouterr()
    wired = build_intake(
        Settings.model_validate(in_lambda(function_name)),
        integrations=Integrations(make_entry()),
        secrets=Secrets(),
        queue=BuggyQueue(),
        idempotency=InMemoryIdempotencyStore(),
        claim_checks=InMemoryClaimCheckStore(),
    )
    assert refusal(wired.handle(api_gateway_event())) == (500, "internal_error")
    (counted,) = [doc for doc in emf_blobs(capsys.readouterr().out) if "InternalErrors" in doc]
    release = [{"service": "relay", "function": function_name, "version": "7"}] if function_name else []
    assert dimension_sets(counted) == [{"service": "relay"}, *release]


class BlockingQueue(InMemoryDeliveryQueue):
    """Holds the first send until released, so a concurrent repeat arrives mid-queueing."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def send(self, bodies: Sequence[str]) -> None:
        self.entered.set()
        assert self.release.wait(5)
        super().send(bodies)


def test_a_concurrent_repeat_is_not_queued_twice_and_gets_429_while_in_progress() -> None:
    queue = BlockingQueue()
    intake, _ = make_intake(queue=queue)
    results: list[dict[str, Any]] = []
    first = threading.Thread(target=lambda: results.append(intake.handle(api_gateway_event())))
    first.start()
    assert queue.entered.wait(5)
    busy = intake.handle(api_gateway_event())
    queue.release.set()
    first.join(5)
    assert busy["statusCode"] == 429 and busy["headers"]["retry-after"] == "1"
    assert results[0]["statusCode"] == 202
    assert len(queue.bodies) == 2
    # and once the first finished, the repeat gets the same 202
    assert intake.handle(api_gateway_event())["body"] == results[0]["body"]


def test_many_concurrent_repeats_queue_exactly_once() -> None:
    intake, queue = make_intake()
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(intake.handle(api_gateway_event())["statusCode"]))
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(queue.bodies) == 2
    assert set(statuses) <= {202, 429} and 202 in statuses


class FailingIdempotency(InMemoryIdempotencyStore):
    def __init__(self, *, claim_fails: bool = False, complete_fails: bool = False) -> None:
        super().__init__()
        self.claim_fails = claim_fails
        self.complete_fails = complete_fails

    def claim(self, key: str) -> Any:
        if self.claim_fails:
            raise DependencyUnavailable("idempotency table down")
        return super().claim(key)

    def complete(self, claim: Any, response: str) -> None:
        if self.complete_fails:
            raise DependencyUnavailable("idempotency table down")
        super().complete(claim, response)


def test_idempotency_table_unavailable_before_queueing_is_503_and_nothing_queued() -> None:
    intake, queue = make_intake(idempotency=FailingIdempotency(claim_fails=True))
    response = intake.handle(api_gateway_event())
    assert response["statusCode"] == 503 and "retry-after" in response["headers"]
    assert queue.bodies == []


def test_idempotency_table_failing_after_queueing_still_answers_202() -> None:
    intake, queue = make_intake(idempotency=FailingIdempotency(complete_fails=True))
    assert intake.handle(api_gateway_event())["statusCode"] == 202
    assert len(queue.bodies) == 2


def test_repeats_after_the_record_expired_are_queued_again_with_the_same_delivery_ids() -> None:
    now = [1_000_000.0]
    intake, queue = make_intake(idempotency=InMemoryIdempotencyStore(ttl_seconds=60, clock=lambda: now[0]))
    first = intake.handle(api_gateway_event())
    now[0] += 61
    second = intake.handle(api_gateway_event())
    assert len(queue.bodies) == 4
    assert answer(first)["deliveryIds"] == answer(second)["deliveryIds"]


# --- dependencies ---------------------------------------------------------------------------------------


class DownIntegrations:
    def get(self, integration_id: str) -> Any:
        raise DependencyUnavailable("targets table unavailable")


def down_secrets(name: str) -> Any:
    raise DependencyUnavailable("Secrets Manager unavailable")


@pytest.mark.parametrize("override", [{"integrations": DownIntegrations()}, {"get_secret": down_secrets}])
def test_dynamodb_or_secrets_unavailable_is_503_with_retry_after(override: dict[str, Any]) -> None:
    intake, queue = make_intake(**override)
    response = intake.handle(api_gateway_event())
    assert response["statusCode"] == 503
    assert int(response["headers"]["retry-after"]) > 0
    assert answer(response)["error"] == "service_unavailable"
    assert queue.bodies == []


class FakeSqs:
    """A boto3 SQS client stand-in that fails chosen entries for the first ``failing_calls`` calls."""

    def __init__(self, failing_calls: int, fail_every: int = 2) -> None:
        self.failing_calls = failing_calls
        self.fail_every = fail_every
        self.calls: list[list[str]] = []
        self.stored: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:  # noqa: N803
        self.calls.append([entry["Id"] for entry in Entries])
        failing = self.failing_calls > 0
        self.failing_calls -= 1
        failed = []
        for index, entry in enumerate(Entries):
            if failing and index % self.fail_every == 0:
                failed.append({"Id": entry["Id"], "Code": "InternalError", "SenderFault": False})
            else:
                self.stored.append(entry["MessageBody"])
        return {"Successful": [], "Failed": failed}


def test_per_entry_batch_failures_are_retried_until_every_message_is_queued() -> None:
    sqs = FakeSqs(failing_calls=2)
    queue = SqsQueues(sqs, delivery_queue_url="https://sqs/q", sleep=lambda s: None)
    target_ids = tuple(f"t-{i:02d}" for i in range(12))
    intake, _ = make_intake(queue=queue, integrations=Integrations(make_entry(target_ids)))
    response = intake.handle(api_gateway_event())
    assert response["statusCode"] == 202
    assert sorted(json.loads(body)["targetId"] for body in sqs.stored) == list(target_ids)
    assert len(sqs.calls) > 2  # 12 targets -> 2 batches, plus retries of the failed entries


def test_per_entry_failures_that_persist_are_503_and_the_repeat_can_queue() -> None:
    sqs = FakeSqs(failing_calls=3)
    queue = SqsQueues(sqs, delivery_queue_url="https://sqs/q", sleep=lambda s: None)
    intake, _ = make_intake(queue=queue)
    assert intake.handle(api_gateway_event())["statusCode"] == 503
    assert intake.handle(api_gateway_event())["statusCode"] == 202
    assert len({json.loads(body)["deliveryId"] for body in sqs.stored}) == 2


def test_batches_respect_sqs_count_and_size_limits() -> None:
    small = [OutgoingMessage(str(i), "x" * 100) for i in range(25)]
    assert [len(batch) for batch in plan_batches(small)] == [10, 10, 5]
    big = [OutgoingMessage(str(i), "x" * 100_000) for i in range(5)]
    batches = plan_batches(big)
    assert all(sum(len(m.body) for m in batch) <= MAX_BATCH_BYTES for batch in batches)
    assert sorted(int(m.entry_id) for batch in batches for m in batch) == list(range(5))


# --- claim check ------------------------------------------------------------------------------------------


def test_bodies_too_large_for_one_sqs_message_are_claim_checked() -> None:
    # Given an inline limit smaller than the message
    store = InMemoryClaimCheckStore(bucket="audit")
    intake, queue = make_intake(claim_checks=store, max_inline_body_bytes=2_000)
    message = sample("openmessaging_text.json")
    message["text"] = "y" * 3_000
    event = api_gateway_event(message)

    # When it arrives
    response = intake.handle(event)

    # Then the raw body is stored once under events/ and every task refers to it
    assert response["statusCode"] == 202 and answer(response)["claimCheck"] is True
    assert len(store.objects) == 1
    key, stored = next(iter(store.objects.items()))
    assert key.startswith(f"events/{INTEGRATION_ID}/") and stored == event["body"].encode()
    queued = tasks(queue)
    assert len(queued) == 2
    assert all(t.event is None and t.event_ref is not None and t.event_ref.key == key for t in queued)


def test_long_escaped_ids_count_toward_the_inline_limit() -> None:
    # Given ids as long as the schema allows, each character 12 bytes once ASCII-escaped, and an event
    # that fits the inline limit with 1 KiB to spare but not with those ids beside it
    limit = 40_000
    store = InMemoryClaimCheckStore(bucket="audit")
    intake, queue = make_intake(claim_checks=store, max_inline_body_bytes=limit)
    message = sample("openmessaging_text.json") | {"id": "😀" * 1024, "conversationId": "😀" * 1024}
    message["text"] = ""
    spare = limit - 1_024 - len(json.dumps(json.dumps(message, separators=(",", ":"))))
    message["text"] = "y" * (spare - 100)

    # When it arrives
    response = intake.handle(api_gateway_event(message))

    # Then it is claim-checked: no task is larger than the limit (SQS would refuse it: 503 for good)
    assert response["statusCode"] == 202 and answer(response)["claimCheck"] is True
    assert queue.bodies and all(len(body) <= limit for body in queue.bodies)


def test_without_a_claim_check_store_large_bodies_are_413() -> None:
    intake, queue = make_intake(claim_checks=None, max_inline_body_bytes=2_000)
    message = sample("openmessaging_text.json")
    message["text"] = "y" * 3_000
    assert refusal(intake.handle(api_gateway_event(message))) == (413, "payload_too_large")
    assert queue.bodies == []


# --- EventBridge ----------------------------------------------------------------------------------------


def test_eventbridge_events_fan_out_to_the_configured_integration() -> None:
    intake, queue = make_intake(eventbridge_integration_id=INTEGRATION_ID)
    event = sample("eventbridge_conversation_start.json")
    result = intake.handle(event)
    queued = tasks(queue)
    assert len(queued) == 2 and result["deliveryIds"] == [str(t.delivery_id) for t in queued]
    assert all(t.event_source == "eventbridge" and t.event_id == event["id"] for t in queued)
    # serialised once, compact, in UTF-8 (the runtime handed over a dict: there is no text to keep)
    assert {t.event_json for t in queued} == {json.dumps(event, separators=(",", ":"), ensure_ascii=False)}
    # A redelivery of the same EventBridge event is not queued again
    intake.handle(event)
    assert len(queue.bodies) == 2


def test_eventbridge_failures_raise_so_lambda_retries_them() -> None:
    event = sample("eventbridge_conversation_start.json")
    unconfigured, _ = make_intake()
    with pytest.raises(ConfigurationError):
        unconfigured.handle(event)
    down, _ = make_intake(eventbridge_integration_id=INTEGRATION_ID, queue=FlakyQueue(failures=1))
    with pytest.raises(DependencyUnavailable):
        down.handle(event)
    retried = down.handle(event)  # Lambda's retry of the same event now queues it
    assert len(retried["deliveryIds"]) == 2
    invalid = dict(event, detail={"topicName": "x"})
    with pytest.raises(BadRequest):
        down.handle(invalid)


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
def test_eventbridge_events_with_non_finite_numbers_raise_and_queue_nothing(number: float) -> None:
    # The runtime's json reads 1e400 and Infinity as inf: the event cannot be delivered as JSON
    event = sample("eventbridge_conversation_start.json")
    event["detail"]["eventBody"]["score"] = number
    intake, queue = make_intake(eventbridge_integration_id=INTEGRATION_ID)
    with pytest.raises(BadRequest, match="NaN or Infinity"):
        intake.handle(event)
    assert queue.bodies == []


@pytest.mark.parametrize("digits", [310, 400])
def test_eventbridge_events_with_an_integer_no_float_holds_raise_and_queue_nothing(digits: int) -> None:
    # json.dumps writes such an integer as it is; the dispatcher would refuse it as poison for every target
    event = sample("eventbridge_conversation_start.json")
    event["detail"]["eventBody"]["score"] = 10 ** (digits - 1)
    intake, queue = make_intake(eventbridge_integration_id=INTEGRATION_ID)
    with pytest.raises(BadRequest, match="cannot be delivered: 1000.* is not a finite number"):
        intake.handle(event)
    assert queue.bodies == []


def test_eventbridge_events_with_the_largest_integers_a_float_holds_are_queued() -> None:
    event = sample("eventbridge_conversation_start.json")
    event["detail"]["eventBody"]["score"] = 10**300
    intake, queue = make_intake(eventbridge_integration_id=INTEGRATION_ID)
    assert len(intake.handle(event)["deliveryIds"]) == len(queue.bodies) > 0


def test_an_event_that_is_neither_http_nor_eventbridge_raises() -> None:
    intake, _ = make_intake()
    with pytest.raises(ConfigurationError):
        intake.handle({"Records": []})


def test_every_queued_event_is_a_valid_open_message() -> None:
    intake, queue = make_intake()
    names = ("openmessaging_text.json", "openmessaging_typing.json", "openmessaging_receipt.json")
    answers = [intake.handle(api_gateway_event(sample(name))) for name in names]
    assert [answer["statusCode"] for answer in answers] == [202, 202, 202]
    queued = tasks(queue)
    # every event reached the queue (one task per enabled target), so the check below is not vacuous
    assert {task.event_id for task in queued} == {sample(name)["id"] for name in names}
    for task in queued:
        OPEN_MESSAGE.validate_python(json.loads(task.event_json or ""))


def test_base64_size_guard_does_not_refuse_bodies_at_the_limit() -> None:
    message = sample("openmessaging_typing.json")
    body = json.dumps(message, separators=(",", ":")).encode()
    intake, _ = make_intake(max_body_bytes=len(body))
    event = api_gateway_event(message, base64_body=True)
    assert base64.b64decode(event["body"]) == body
    assert intake.handle(event)["statusCode"] == 202

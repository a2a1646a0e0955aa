"""The Genesys models: every sample validates, unknown fields are kept, broken messages name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from support.events import holder_of, sample

from relay.models.genesys import (
    OPEN_MESSAGE,
    EventMessage,
    GenesysEventBridgeEvent,
    ReceiptMessage,
    TextMessage,
    utc_instant,
)


def test_text_sample_with_an_attachment() -> None:
    message = OPEN_MESSAGE.validate_python(sample("openmessaging_text.json"))
    assert isinstance(message, TextMessage)
    assert message.text and message.content[0].attachment is not None
    assert message.content[0].attachment.media_type == "File"
    assert message.channel.from_ is not None and message.channel.from_.nickname == "Acme Open Channel"


def test_typing_event_sample() -> None:
    message = OPEN_MESSAGE.validate_python(sample("openmessaging_typing.json"))
    assert isinstance(message, EventMessage)
    assert message.events[0].event_type == "Typing"
    assert message.events[0].typing is not None and message.events[0].typing.duration == 5000


def test_receipt_sample() -> None:
    message = OPEN_MESSAGE.validate_python(sample("openmessaging_receipt.json"))
    assert isinstance(message, ReceiptMessage)
    assert message.status == "Delivered" and message.is_final_receipt is False


def test_unknown_fields_are_kept_at_every_level() -> None:
    # Given a message with fields Genesys may add one day
    data = sample("openmessaging_text.json")
    data["brandNewField"] = {"x": 1}
    data["channel"]["newChannelField"] = "kept"
    data["content"][0]["attachment"]["sha256"] = "abc"

    # When it is validated
    message = OPEN_MESSAGE.validate_python(data)

    # Then nothing was dropped
    dumped = message.model_dump(by_alias=True, mode="json")
    assert dumped["brandNewField"] == {"x": 1}
    assert dumped["channel"]["newChannelField"] == "kept"
    assert dumped["content"][0]["attachment"]["sha256"] == "abc"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("id"), "id"),
        (lambda d: d["channel"].pop("time"), "channel.time"),
        (lambda d: d["channel"].update(time="not a time"), "channel.time"),
        (lambda d: d["channel"].update(time=1_774_444_805), "channel.time"),
        (lambda d: d["channel"].update(time="2026-03-25T13:20:05.493"), "channel.time"),
        (lambda d: d.update(type="Unknown"), "type"),
        (lambda d: d.update(text="", content=[]), "Text"),
        (lambda d: d["content"][0]["attachment"].pop("mediaType"), "content.0.attachment.mediaType"),
    ],
)
def test_invalid_messages_name_the_failing_field(change: Any, field: str) -> None:
    data = sample("openmessaging_text.json")
    change(data)
    with pytest.raises(ValidationError) as caught:
        OPEN_MESSAGE.validate_python(data)
    assert field in str(caught.value)


def _renamed(data: dict[str, Any], path: tuple[str | int, ...], name: str) -> None:
    """Move the member at ``path`` to ``name`` in the same object."""
    holder = holder_of(data, path)
    holder[name] = holder.pop(path[-1])


@pytest.mark.parametrize(
    ("sample_name", "path", "python_name", "missing"),
    [
        ("openmessaging_typing.json", ("events", 0, "eventType"), "event_type", "events.0.eventType"),
        (
            "openmessaging_text.json",
            ("content", 0, "attachment", "mediaType"),
            "media_type",
            "content.0.attachment.mediaType",
        ),
        ("eventbridge_conversation_start.json", ("detail-type",), "detail_type", "detail-type"),
        ("eventbridge_conversation_start.json", ("detail", "eventBody"), "event_body", "detail.eventBody"),
    ],
)
def test_a_field_under_its_python_name_is_not_the_genesys_field(
    sample_name: str, path: tuple[str | int, ...], python_name: str, missing: str
) -> None:
    # A target reads Genesys' name: the same value under another name must not pass for it.
    data = sample(sample_name)
    _renamed(data, path, python_name)
    with pytest.raises(ValidationError) as caught:
        if sample_name.startswith("eventbridge"):
            GenesysEventBridgeEvent.model_validate(data)
        else:
            OPEN_MESSAGE.validate_python(data)
    assert missing in str(caught.value)
    assert "Field required" in str(caught.value)


def test_an_event_message_needs_events() -> None:
    data = sample("openmessaging_typing.json")
    data["events"] = []
    with pytest.raises(ValidationError):
        OPEN_MESSAGE.validate_python(data)


def test_eventbridge_sample_from_the_genesys_partner_source() -> None:
    event = GenesysEventBridgeEvent.model_validate(sample("eventbridge_conversation_start.json"))
    assert event.detail_type.startswith("v2.detail.events.conversation")
    assert event.detail.topic_name.endswith(".customer.start")
    assert event.detail.event_body["conversationId"] == "1734d888-3c0e-47bc-bacb-e9996a16b682"
    assert (event.detail.model_extra or {})["metadata"]["CorrelationId"]


@pytest.mark.parametrize(
    "unread",
    [{"version": 2}, {"metadata": None}, {"metadata": "x"}, {"timestamp": "Wed, 25 Mar 2026 13:19:58 GMT"}],
)
def test_an_eventbridge_detail_member_the_relay_does_not_read_may_hold_any_json_value(
    unread: dict[str, Any],
) -> None:
    # A shape nothing reads must not refuse a genuine event (it could never be redriven either)
    data = sample("eventbridge_conversation_start.json")
    data["detail"] |= unread
    event = GenesysEventBridgeEvent.model_validate(data)
    assert event.detail.model_dump(by_alias=True) == data["detail"]


def test_eventbridge_events_from_other_sources_are_refused() -> None:
    data = sample("eventbridge_conversation_start.json")
    data["source"] = "aws.partner/someone-else.com/x"
    with pytest.raises(ValidationError) as caught:
        GenesysEventBridgeEvent.model_validate(data)
    assert "aws.partner/genesys.com" in str(caught.value)


def test_eventbridge_unknown_fields_are_kept() -> None:
    data = sample("eventbridge_conversation_start.json")
    data["detail"]["futureField"] = [1, 2]
    event = GenesysEventBridgeEvent.model_validate(data)
    assert event.detail.model_dump(by_alias=True)["futureField"] == [1, 2]


@pytest.mark.parametrize(
    ("spelled", "instant"),
    [
        ("2026-03-25T10:00:00Z", "2026-03-25T10:00:00.000Z"),
        ("2026-03-25T10:00:00.000Z", "2026-03-25T10:00:00.000Z"),
        ("2026-03-25T12:00:00+02:00", "2026-03-25T10:00:00.000Z"),
        ("2026-03-25t10:00:00.5z", "2026-03-25T10:00:00.500Z"),
        ("2026-03-25T13:20:05.493Z", "2026-03-25T13:20:05.493Z"),  # Genesys' spelling is the normal form
        ("2026-03-25T00:30:00.12345678900+01:00", "2026-03-24T23:30:00.123456789Z"),  # beyond micros
        ("2026-03-24T23:00:00-00:00", "2026-03-24T23:00:00.000Z"),
        # A leap second (RFC 3339 allows it) is an instant of its own, not the second before it
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:60.000Z"),
        ("2017-01-01T00:59:60.5+01:00", "2016-12-31T23:59:60.500Z"),
    ],
)
def test_utc_instant_spells_one_instant_one_way(spelled: str, instant: str) -> None:
    assert utc_instant(spelled) == instant


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-25T10:00:00",
        "2026-03-25T10:00:60Z",  # second 60 only at 23:59 UTC
        "2026-03-25T23:59:60+01:00",
        "\u0662026-03-25T10:00:00Z",
    ],
)
def test_utc_instant_refuses_what_names_no_instant(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        utc_instant(text)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_utc_instant_says_so_when_a_valid_time_names_an_instant_outside_the_years_it_can_hold(
    text: str,
) -> None:
    with pytest.raises(ValueError, match="^names an instant outside years 0001 to 9999 in UTC"):
        utc_instant(text)

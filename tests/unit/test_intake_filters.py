"""Event filters at the intake: which targets get a task, what is counted, and that an event no target
takes is still accepted (issue 14, point 1)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.events import INTEGRATION_ID, api_gateway_event, sample
from test_intake_fakes import Integrations, answer, make_entry, make_intake

from relay.logic.intake.filters import EventFacts, FilterReason, filtered_out
from relay.models.delivery import DeliveryTask
from relay.models.event_filters import EventFilters
from relay.models.targets import IntegrationEntry
from relay.testing.fakes import CountingMetrics, InMemoryDeliveryQueue, InMemoryIdempotencyStore

TEXT = sample("openmessaging_text.json")  # Text, Outbound, Human
TYPING = sample("openmessaging_typing.json")  # Event [Typing], Outbound, no originatingEntity
RECEIPT = sample("openmessaging_receipt.json")  # Receipt, Outbound
CONVERSATION_START = sample("eventbridge_conversation_start.json")


def filters(**fields: Any) -> EventFilters:
    return EventFilters.model_validate(fields)


def facts_of(message: dict[str, Any]) -> EventFacts:
    return EventFacts.of_open_message(message)


BRIDGE = EventFacts.of_eventbridge(CONVERSATION_START["detail-type"])


@pytest.mark.parametrize(
    ("target_filters", "facts", "reason"),
    [
        ({}, facts_of(TEXT), None),
        ({}, BRIDGE, None),
        ({"types": ["Text"]}, facts_of(TEXT), None),
        ({"types": ["Text"]}, facts_of(RECEIPT), FilterReason.TYPE),
        ({"types": ["text", "receipt"]}, facts_of(RECEIPT), None),
        # eventTypes refines Event messages only
        ({"eventTypes": ["Typing"]}, facts_of(TYPING), None),
        ({"eventTypes": ["Presence"]}, facts_of(TYPING), FilterReason.EVENT_TYPE),
        ({"eventTypes": ["Presence"]}, facts_of(TEXT), None),
        ({"types": ["Event"], "eventTypes": ["Presence"]}, facts_of(TYPING), FilterReason.EVENT_TYPE),
        ({"directions": ["Outbound"]}, facts_of(TEXT), None),
        ({"directions": ["Inbound"]}, facts_of(TEXT), FilterReason.DIRECTION),
        ({"originatingEntities": ["Human"]}, facts_of(TEXT), None),
        ({"originatingEntities": ["Bot"]}, facts_of(TEXT), FilterReason.ORIGINATING_ENTITY),
        # a filter on a field lets through only events that carry one of its values
        ({"originatingEntities": ["Human"]}, facts_of(TYPING), FilterReason.ORIGINATING_ENTITY),
        ({"types": ["Text"]}, BRIDGE, FilterReason.TYPE),
        ({"detailTypes": ["v2.detail.events.conversation.*"]}, facts_of(TEXT), FilterReason.DETAIL_TYPE),
        ({"detailTypes": ["v2.detail.events.conversation.*"]}, BRIDGE, None),
        ({"detailTypes": ["*.customer.start"]}, BRIDGE, None),
        ({"detailTypes": ["*.customer.end", "v2.users.*"]}, BRIDGE, FilterReason.DETAIL_TYPE),
        # the glob's other characters are literal: "." is a dot, "{id}" is "{id}"
        ({"detailTypes": ["v2?detail*"]}, BRIDGE, FilterReason.DETAIL_TYPE),
        ({"detailTypes": ["v2.detail.events.conversation.{id}.customer.start"]}, BRIDGE, None),
        # the first filter that fails names the reason
        ({"types": ["Receipt"], "directions": ["Inbound"]}, facts_of(TEXT), FilterReason.TYPE),
    ],
)
def test_filtered_out_names_the_first_filter_an_event_fails(
    target_filters: dict[str, Any], facts: EventFacts, reason: FilterReason | None
) -> None:
    assert filtered_out(filters(**target_filters), facts) is reason


def entry_with(**per_target: dict[str, Any]) -> IntegrationEntry:
    """The integration with one target per keyword: its id and its filters."""
    return make_entry(tuple(per_target), filters=per_target)


def queued_targets(queue: InMemoryDeliveryQueue) -> list[str]:
    return sorted(DeliveryTask.model_validate_json(body).target_id for body in queue.bodies)


def test_a_target_whose_filters_leave_the_event_out_gets_no_task_and_is_counted() -> None:
    # Given three targets: one takes everything, one only receipts, one only bot messages
    metrics = CountingMetrics()
    intake, queue = make_intake(
        integrations=Integrations(
            entry_with(everything={}, receipts={"types": ["Receipt"]}, bots={"originatingEntities": ["Bot"]})
        ),
        metrics=metrics,
    )

    # When Genesys posts a text message written by a human agent
    response = intake.handle(api_gateway_event(TEXT))

    # Then only the first target gets a task, and each left-out target is counted with its reason
    assert response["statusCode"] == 202
    assert queued_targets(queue) == ["everything"]
    assert len(answer(response)["deliveryIds"]) == 1
    assert metrics.per_target == {
        ("TasksFiltered", "receipts", "type"): 1,
        ("TasksFiltered", "bots", "originating-entity"): 1,
    }
    assert metrics.counts[("TasksQueued", None)] == 1
    assert ("EventsUnmatched", None) not in metrics.counts


def test_an_event_no_target_takes_is_accepted_counted_and_never_queued() -> None:
    # Given targets that take only typing events
    metrics = CountingMetrics()
    store = InMemoryIdempotencyStore()
    intake, queue = make_intake(
        integrations=Integrations(
            entry_with(a={"types": ["Event"]}, b={"eventTypes": ["Typing"], "types": ["Event"]})
        ),
        metrics=metrics,
        idempotency=store,
    )

    # When a receipt arrives
    response = intake.handle(api_gateway_event(RECEIPT))

    # Then Genesys gets its 202 (nothing to retry), nothing is queued, and the event is counted
    assert response["statusCode"] == 202 and answer(response)["deliveryIds"] == []
    assert queue.bodies == []
    assert metrics.counts[("EventsUnmatched", None)] == 1
    assert metrics.counts[("EventsAccepted", None)] == 1
    assert ("TasksQueued", None) not in metrics.counts

    # And a repeat is answered the same way and queues nothing either
    assert answer(intake.handle(api_gateway_event(RECEIPT))) == answer(response)
    assert queue.bodies == []
    # (with nothing to queue, nothing is claimed: no idempotency write is paid for)
    assert store.writes == 0


def test_eventbridge_events_are_filtered_by_detail_type() -> None:
    # Given the EventBridge path's targets: one for conversation starts, one for ends, one for texts
    metrics = CountingMetrics()
    intake, queue = make_intake(
        integrations=Integrations(
            entry_with(
                starts={"detailTypes": ["*.customer.start"]},
                ends={"detailTypes": ["*.customer.end"]},
                texts={"types": ["Text"]},
            )
        ),
        eventbridge_integration_id=INTEGRATION_ID,
        metrics=metrics,
    )

    # When a conversation-start event arrives
    result = intake.handle(CONVERSATION_START)

    # Then only the first target gets it
    assert queued_targets(queue) == ["starts"] and len(result["deliveryIds"]) == 1
    assert metrics.per_target == {
        ("TasksFiltered", "ends", "detail-type"): 1,
        ("TasksFiltered", "texts", "type"): 1,
    }


def test_a_filtered_large_event_needs_no_claim_check() -> None:
    # Given a body too large for SQS, and a target that does not take Text messages
    message = json.loads(json.dumps(TEXT))
    message["text"] = "x" * 300_000
    intake, queue = make_intake(
        integrations=Integrations(entry_with(receipts={"types": ["Receipt"]})), max_body_bytes=400_000
    )

    # When it arrives
    response = intake.handle(api_gateway_event(message))

    # Then it is accepted without storing anything
    assert response["statusCode"] == 202 and answer(response)["claimCheck"] is False
    assert queue.bodies == []


@pytest.mark.parametrize(
    "odd",
    [
        {"events": 7},
        {"events": True},
        {"events": "Typing"},
        {"events": [{"eventType": 5}, 3, None]},
        {"direction": {"x": 1}},
        {"originatingEntity": ["Bot"]},
    ],
)
def test_fields_the_schema_does_not_check_are_no_facts_when_they_are_not_text(odd: dict[str, Any]) -> None:
    # Given a Text message whose unchecked fields carry JSON that is not what Genesys sends
    message = {**TEXT, **odd}

    # Then the filters see no such fact (rather than failing on it)
    facts = facts_of(message)
    assert facts.message_type == "Text" and facts.event_types == ()
    assert facts.direction in (None, TEXT.get("direction")) and facts.originating_entity in (
        None,
        TEXT.get("originatingEntity"),
    )


def test_a_signed_message_with_odd_unchecked_fields_is_filtered_not_a_500() -> None:
    # Given targets with filters, and a signed Text message whose "events" is a number (found by the
    # intake fuzz test: a 500)
    intake, queue = make_intake(
        integrations=Integrations(entry_with(a={"types": ["Text"]}, b={"eventTypes": ["Typing"]}))
    )

    # When it arrives
    response = intake.handle(api_gateway_event({**TEXT, "events": 7}))

    # Then it is accepted and queued as any Text message: both targets take it (an event-kind filter
    # applies to Event messages only)
    assert response["statusCode"] == 202
    assert queued_targets(queue) == ["a", "b"]


@settings(max_examples=400, deadline=None)
@given(
    glob=st.text(alphabet="ab.*", min_size=1, max_size=8),
    detail_type=st.text(alphabet="ab.", max_size=10),
)
def test_a_detail_type_glob_matches_as_its_spec_says(glob: str, detail_type: str) -> None:
    # The spec (docs/config-sync.md): "*" is any run of characters, dots included; the rest is literal.
    spec = re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.DOTALL)
    facts = EventFacts.of_eventbridge(detail_type)
    expected = None if spec.fullmatch(detail_type) else FilterReason.DETAIL_TYPE
    assert filtered_out(filters(detailTypes=[glob]), facts) is expected


def test_a_glob_of_many_stars_is_decided_in_one_pass() -> None:
    # A regular expression of ".*" runs backtracks on this: 8 stars took seconds, 12 would take hours.
    many_stars = "*a" * 12 + "*b"
    facts = EventFacts.of_eventbridge("a" * 63)
    assert filtered_out(filters(detailTypes=[many_stars]), facts) is FilterReason.DETAIL_TYPE
    assert filtered_out(filters(detailTypes=[many_stars]), EventFacts.of_eventbridge("a" * 63 + "b")) is None

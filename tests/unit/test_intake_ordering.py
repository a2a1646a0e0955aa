"""The intake's routing of ordered targets' tasks (relay.logic.intake.ordering): which conversation an
event belongs to, the FIFO message group and deduplication id of each ordered task, and what happens
to an event without a conversation."""

from __future__ import annotations

from typing import Any

import pytest
from support.events import INTEGRATION_ID, api_gateway_event, sample
from test_intake_fakes import Integrations, answer, make_intake

from relay.errors import DependencyUnavailable
from relay.logic.intake.ordering import eventbridge_key, message_group, open_messaging_key
from relay.models.delivery import DeliveryTask
from relay.models.queue import OrderedTask
from relay.models.targets import Integration, IntegrationEntry, Ordering, Target
from relay.testing.fakes import CountingMetrics, InMemoryOrderedQueue

CONVERSATION = "1734d888-3c0e-47bc-bacb-e9996a16b682"  # the samples' conversationId


def entry(**orderings: Ordering) -> IntegrationEntry:
    integration = Integration(
        integration_id=INTEGRATION_ID,
        name="Acme",
        signature_secret_name=f"relay/local/signature/{INTEGRATION_ID}",
    )
    targets = tuple(
        Target(
            integration_id=INTEGRATION_ID,
            target_id=target_id,
            name=target_id,
            url=f"https://example.com/{target_id}",
            ordering=ordering,
        )
        for target_id, ordering in orderings.items()
    )
    return IntegrationEntry(integration, targets)


def message(**changes: Any) -> dict[str, Any]:
    text = sample("openmessaging_text.json")
    for name, value in changes.items():
        if value is None:
            text.pop(name, None)
        else:
            text[name] = value
    return text


# --- the conversation of an event ------------------------------------------------------------------------


def test_the_conversation_id_is_the_key_when_the_event_has_one() -> None:
    assert open_messaging_key(message()) == f"conversation:{CONVERSATION}"


@pytest.mark.parametrize(("direction", "customer"), [("Outbound", "to"), ("Inbound", "from")])
def test_without_a_conversation_id_the_key_is_the_customers_id_on_the_channel(
    direction: str, customer: str
) -> None:
    event = message(conversationId=None, direction=direction)
    expected = event["channel"][customer]["id"]
    assert open_messaging_key(event) == f"customer:{expected}"


@pytest.mark.parametrize(
    "changes", [{"direction": None}, {"direction": "Sideways"}, {"conversationId": " ", "direction": None}]
)
def test_an_event_naming_neither_has_no_key(changes: dict[str, Any]) -> None:
    assert open_messaging_key(message(**{"conversationId": None, **changes})) is None


def test_an_eventbridge_event_is_keyed_by_the_conversation_in_its_detail() -> None:
    event = sample("eventbridge_conversation_start.json")
    assert eventbridge_key(event) == f"conversation:{CONVERSATION}"
    del event["detail"]["eventBody"]["conversationId"]
    assert eventbridge_key(event) is None


def test_a_message_group_is_per_target_and_conversation_within_sqs_limits() -> None:
    group = message_group(INTEGRATION_ID, "t-a", "conversation:c-1")
    assert group == message_group(INTEGRATION_ID, "t-a", "conversation:c-1")
    assert len(group) <= 128 and group.isalnum()
    others = {
        message_group(INTEGRATION_ID, "t-b", "conversation:c-1"),
        message_group("i-2", "t-a", "conversation:c-1"),
    }
    assert group not in others and len(others) == 2


# --- routing ---------------------------------------------------------------------------------------------


def ordered_intake(**orderings: Ordering) -> tuple[Any, Any, InMemoryOrderedQueue, CountingMetrics]:
    ordered, metrics = InMemoryOrderedQueue(), CountingMetrics()
    intake, queue = make_intake(
        integrations=Integrations(entry(**orderings)),
        ordered_queue=ordered,
        metrics=metrics,
        eventbridge_integration_id=INTEGRATION_ID,
    )
    return intake, queue, ordered, metrics


def test_an_ordered_targets_task_goes_to_its_conversations_group_the_others_stay_unordered() -> None:
    intake, queue, ordered, metrics = ordered_intake(crm=Ordering.CONVERSATION, archive=Ordering.NONE)

    response = intake.handle(api_gateway_event(message()))

    assert response["statusCode"] == 202
    assert [DeliveryTask.model_validate_json(body).target_id for body in queue.bodies] == ["archive"]
    (task,) = ordered.tasks
    queued = DeliveryTask.model_validate_json(task.body)
    assert queued.target_id == "crm"
    assert task.placement.group_id == message_group(INTEGRATION_ID, "crm", f"conversation:{CONVERSATION}")
    assert task.placement.deduplication_id == str(queued.delivery_id)  # a repeated send is dropped
    assert str(queued.delivery_id) in answer(response)["deliveryIds"]
    assert metrics.counts[("TasksQueued", None)] == 2
    assert ("TasksUnordered", None) not in metrics.counts


def test_the_eventbridge_path_routes_ordered_targets_too() -> None:
    intake, queue, ordered, _ = ordered_intake(crm=Ordering.CONVERSATION)

    intake.handle(sample("eventbridge_conversation_start.json"))

    (task,) = ordered.tasks
    assert task.placement.group_id == message_group(INTEGRATION_ID, "crm", f"conversation:{CONVERSATION}")
    assert queue.bodies == []


def test_an_event_without_a_conversation_is_delivered_unordered_and_counted() -> None:
    intake, queue, ordered, metrics = ordered_intake(crm=Ordering.CONVERSATION)

    response = intake.handle(api_gateway_event(message(conversationId=None, direction=None)))

    assert response["statusCode"] == 202
    assert ordered.tasks == [] and len(queue.bodies) == 1
    assert metrics.counts[("TasksUnordered", None)] == 1


def test_without_an_ordered_queue_ordered_targets_are_delivered_unordered_and_counted() -> None:
    metrics = CountingMetrics()
    intake, queue = make_intake(integrations=Integrations(entry(crm=Ordering.CONVERSATION)), metrics=metrics)

    assert intake.handle(api_gateway_event(message()))["statusCode"] == 202
    assert len(queue.bodies) == 1 and metrics.counts[("TasksUnordered", None)] == 1


class FailingOrderedQueue:
    def send_ordered(self, tasks: list[OrderedTask]) -> None:
        raise DependencyUnavailable("ordered queue down")


def test_an_ordered_queue_that_fails_answers_503_and_lets_the_retry_queue_again() -> None:
    ordered = InMemoryOrderedQueue()
    integrations = Integrations(entry(crm=Ordering.CONVERSATION, archive=Ordering.NONE))
    intake, queue = make_intake(integrations=integrations, ordered_queue=FailingOrderedQueue())
    event = api_gateway_event(message())

    assert intake.handle(event)["statusCode"] == 503
    assert queue.bodies == []  # nothing half-queued: the ordered send goes first

    retry, _ = make_intake(integrations=integrations, ordered_queue=ordered, queue=queue)
    assert retry.handle(event)["statusCode"] == 202
    assert len(ordered.tasks) == 1 and len(queue.bodies) == 1

"""The intake on the FIFO first hop (IntakeDeduplication=queue, docs/intake.md "The first hop"): every
unordered target's task goes to the first hop, its own message group, deduplicated on its delivery id,
and no idempotency record is read or written: SQS drops the repeats."""

from __future__ import annotations

from typing import Any

from support.events import INTEGRATION_ID, api_gateway_event, sample
from test_intake_fakes import Integrations, answer, make_intake
from test_intake_ordering import entry, message

from relay.models.delivery import DeliveryTask
from relay.models.targets import Ordering
from relay.testing.fakes import (
    CountingMetrics,
    InMemoryDeliveryQueue,
    InMemoryFirstHop,
    InMemoryOrderedQueue,
)


def first_hop_intake(**orderings: Ordering) -> tuple[Any, InMemoryDeliveryQueue, InMemoryFirstHop, Any]:
    first_hop, ordered, metrics = InMemoryFirstHop(), InMemoryOrderedQueue(), CountingMetrics()
    intake, queue = make_intake(
        integrations=Integrations(entry(**orderings)),
        idempotency=None,
        first_hop=first_hop,
        ordered_queue=ordered,
        metrics=metrics,
        eventbridge_integration_id=INTEGRATION_ID,
    )
    return intake, queue, first_hop, (ordered, metrics)


def test_each_unordered_task_goes_to_the_first_hop_in_a_group_of_its_own_deduplicated_on_its_id() -> None:
    intake, queue, first_hop, (ordered, metrics) = first_hop_intake(
        crm=Ordering.CONVERSATION, archive=Ordering.NONE, bi=Ordering.NONE
    )

    response = intake.handle(api_gateway_event(message()))

    assert response["statusCode"] == 202
    assert queue.bodies == []  # the standard queue takes only re-sent records now
    tasks = {DeliveryTask.model_validate_json(t.body).target_id: t for t in first_hop.tasks}
    assert sorted(tasks) == ["archive", "bi"]
    for task in tasks.values():
        delivery_id = str(DeliveryTask.model_validate_json(task.body).delivery_id)
        assert (task.placement.group_id, task.placement.deduplication_id) == (delivery_id, delivery_id)
    assert [DeliveryTask.model_validate_json(t.body).target_id for t in ordered.tasks] == ["crm"]
    assert len(answer(response)["deliveryIds"]) == 3
    assert metrics.counts[("TasksQueued", None)] == 3


def test_a_repeat_sends_the_same_deduplication_ids_and_gets_the_same_answer() -> None:
    first_hop = InMemoryFirstHop()
    intake, _ = make_intake(
        integrations=Integrations(entry(archive=Ordering.NONE, bi=Ordering.NONE)),
        idempotency=None,
        first_hop=first_hop,
    )
    event = api_gateway_event(message())

    first, repeat = intake.handle(event), intake.handle(event)

    assert (first["statusCode"], repeat["statusCode"]) == (202, 202)
    assert answer(repeat) == answer(first)  # deterministic: nothing to remember
    sent = [t.placement.deduplication_id for t in first_hop.sent]
    assert len(sent) == 4 and sorted(sent[:2]) == sorted(sent[2:])
    assert len(first_hop.tasks) == 2  # SQS keeps one of each


def test_a_first_hop_that_fails_answers_503_and_the_retry_sends_the_same_ids_again() -> None:
    intake, queue, first_hop, (ordered, _) = first_hop_intake(
        crm=Ordering.CONVERSATION, archive=Ordering.NONE
    )
    event = api_gateway_event(message())
    first_hop.unavailable = True

    assert intake.handle(event)["statusCode"] == 503

    first_hop.unavailable = False
    assert intake.handle(event)["statusCode"] == 202
    assert len(first_hop.tasks) == 1 and queue.bodies == []
    # The ordered task went out on both tries, under one deduplication id: SQS drops the second.
    assert len({t.placement.deduplication_id for t in ordered.tasks}) == 1


def test_eventbridge_events_take_the_first_hop_too() -> None:
    intake, queue, first_hop, _ = first_hop_intake(archive=Ordering.NONE)

    intake.handle(sample("eventbridge_conversation_start.json"))
    intake.handle(sample("eventbridge_conversation_start.json"))  # EventBridge delivers at least once

    assert queue.bodies == []
    assert len(first_hop.sent) == 2 and len(first_hop.tasks) == 1

"""One accepted event becomes one DeliveryTask per target whose filters let it through, queued once per
event identity. A filtered (event, target) pair costs no queue message; an event no target takes is
accepted all the same, and counted. A disabled target's task is queued too: the dispatcher
dead-letters it ``target-disabled`` without an attempt, so the event can be redriven or replayed to
the target once it is enabled again, and is never silently dropped (docs/operations-dlq.md). So is the
task of a target whose record cannot be read (``IntegrationEntry.unreadable``): its filters and flag are
unknown, so it takes every event, on the standard queue; the dispatcher retries it until the record is
fixed, then dead-letters it explained (docs/dispatcher.md), never loses it.

Who deduplicates depends on the deployment (docs/intake.md, "Exactly once in the queue"):

- with the FIFO first hop (``first_hop``, template IntakeDeduplication=queue, the default), SQS does:
  every task goes to a FIFO queue deduplicated on its deterministic deliveryId, so any repeat within
  SQS's 5-minute window (a concurrent one, Genesys' retry after a 503 or a lost 202, a send repeated
  after its answer was lost) is dropped by SQS and answered with the same 202. No write per event.
- with the idempotency store (IntakeDeduplication=table), the attempt that claims the event's key
  queues, then records its answer (two writes per accepted event); a repeat gets that answer and
  queues nothing, however late it comes within the record's TTL. A repeat while the claim's lease is
  live is asked to retry (429). A failed attempt releases its claim so that Genesys' retry can queue;
  an attempt cut off mid-queue (timeout, crash) leaves a lease that runs out, and the next repeat
  queues again with the same deterministic deliveryIds, which receivers deduplicate.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from relay.errors import DependencyUnavailable, PayloadTooLarge, RequestInProgress
from relay.logic.intake.filters import EventFacts, filtered_out
from relay.logic.intake.ordering import message_group
from relay.models.delivery import DeliveryTask, EventSource, S3Ref
from relay.models.idempotency import Claim
from relay.models.queue import GroupPlacement, OrderedTask
from relay.models.targets import IntegrationEntry, Ordering, Target
from relay.observability import logger
from relay.ports import (
    ClaimCheckStore,
    FirstHopQueue,
    IdempotencyStore,
    MetricsRecorder,
    OrderedTaskQueue,
    TaskQueue,
)

# Stable namespace for deterministic delivery ids: the same (integration, event, target) always gets the
# same deliveryId, so even a re-queue after a partial failure is deduplicated by the receivers.
DELIVERY_ID_NAMESPACE = uuid.UUID("5b0f6a3e-9d2c-4f61-8a7e-3c1d2b4a5e60")


@dataclass(frozen=True)
class IncomingEvent:
    """One event to deliver, from either trigger."""

    event_id: str
    # What makes two deliveries of it the same event (Genesys: id + the instant of channel.time;
    # EventBridge: id).
    identity: str
    # The event's JSON text as the targets will receive it: for HTTP the body exactly as received.
    event_json: str
    source: EventSource
    # What the targets' event filters look at.
    facts: EventFacts
    # The conversation it belongs to (relay.logic.intake.ordering), for targets that keep its order.
    ordering_key: str | None = None
    conversation_id: str | None = None

    @property
    def key(self) -> str:
        """The idempotency key (hashed: the identity is sender-chosen text of any length)."""
        return "intake#" + hashlib.sha256(self.identity.encode("utf-8")).hexdigest()


class FanOut:
    def __init__(
        self,
        *,
        queue: TaskQueue,
        idempotency: IdempotencyStore | None,
        claim_checks: ClaimCheckStore | None,
        metrics: MetricsRecorder,
        max_inline_body_bytes: int,
        now: Callable[[], datetime],
        ordered_queue: OrderedTaskQueue | None = None,
        first_hop: FirstHopQueue | None = None,
    ) -> None:
        self._queue = queue
        self._ordered_queue = ordered_queue
        self._first_hop = first_hop
        self._idempotency = idempotency
        self._claim_checks = claim_checks
        self._metrics = metrics
        self._max_inline_body_bytes = max_inline_body_bytes
        self._now = now

    def __call__(self, entry: IntegrationEntry, incoming: IncomingEvent) -> dict[str, Any]:
        """Queue one task per target, once per event identity; repeats get the first answer."""
        targets: list[Target | str] = [*self._matching(list(entry.targets), incoming.facts)]
        targets += sorted(entry.unreadable)  # by id alone: nothing else of them can be read
        if not targets:
            # Nothing to queue, so nothing to queue twice: no idempotency writes (a repeat gets the
            # same answer the same way).
            self._metrics.count("EventsUnmatched")
            self._metrics.count("EventsAccepted")
            return _answer(entry, incoming, [], claim_check=False)
        claim = self._idempotency.claim(incoming.key) if self._idempotency is not None else None
        if claim is not None and claim.state == "completed" and claim.response is not None:
            self._metrics.count("EventsDuplicate")
            answer: dict[str, Any] = json.loads(claim.response)
            return answer
        if claim is not None and claim.state != "acquired":
            # Another attempt holds the lease: it may still be queueing, or it may have been cut off.
            # Not queued here (no double queueing); Genesys retries a 429, and a retry after the lease
            # queues if nothing else has.
            self._metrics.count("EventsDuplicate")
            raise RequestInProgress("the same event is being accepted right now; retry shortly")
        queued = False
        try:
            answer = self._queue_tasks(entry, incoming, targets)
            queued = True
        finally:
            if not queued and claim is not None:
                self._release_quietly(claim)
        if claim is not None:
            self._complete_quietly(claim, answer)
        self._metrics.count("EventsAccepted")
        return answer

    def _complete_quietly(self, claim: Claim, answer: dict[str, Any]) -> None:
        if self._idempotency is None:
            return
        try:
            self._idempotency.complete(claim, json.dumps(answer, separators=(",", ":")))
        except DependencyUnavailable:
            # Every task is queued, so the answer is still 202. The lease runs out on its own; a repeat
            # after it queues the same deliveryIds again, which receivers deduplicate.
            logger.warning("could not record the idempotency answer", extra={"event_id": answer["eventId"]})

    def _release_quietly(self, claim: Claim) -> None:
        if self._idempotency is None:
            return
        try:
            self._idempotency.release(claim)
        except DependencyUnavailable:
            # The claim's lease runs out on its own (shorter than Genesys' retry period).
            logger.warning("could not release the idempotency claim")

    def _queue_tasks(
        self, entry: IntegrationEntry, incoming: IncomingEvent, targets: list[Target | str]
    ) -> dict[str, Any]:
        """One task per target: a Target, or the id of one whose record is unreadable."""
        integration_id = entry.integration.integration_id
        received_at = self._now()
        # The text as a JSON string: ASCII, and json.loads gives back the identical text.
        event_field = json.dumps(incoming.event_json, ensure_ascii=True)
        event_ref: S3Ref | None = None
        # The task around the event: its fixed fields fit in 1 KiB, and the ids a sender or a config
        # chose count as they are written (ASCII-escaped: an emoji is 12 bytes, 1,024 of them 12 KiB).
        chosen = (incoming.event_id, incoming.conversation_id or "", integration_id)
        head = 1_024 + sum(len(json.dumps(text)) for text in chosen)
        target_ids = [target if isinstance(target, str) else target.target_id for target in targets]
        head += max((len(json.dumps(target_id)) for target_id in target_ids), default=0)
        if head + len(event_field) > self._max_inline_body_bytes:
            event_ref = self._claim_check(incoming.key, integration_id, incoming.event_json.encode())
        bodies: list[str] = []
        ordered: list[OrderedTask] = []
        first_hop: list[OrderedTask] = []
        delivery_ids: list[str] = []
        for target_id, target in zip(target_ids, targets, strict=True):
            delivery_id = uuid.uuid5(DELIVERY_ID_NAMESPACE, f"{incoming.key}\n{target_id}")
            task = DeliveryTask(
                delivery_id=delivery_id,
                integration_id=integration_id,
                target_id=target_id,
                event_id=incoming.event_id,
                conversation_id=incoming.conversation_id,
                event_source=incoming.source,
                received_at=received_at,
                # Dumped once for all targets and spliced in (task_body).
                event_json=None if event_ref else incoming.event_json,
                event_ref=event_ref,
            )
            body = task_body(task, None if event_ref else event_field)
            placement = self._placement(incoming, integration_id, target, str(delivery_id))
            if placement is not None:
                ordered.append(OrderedTask(body, placement))
            elif self._first_hop is not None:
                # A group of one orders nothing; the deduplication id is what the first hop is for.
                first_hop.append(OrderedTask(body, GroupPlacement(str(delivery_id), str(delivery_id))))
            else:
                bodies.append(body)
            delivery_ids.append(str(delivery_id))
        # The ordered tasks first: a failure after them answers 503, and the retry's ordered sends are
        # then dropped as repeats instead of arriving twice.
        if ordered and self._ordered_queue is not None:
            self._ordered_queue.send_ordered(ordered)
        if first_hop and self._first_hop is not None:
            self._first_hop.send_first_hop(first_hop)
        if bodies:
            self._queue.send(bodies)
        queued = len(bodies) + len(ordered) + len(first_hop)
        self._metrics.count("TasksQueued", queued)
        # DEBUG, not INFO: at a million events this line alone was about half the log bytes, and the
        # accepted count is a metric; each delivery's audit line names the event and its receivedAt.
        logger.debug(
            "event accepted",
            extra={
                "integration_id": integration_id,
                "event_id": incoming.event_id,
                "tasks": queued,
            },
        )
        return _answer(entry, incoming, delivery_ids, claim_check=event_ref is not None)

    def _placement(
        self, incoming: IncomingEvent, integration_id: str, target: Target | str, delivery_id: str
    ) -> GroupPlacement | None:
        """Where an ordered target's task goes in the FIFO queue: its conversation's message group,
        deduplicated on the delivery id (a repeat of this send, a retried webhook, is dropped). None:
        the standard queue (an unordered target; or an ordered one's task that cannot keep an order,
        counted and logged: an event without a conversation, or no ordered queue here; a target whose
        record is unreadable, ``str``, whose ordering is unknown)."""
        if isinstance(target, str) or target.ordering is not Ordering.CONVERSATION:
            return None
        if incoming.ordering_key is not None and self._ordered_queue is not None:
            group = message_group(integration_id, target.target_id, incoming.ordering_key)
            return GroupPlacement(group, delivery_id)
        self._metrics.count("TasksUnordered")
        why = "no ordered queue configured" if incoming.ordering_key else "the event names no conversation"
        logger.info(
            "ordered target's task queued unordered", extra={"targetId": target.target_id, "why": why}
        )
        return None

    def _matching(self, targets: list[Target], facts: EventFacts) -> list[Target]:
        """The targets whose filters let the event through; the others are counted per target and reason."""
        kept: list[Target] = []
        for target in targets:
            reason = filtered_out(target.filters, facts)
            if reason is None:
                kept.append(target)
            else:
                self._metrics.count("TasksFiltered", reason=reason.value, target=target.target_id)
        return kept

    def _claim_check(self, key: str, integration_id: str, body: bytes) -> S3Ref:
        if self._claim_checks is None:
            raise PayloadTooLarge("the body is too large to queue and no claim-check store is configured")
        return self._claim_checks.put(f"events/{integration_id}/{key.removeprefix('intake#')}.json", body)


def _answer(
    entry: IntegrationEntry, incoming: IncomingEvent, delivery_ids: list[str], *, claim_check: bool
) -> dict[str, Any]:
    """The 202 body (recorded for repeats, so it names nothing that changes between them)."""
    return {
        "status": "accepted",
        "eventId": incoming.event_id,
        "integrationId": entry.integration.integration_id,
        "deliveryIds": delivery_ids,
        "claimCheck": claim_check,
    }


def task_body(task: DeliveryTask, event_field: str | None) -> str:
    """The task as JSON, with ``eventJson`` spliced in already encoded (encoded once for all targets).

    ASCII-only (``ensure_ascii``): SQS refuses some valid Unicode characters (e.g. U+FFFE), escapes never.
    """
    head = task.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"event_json"})
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=True)
    if event_field is None:
        return text
    return text[:-1] + ',"eventJson":' + event_field + "}"

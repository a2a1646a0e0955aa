"""Replay an archived event to one target or every target it had: new delivery-queue messages through
the normal path (fresh attempt counters), with the same ``deliveryId`` by default so receivers
deduplicate on ``webhook-id``, or a fresh one (``new_id``). Refused, with nothing queued, when the
event is not in the archive searched (past retention), when an id names several events, or when a
target is not the event's, unknown or disabled. Every replay is audited (relay.logic.deliveries.operator).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from relay.errors import ReplayRefused
from relay.logic.deliveries.lookup import ArchivedEvent
from relay.logic.deliveries.operator import REPLAYED, Audited, operator_record, write_operator_records
from relay.logic.intake.fan_out import task_body
from relay.models.delivery import DeliveryTask
from relay.models.targets import Ordering, Target
from relay.models.timestamps import iso_utc
from relay.ports import ArchiveReader, AuditSink, TargetDirectory, TaskQueue


@dataclass(frozen=True)
class Replay:
    """What a replay queues: one task per target, and the delivery id each replaces (if it changed)."""

    event: ArchivedEvent
    tasks: tuple[DeliveryTask, ...]
    replaced: dict[str, UUID]  # target id -> the delivery id replayed under a fresh one
    # Ordered targets among them: the replay goes through the delivery queue, outside its conversation's
    # order; an original still held behind an earlier record arrives again later (same webhook-id).
    out_of_order: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "eventId": self.event.event_id,
            "integrationId": self.event.integration_id,
            "conversationId": self.event.conversation_id,
            "receivedAt": iso_utc(self.event.received_at),
            "deliveries": [
                {
                    "targetId": task.target_id,
                    "deliveryId": str(task.delivery_id),
                    "replayOf": str(self.replaced[task.target_id])
                    if task.target_id in self.replaced
                    else None,
                }
                for task in self.tasks
            ],
            "outOfOrder": list(self.out_of_order),
        }


def plan_replay(
    events: Sequence[ArchivedEvent],
    ident: str,
    *,
    searched: str,
    targets: TargetDirectory,
    archive: ArchiveReader,
    target_id: str | None = None,
    new_id: bool = False,
    new_uuid: Callable[[], UUID] = uuid.uuid4,
    unreadable_lines: int = 0,
) -> Replay:
    """The replay of the one event ``ident`` names (``events``: relay.logic.deliveries.lookup), to
    ``target_id`` or to every target it had; ReplayRefused saying why not. ``searched`` names the days
    looked at, and ``unreadable_lines`` the archive lines naming ``ident`` that were no record, for the
    refusal."""
    event = _one_event(_of_target(events, ident, target_id), ident, searched, unreadable_lines)
    chosen = _targets(event, target_id)
    # Unknown, disabled: refused; a replay to every target names the others, which --target can reach.
    checked = [
        _check_target(
            targets, event.integration_id, c, others=[] if target_id else [o for o in chosen if o != c]
        )
        for c in chosen
    ]
    # An event without a conversation went to its ordered targets unordered: no order to go outside.
    ordered = tuple(
        t.target_id for t in checked if t.ordering is Ordering.CONVERSATION and event.conversation_id
    )
    if event.event_ref is not None and not archive.claim_check_exists(event.event_ref):
        raise ReplayRefused(
            f"event {event.event_id} was too large for SQS and its claim check ({event.event_ref.key}) "
            "is gone: the audit bucket's ExpireClaimChecks lifecycle rule expired it, or it was deleted"
        )
    if event.event_ref is None and event.event_json is None:
        raise ReplayRefused(f"event {event.event_id} was archived without its text: nothing to send")
    tasks, replaced = [], {}
    for chosen_id in chosen:
        original = _delivery_id(event, chosen_id)
        delivery_id = new_uuid() if new_id else original
        if new_id:
            replaced[chosen_id] = original
        tasks.append(
            DeliveryTask(
                delivery_id=delivery_id,
                integration_id=event.integration_id,
                target_id=chosen_id,
                event_id=event.event_id,
                conversation_id=event.conversation_id,
                event_source=event.event_source,
                received_at=event.received_at,
                event_json=event.event_json if event.event_ref is None else None,
                event_ref=event.event_ref,
            )
        )
    return Replay(event=event, tasks=tuple(tasks), replaced=replaced, out_of_order=ordered)


def run_replay(
    replay: Replay,
    *,
    queue: TaskQueue,
    audit: AuditSink,
    actor: str,
    now: datetime,
    operation_id: str | None = None,
) -> Audited:
    """Queue the replay's tasks (DependencyUnavailable, nothing audited, if SQS refuses), then audit
    each: who, when, which event, target and delivery id."""
    queue.send([_body(task) for task in replay.tasks])
    operation = operation_id or uuid.uuid4().hex
    records = [
        operator_record(
            REPLAYED,
            operation_id=operation,
            actor=actor,
            at=now,
            integration_id=task.integration_id,
            target_id=task.target_id,
            event_id=task.event_id,
            conversation_id=task.conversation_id,
            delivery_id=task.delivery_id,
            replay_of=replay.replaced.get(task.target_id),
        )
        for task in replay.tasks
    ]
    return write_operator_records(audit, records, now)


def _one_event(
    events: Sequence[ArchivedEvent], ident: str, searched: str, unreadable_lines: int
) -> ArchivedEvent:
    if not events and unreadable_lines:
        raise ReplayRefused(
            f"{ident} is in no readable archived event of {searched}: {unreadable_lines} archive "
            f"{'line names' if unreadable_lines == 1 else 'lines name'} it but "
            f"{'is' if unreadable_lines == 1 else 'are'} no archive record (a damaged object, or one "
            "another release wrote); nothing to replay from"
        )
    if not events:
        raise ReplayRefused(
            f"{ident} is in no archived event of {searched}: older than the archive keeps events "
            "(ArchiveRetentionDays), not yet handled by the dispatcher, or archiving is off "
            "(ArchiveEnabled); look further back with --since"
        )
    if len(events) > 1 and all(e.event_id == ident for e in events):
        integrations = ", ".join(e.integration_id for e in events)
        raise ReplayRefused(
            f"event {ident} was received by {len(events)} integrations ({integrations}): choose its copy "
            "with --target (one of that integration's targets) or replay by delivery id "
            f"(relay deliveries show {ident} lists them)"
        )
    if len(events) > 1:
        ids = ", ".join(e.event_id for e in events[:5]) + (", ..." if len(events) > 5 else "")
        raise ReplayRefused(
            f"{ident} names {len(events)} events ({ids}): replay them one at a time by event id"
        )
    return events[0]


def _of_target(events: Sequence[ArchivedEvent], ident: str, target_id: str | None) -> Sequence[ArchivedEvent]:
    """An event id that several integrations received names one event per integration (each with its
    own targets and delivery ids): ``--target`` picks the one that had a delivery to that target."""
    if target_id is None or len(events) < 2 or any(e.event_id != ident for e in events):
        return events
    chosen = [e for e in events if target_id in e.deliveries]
    if not chosen:
        targets = ", ".join(t for e in events for t in e.targets)
        raise ReplayRefused(
            f"event {ident} had no delivery to target {target_id} under any of the {len(events)} "
            f"integrations that received it (their targets: {targets})"
        )
    return chosen


def _targets(event: ArchivedEvent, target_id: str | None) -> list[str]:
    named = event.named_delivery
    if target_id is None:
        return [named[0]] if named else event.targets
    # Before the check below: looked up by delivery id, ``event`` holds only the archive records with
    # that delivery, so its targets are those of the batches it went in, not every target it had.
    if named and named[0] != target_id:
        raise ReplayRefused(f"delivery {named[1]} went to target {named[0]}, not {target_id}")
    if target_id not in event.deliveries:
        raise ReplayRefused(
            f"event {event.event_id} had no delivery to target {target_id} "
            f"(its targets: {', '.join(event.targets)}); a delivery is archived once a dispatcher "
            "attempts or dead-letters it, so one still held back (breaker open, rate limit, Retry-After "
            "quiet, or waiting in its conversation) has none yet: relay deliveries show says where it is"
        )
    return [target_id]


def _check_target(
    targets: TargetDirectory, integration_id: str, target_id: str, *, others: Sequence[str] = ()
) -> Target:
    """The target a replay goes to; ReplayRefused when it is unknown or disabled. ``others``: the
    event's other targets of a replay to all of them, named so that they can be replayed to alone."""
    alone = (
        f", or replay to the event's other targets one at a time with --target ({', '.join(others)})"
        if others
        else ""
    )
    target = targets.get_target(integration_id, target_id)
    if target is None:
        raise ReplayRefused(f"target {target_id} is unknown: it is no longer in the TargetsTable{alone}")
    if not target.enabled:
        raise ReplayRefused(
            f"target {target_id} is disabled: enable it first (relay targets enable {target_id}){alone}"
        )
    return target


def _delivery_id(event: ArchivedEvent, target_id: str) -> UUID:
    named = event.named_delivery
    if named and named[0] == target_id:
        return named[1]
    return event.deliveries[target_id]


def _body(task: DeliveryTask) -> str:
    """The task as the intake queues it (ASCII, the event's text as one JSON string)."""
    if task.event_json is None:
        return task_body(task, None)
    return task_body(task, json.dumps(task.event_json, ensure_ascii=True))

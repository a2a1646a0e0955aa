"""The audit record of an operator's action: who did what, when, to which target (and event).

It is written like the dispatcher's lines, one object per action and target under
``audit/date=YYYY-MM-DD/target=<targetId>/operator-<operationId>.jsonl``, with the audit record's own
field names (the Glue table reads them alongside the dispatcher's), and logged. ``outcome`` says
what was done: ``replayed``, ``target-enabled``, ``target-disabled`` (and ``dlq-discarded``, written by
relay.logic.dlq.discard, one record per letter of a ``relay dlq discard`` run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from relay.errors import DependencyUnavailable
from relay.models.targets import Target
from relay.models.timestamps import iso_utc
from relay.observability import logger
from relay.ports import AuditSink, TargetDirectory

REPLAYED = "replayed"
TARGET_ENABLED = "target-enabled"
TARGET_DISABLED = "target-disabled"


def operator_record(
    outcome: str,
    *,
    operation_id: str,
    actor: str,
    at: datetime,
    integration_id: str,
    target_id: str,
    event_id: str | None = None,
    conversation_id: str | None = None,
    delivery_id: UUID | None = None,
    replay_of: UUID | None = None,
) -> dict[str, Any]:
    """``replay_of``: the delivery id replayed, when the replay was given a fresh one (``--new-id``)."""
    return {
        "invocationId": f"operator-{operation_id}",
        "deliveryId": str(delivery_id) if delivery_id else None,
        "eventId": event_id,
        "conversationId": conversation_id,
        "integrationId": integration_id,
        "targetId": target_id,
        "startedAt": iso_utc(at),
        "finishedAt": iso_utc(at),
        "outcome": outcome,
        "actor": actor,
        "replayOf": str(replay_of) if replay_of else None,
    }


@dataclass(frozen=True)
class Audited:
    """An action's audit records, and the targets whose record could not be written to the bucket
    (every record is logged all the same)."""

    records: list[dict[str, Any]]
    unwritten: list[str]


def write_operator_records(audit: AuditSink, records: Sequence[dict[str, Any]], at: datetime) -> Audited:
    """Log each record and write it to the audit bucket, one object per record."""
    unwritten = []
    for record in records:
        logger.info("operator action", extra=record)
        try:
            audit.write(at.strftime("%Y-%m-%d"), record["targetId"], record["invocationId"], [record])
        except DependencyUnavailable as exc:
            logger.warning("operator audit record not written", extra={"error": str(exc)})
            unwritten.append(record["targetId"])
    return Audited(list(records), unwritten)


def switch_target(
    targets: TargetDirectory,
    audit: AuditSink,
    target: Target,
    *,
    enabled: bool,
    actor: str,
    now: datetime,
    operation_id: str,
) -> Audited | None:
    """Enable or disable ``target`` (config sync keeps the flag while its config is unchanged), then
    audit the change. None, with nothing audited, when the target was already so by the time of the
    write (``target`` is the caller's earlier read: another operator, or the dispatcher's disable on
    410, got there first)."""
    if not targets.set_target_enabled(target.integration_id, target.target_id, enabled):
        return None
    record = operator_record(
        TARGET_ENABLED if enabled else TARGET_DISABLED,
        operation_id=operation_id,
        actor=actor,
        at=now,
        integration_id=target.integration_id,
        target_id=target.target_id,
    )
    return write_operator_records(audit, [record], now)

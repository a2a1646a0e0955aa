"""The audit record of an operator's action: who did what, when, to which target (and event).

It is written like the dispatcher's lines, one object per action and target under
``audit/date=YYYY-MM-DD/target=<targetId>/operator-<operationId>.jsonl``, with the audit record's own
field names (the Glue table reads them alongside the dispatcher's), and logged. ``outcome`` says
what was done: ``replayed``, ``target-enabled``, ``target-disabled``.
"""

from __future__ import annotations

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


def write_operator_record(audit: AuditSink, record: dict[str, Any], at: datetime) -> None:
    """Log ``record`` and write it to the audit bucket (DependencyUnavailable if it cannot be)."""
    logger.info("operator action", extra=record)
    audit.write(at.strftime("%Y-%m-%d"), record["targetId"], record["invocationId"], [record])


def switch_target(
    targets: TargetDirectory,
    audit: AuditSink,
    target: Target,
    *,
    enabled: bool,
    actor: str,
    now: datetime,
    operation_id: str,
) -> dict[str, Any]:
    """Enable or disable ``target`` (config sync keeps the flag while the config is unchanged), then
    audit it. Returns the audit record; DependencyUnavailable if the record could not be written
    after the change was made (the message says so)."""
    targets.set_target_enabled(target.integration_id, target.target_id, enabled)
    record = operator_record(
        TARGET_ENABLED if enabled else TARGET_DISABLED,
        operation_id=operation_id,
        actor=actor,
        at=now,
        integration_id=target.integration_id,
        target_id=target.target_id,
    )
    try:
        write_operator_record(audit, record, now)
    except DependencyUnavailable as exc:
        state = "enabled" if enabled else "disabled"
        raise DependencyUnavailable(
            f"target {state}, but its audit record could not be written ({exc})"
        ) from None
    return record

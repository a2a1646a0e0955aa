"""What ``relay dlq redrive --queue eventbridge|intake-failures`` runs in-process (see relay.wiring)."""

from __future__ import annotations

from relay.logic.intake import Intake
from relay.logic.intake.metrics import NoMetrics
from relay.settings import Settings
from relay.wiring.intake import build_intake


def failed_event_intake(settings: Settings) -> Intake:
    """The intake wired as the IntakeFunction is, from the operator's settings (TargetsTable,
    IdempotencyTable, delivery queue, audit bucket, EVENTBRIDGE_INTEGRATION_ID): the redrive sends each
    failed event through its EventBridge path. No metrics: a terminal has no EMF log group to feed."""
    settings.need("eventbridge_integration_id")  # every event needs it: fail before touching a message
    return build_intake(settings, metrics=NoMetrics())

"""The intake (docs/intake.md): Genesys webhooks and EventBridge events in, delivery tasks out.

    http_api   API Gateway HTTP API v2 events in, responses out
    messages   what is let in: Open Messaging messages, Genesys EventBridge events
    filters    which targets an event goes to (each target's event filters)
    fan_out    one DeliveryTask per target that takes it, once per event (idempotency, claim checks)
    ordering   an event's conversation and the FIFO message group of an ordered target's task
    metrics    the intake's metrics
    service    ``Intake``: the checks in order, and errors become answers in one place

Everything from outside comes through relay.ports; relay.wiring builds an ``Intake``.
"""

from relay.logic.intake.metrics import PowertoolsMetrics
from relay.logic.intake.service import Intake

__all__ = ["Intake", "PowertoolsMetrics"]

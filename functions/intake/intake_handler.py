"""IntakeFunction: Genesys Cloud webhooks (HTTP API) and Genesys EventBridge events in, delivery tasks out.

Wiring only; the intake itself is relay.logic.intake.
"""

from __future__ import annotations

from typing import Any

from relay.logic.intake import handle_lambda_event
from relay.observability import logger, metrics


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle_lambda_event(event)

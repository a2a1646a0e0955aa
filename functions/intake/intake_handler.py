"""IntakeFunction: Genesys Cloud webhooks (HTTP API) and Genesys EventBridge events in, delivery tasks out.

Wiring only: the intake itself is relay.logic.intake, its object graph relay.wiring.intake.
"""

from __future__ import annotations

from typing import Any

from relay.observability import logger, metrics
from relay.wiring.intake import answering_in_time, container_intake


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with answering_in_time(context):
        return container_intake().handle(event)

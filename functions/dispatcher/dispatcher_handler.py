"""DispatcherFunction: SQS batch of DeliveryTasks -> concurrent deliveries -> partial batch response.

Wiring only: the delivery engine is relay.logic.dispatch (metrics and audit are flushed there, once
per batch, because each target gets its own metric dimension and audit object), its object graph
relay.wiring.dispatcher.
"""

from __future__ import annotations

from typing import Any

from relay.observability import logger
from relay.wiring.dispatcher import container_dispatcher


# Every delivery line carries the request id and the cold-start flag (metrics are flushed in dispatch).
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return container_dispatcher().handle_batch(
        event.get("Records", []),
        invocation_id=getattr(context, "aws_request_id", None),
        remaining_ms=getattr(context, "get_remaining_time_in_millis", None),
    )

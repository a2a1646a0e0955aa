"""FirstHopDispatcherFunction: SQS FIFO batch of DeliveryTasks off the intake's first hop -> deliveries
-> partial batch response.

The fast lane's dispatcher on the intake's FIFO first hop (FirstHopQueue), wiring only, like the
DispatcherFunction's handler: the same engine (relay.logic.dispatch). FIRST_HOP in this function's
environment makes relay.wiring.dispatcher treat message groups as single deliveries (not
conversations) and re-send deferrals to REQUEUE_QUEUE_URL.
"""

from __future__ import annotations

from typing import Any

from relay.observability import logger
from relay.wiring.dispatcher import container_dispatcher


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return container_dispatcher().handle_batch(
        event.get("Records", []),
        invocation_id=getattr(context, "aws_request_id", None),
        remaining_ms=getattr(context, "get_remaining_time_in_millis", None),
    )

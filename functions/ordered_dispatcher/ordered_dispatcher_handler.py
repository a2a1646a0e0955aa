"""OrderedDispatcherFunction: SQS FIFO batch of ordered DeliveryTasks -> one conversation at a time ->
partial batch response.

Wiring only, like the DispatcherFunction's handler: the same engine (relay.logic.dispatch), whose
ordered path (relay.logic.dispatch.fifo) takes these records; ORDERED_QUEUE_URL in this function's
environment makes relay.wiring.dispatcher build the ordered dispatcher.
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

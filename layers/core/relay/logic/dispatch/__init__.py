"""The dispatcher: deliver SQS batches of DeliveryTasks to their targets (docs/dispatcher.md).

    records   SQS record -> task, target, attempt number; or why it cannot be attempted
    lanes     one target's records in a batch and its breaker's admission (deliver/probe/defer)
    isolation slow targets: latency per target, routing to the slow lane, lane moves
    rate_limit  a lane's admission by its target's shared token bucket, and throttles' feedback (AIMD)
    bucket_views  what a container knows of the buckets without asking (last state, recent deliveries)
    attempt   one attempt: event, secrets, request, send, classify -> Attempt
    deliver   one record's step in the pool: its target's slot, then deliver it or settle it unattempted
    settle    the one place a verdict becomes an action (delivered, retry, DLQ, deferred)
    audit     audit lines and objects, scrubbing
    batch     what an invocation accumulates (failures, 410s, Retry-After floors, audit lines, metrics)
    metrics   the dispatcher's EMF metrics
    runners   how a batch's steps share the pool (one thread or all), in the caller's context
    engine    the batch flow: thread pool, per-target slots, time budget, the AWS calls' deadline

Everything from outside comes through relay.ports; relay.wiring builds a ``Dispatcher``.
"""

from relay.logic.dispatch.engine import Dispatcher

__all__ = ["Dispatcher"]

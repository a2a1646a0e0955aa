"""The intake function's object graph (see relay.wiring)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

from relay.adapters.aws import calls_until
from relay.adapters.idempotency import DynamoDBIdempotencyStore
from relay.adapters.sqs import SqsQueues
from relay.logic.intake import Intake, PowertoolsMetrics
from relay.ports import (
    ClaimCheckStore,
    FirstHopQueue,
    IdempotencyStore,
    IntegrationLookup,
    MetricsRecorder,
    OrderedTaskQueue,
    SecretReader,
    TaskQueue,
)
from relay.settings import Settings, get_settings
from relay.wiring import PerSettings, aws_clients, s3_claim_checks, secret_store, target_store


def build_intake(
    settings: Settings,
    *,
    integrations: IntegrationLookup | None = None,
    queue: TaskQueue | None = None,
    idempotency: IdempotencyStore | None = None,
    claim_checks: ClaimCheckStore | None = None,
    secrets: SecretReader | None = None,
    refresh_secret: SecretReader | None = None,
    metrics: MetricsRecorder | None = None,
    ordered_queue: OrderedTaskQueue | None = None,
    first_hop: FirstHopQueue | None = None,
) -> Intake:
    """The intake wired to AWS as ``settings`` describe it. With FIRST_HOP_QUEUE_URL set (template
    IntakeDeduplication=queue) SQS deduplicates on the first hop, and no idempotency store is used."""
    if secrets is None:
        store = secret_store(settings)
        secrets, refresh_secret = store, refresh_secret or store.refresh
    if queue is None:
        sqs = SqsQueues(
            aws_clients(settings).client("sqs"),
            delivery_queue_url=settings.need("delivery_queue_url"),
            ordered_queue_url=settings.ordered_queue_url,
            first_hop_queue_url=settings.first_hop_queue_url,
        )
        queue = sqs
        if ordered_queue is None and settings.ordered_queue_url:
            ordered_queue = sqs
        if first_hop is None and settings.first_hop_queue_url:
            first_hop = sqs
    if idempotency is None and first_hop is None:
        idempotency = DynamoDBIdempotencyStore(
            aws_clients(settings).client("dynamodb"),
            settings.need("idempotency_table"),
            ttl_seconds=settings.idempotency_ttl_seconds,
        )
    return Intake(
        integrations=integrations or target_store(settings),
        get_secret=secrets,
        refresh_secret=refresh_secret,
        queue=queue,
        idempotency=idempotency,
        claim_checks=claim_checks or (s3_claim_checks(settings) if settings.audit_bucket else None),
        max_body_bytes=settings.max_body_bytes,
        eventbridge_integration_id=settings.eventbridge_integration_id,
        metrics=metrics or PowertoolsMetrics(settings.release_dimensions()),
        ordered_queue=ordered_queue,
        first_hop=first_hop,
    )


_intakes: PerSettings[Intake] = PerSettings(1)

# Kept after the intake's last AWS call, to build its answer and return it.
ANSWER_SECONDS = 0.5


def answering_in_time(context: Any) -> AbstractContextManager[None]:
    """The invocation's AWS calls must end ANSWER_SECONDS before its timeout (``context``'s remaining
    time): a dependency that keeps answering slowly ends as the documented 503, not as API Gateway's
    500 after the function's timeout."""
    remaining = context.get_remaining_time_in_millis() / 1000
    return calls_until(time.monotonic() + remaining - ANSWER_SECONDS)


def container_intake() -> Intake:
    """The intake of this container, built once and reused by every invocation."""
    settings = get_settings()
    return _intakes.get(settings, lambda: build_intake(settings))

"""The dispatcher function's object graph (see relay.wiring)."""

from __future__ import annotations

import random
from collections.abc import Callable

from relay.adapters.archive import S3EventArchive
from relay.adapters.attempt_counter import DynamoAttemptCounter
from relay.adapters.audit import S3AuditSink
from relay.adapters.aws import calls_until
from relay.adapters.http import HttpSender
from relay.adapters.oauth import ClientCredentialsTokens
from relay.adapters.sqs import SqsQueues
from relay.adapters.tls import TlsTrust
from relay.logic.dispatch import Dispatcher
from relay.logic.url_policy import UrlPolicy
from relay.models.http import HttpResult
from relay.ports import (
    AccessTokens,
    AttemptCounter,
    AuditSink,
    BreakerStore,
    ClaimCheckReader,
    Clock,
    DeliveryQueueOps,
    EventArchive,
    HttpClient,
    OrderedQueueOps,
    RateLimitStore,
    TargetDirectory,
    TargetSecretReader,
)
from relay.settings import Settings, get_settings
from relay.wiring import (
    PerSettings,
    aws_clients,
    breaker_store,
    rate_limit_store,
    s3_claim_checks,
    secret_store,
    target_store,
)


def http_sender(settings: Settings, *, pool_size: int, body_limit_bytes: int) -> HttpSender:
    """The deliveries' HTTP sender: the URL policy checked at connect time, the CAs trusted (with the
    local stack's RELAY_LOCAL_TRUSTED_CAS). ``relay targets check`` builds its sender here too, so it
    sees a target as the dispatcher does."""
    return HttpSender(
        pool_size=pool_size,
        body_limit_bytes=body_limit_bytes,
        endpoint_check=UrlPolicy.from_settings(settings).check_endpoint,
        trust=TlsTrust.from_settings(settings),
    )


def token_source(
    http: HttpSender, *, on_answer: Callable[[HttpResult], None] | None = None
) -> ClientCredentialsTokens:
    """OAuth2 targets' tokens, requested over ``http`` (the deliveries' road: URL policy, deadline,
    trust, pools). ``relay targets check`` builds its own here too, ``on_answer`` seeing each token
    endpoint's answer (relay.adapters.oauth.ClientCredentialsTokens)."""
    return ClientCredentialsTokens(http, on_answer=on_answer)


def build_dispatcher(
    settings: Settings,
    *,
    targets: TargetDirectory | None = None,
    http: HttpClient | None = None,
    queue: DeliveryQueueOps | None = None,
    breakers: BreakerStore | None = None,
    rate_limits: RateLimitStore | None = None,
    audit: AuditSink | None = None,
    secrets: TargetSecretReader | None = None,
    claim_checks: ClaimCheckReader | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] | None = None,
    tokens: AccessTokens | None = None,
    ordered_queue: OrderedQueueOps | None = None,
    attempts: AttemptCounter | None = None,
    archive: EventArchive | None = None,
) -> Dispatcher:
    """A dispatcher wired to the deployment's resources. ``audit`` None: the S3 sink when AUDIT_BUCKET
    is set, else no audit objects (the audit lines are still logged); ``archive`` None: the S3 archive
    when AUDIT_BUCKET is set and ARCHIVE_ENABLED is true.

    With ORDERED_ATTEMPTS_TABLE set (only the OrderedDispatcherFunction's environment names it) it is
    the ordered dispatcher: it consumes the FIFO queue and needs its DLQ and the attempts table; it never
    re-sends to the standard delivery queue, so it needs none of the standard queues (the intake's
    ORDERED_QUEUE_URL alone does not make a dispatcher ordered)."""
    ordered = bool(settings.ordered_attempts_table)
    if queue is None or (ordered and ordered_queue is None):
        sqs = SqsQueues(
            aws_clients(settings).client("sqs"),
            delivery_queue_url=settings.delivery_queue_url
            if ordered
            else settings.need("delivery_queue_url"),
            dead_letter_queue_url=(
                settings.dead_letter_queue_url if ordered else settings.need("dead_letter_queue_url")
            ),
            ordered_queue_url=settings.need("ordered_queue_url") if ordered else settings.ordered_queue_url,
            ordered_dead_letter_queue_url=(
                settings.need("ordered_dead_letter_queue_url") if ordered else None
            ),
            # Only standard records are ever routed there: the ordered path's lanes never route (and
            # the template gives the OrderedDispatcherFunction no slow queue).
            slow_queue_url=settings.slow_delivery_queue_url,
            # The first hop is FIFO: its dispatcher re-sends deferrals to the standard queue.
            requeue_queue_url=settings.need("requeue_queue_url") if settings.first_hop else None,
        )
        queue, ordered_queue = queue or sqs, ordered_queue or (sqs if ordered else None)
    if ordered and attempts is None:
        attempts = DynamoAttemptCounter(
            aws_clients(settings).client("dynamodb"), settings.need("ordered_attempts_table")
        )
    if audit is None and settings.audit_bucket:
        audit = S3AuditSink(aws_clients(settings).client("s3"), settings.audit_bucket)
    if archive is None and settings.audit_bucket and settings.archive_enabled:
        archive = S3EventArchive(aws_clients(settings).client("s3"), settings.audit_bucket)
    if http is None:
        http = http_sender(
            settings,
            pool_size=settings.delivery_concurrency,
            body_limit_bytes=settings.response_body_limit_bytes,
        )
    if tokens is None and isinstance(http, HttpSender):
        tokens = token_source(http)
    return Dispatcher(
        settings=settings,
        targets=targets or target_store(settings),
        http=http,
        queue=queue,
        breakers=breakers or breaker_store(settings),
        rate_limits=rate_limits or rate_limit_store(settings),
        audit=audit,
        secrets=secrets or secret_store(settings),
        claim_checks=claim_checks or s3_claim_checks(settings),
        clock=clock,
        rng=rng,
        sleep=sleep,
        tokens=tokens,
        ordered_queue=ordered_queue,
        attempts=attempts,
        archive=archive,
        aws_deadline=calls_until,
    )


# One per Settings object, as many as the template has dispatcher functions (fast lane, slow lane,
# ordered lane): on Lambda a container runs one of them, but the local stack runs them in one process,
# and with room for one each evicted and closed the other's dispatcher while its invocation ran
# ("cannot schedule new futures after shutdown").
DISPATCHER_FUNCTIONS = 4
_dispatchers: PerSettings[Dispatcher] = PerSettings(DISPATCHER_FUNCTIONS, close=Dispatcher.close)


def container_dispatcher() -> Dispatcher:
    """The dispatcher of this container: session, pools and caches built once and reused by every batch."""
    settings = get_settings()
    return _dispatchers.get(settings, lambda: build_dispatcher(settings))

"""The one place the relay is put together: each function's object graph, built from a ``Settings``.

Logic is written against relay.ports; the adapters take their clients and settings as arguments.
Here the two meet, one module per function so that each handler imports (during Lambda's init
phase) what its function uses and nothing else:

    relay.wiring.intake        build_intake(settings, ...), container_intake()
    relay.wiring.dispatcher    build_dispatcher(settings, ...), container_dispatcher(), and
                               http_sender(settings, ...) and token_source(http): the deliveries'
                               sender and OAuth token client (`relay targets check`'s too)
    relay.wiring.config_sync   run_config_sync(settings, ...), warm_up()
    relay.wiring.dlq           failed_event_intake(settings): the intake `relay dlq redrive` runs in-process
    relay.wiring.operator      the operator commands' audit reader and sink, event archive, Athena,
                               stack outputs and caller identity
    relay.wiring               the AWS clients (aws_clients, aws_client) and the adapters several
                               functions (and the operator commands, relay.cli) use: target_store,
                               breaker_store, rate_limit_store, sqs_queues, s3_claim_checks,
                               secret_store

The builders' keyword arguments name the parts a test or a benchmark replaces (an in-memory store, a
fake HTTP client, a manual clock); everything not given is built from ``settings``.

Per container (one Lambda sandbox, or one function of the local stack) a function's graph is built
once and reused by every invocation: the ``container_*`` entry points read the settings in force
(``get_settings()``: the only callers below the handlers) and rebuild when that Settings object
changes. Nothing here or below reads the process environment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from relay.adapters.aws import AwsClients
from relay.adapters.breaker_store import DynamoBreakerStore
from relay.adapters.claim_checks import S3ClaimChecks
from relay.adapters.rate_limit_store import DynamoRateLimitStore
from relay.adapters.secrets import SecretsManagerSecrets
from relay.adapters.sqs import SqsQueues
from relay.adapters.target_store import TargetStore
from relay.settings import Settings, get_settings


class PerSettings[T]:
    """Objects built once per Settings object, the ``size`` most recent kept (a new Settings object
    means the configuration was read again: what was built from the old one is dropped, and closed)."""

    def __init__(self, size: int, close: Callable[[T], None] | None = None) -> None:
        self._size = size
        self._close = close
        self._built: dict[int, tuple[Settings, T]] = {}
        self._lock = threading.Lock()

    def get(self, settings: Settings, build: Callable[[], T]) -> T:
        with self._lock:
            key = id(settings)
            hit = self._built.pop(key, None)
            if hit is not None and hit[0] is settings:
                self._built[key] = hit
                return hit[1]
            value = build()
            self._built[key] = (settings, value)
            dropped = [hit[1]] if hit is not None else []
            while len(self._built) > self._size:
                dropped.append(self._built.pop(next(iter(self._built)))[1])
        for old in dropped:
            if self._close is not None:
                self._close(old)
        return value


# The local stack runs several functions in one process, each with its own Settings: room for each.
_clients: PerSettings[AwsClients] = PerSettings(8)


def aws_clients(settings: Settings | None = None) -> AwsClients:
    """The container's AWS clients for ``settings`` (default: the settings in force)."""
    chosen = settings or get_settings()
    return _clients.get(chosen, lambda: AwsClients(chosen))


def aws_client(service: str, settings: Settings | None = None) -> Any:
    """One of those clients, e.g. ``aws_client("sqs")`` (operator tools and tests)."""
    return aws_clients(settings).client(service)


def target_store(
    settings: Settings, *, cache_ttl_seconds: float | None = None, consistent_reads: bool = False
) -> TargetStore:
    """The TargetsTable; operator commands pass ``cache_ttl_seconds=0`` to read it fresh, config sync
    also ``consistent_reads`` (its writes are conditional on the versions it read)."""
    ttl = settings.target_cache_ttl_seconds if cache_ttl_seconds is None else cache_ttl_seconds
    return TargetStore(
        aws_clients(settings).client("dynamodb"),
        settings.need("targets_table"),
        cache_ttl_seconds=ttl,
        consistent_reads=consistent_reads,
    )


def breaker_store(settings: Settings) -> DynamoBreakerStore:
    return DynamoBreakerStore(aws_clients(settings).client("dynamodb"), settings.need("breaker_table"))


def rate_limit_store(settings: Settings) -> DynamoRateLimitStore:
    """Targets' token buckets: items of their own in the BreakerTable (relay.adapters.rate_limit_store)."""
    return DynamoRateLimitStore(aws_clients(settings).client("dynamodb"), settings.need("breaker_table"))


def sqs_queues(settings: Settings) -> SqsQueues:
    """The delivery queue and the DLQ as ``settings`` name them (either may be unset where a caller
    does not use it: ``relay dlq`` passes its queue URLs explicitly)."""
    return SqsQueues(
        aws_clients(settings).client("sqs"),
        delivery_queue_url=settings.delivery_queue_url,
        dead_letter_queue_url=settings.dead_letter_queue_url,
    )


def secret_store(settings: Settings) -> SecretsManagerSecrets:
    """Secrets Manager, with a cache of its own (SECRET_CACHE_TTL_SECONDS)."""
    return SecretsManagerSecrets(
        aws_clients(settings).client("secretsmanager"), cache_ttl_seconds=settings.secret_cache_ttl_seconds
    )


def s3_claim_checks(settings: Settings) -> S3ClaimChecks:
    return S3ClaimChecks(aws_clients(settings).client("s3"), settings.audit_bucket)

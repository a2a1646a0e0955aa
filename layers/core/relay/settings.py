"""Settings: one validated model, read lazily from the environment and cached per container.

This module is the only reader of the process environment. Everything below a handler gets its
``Settings`` passed in: relay.wiring builds each function's object graph from one, and only the
wiring's per-container entry points (and the CLI's commands) call ``get_settings()``. The local stack
runs each function inside ``settings_scope(<that function's Settings>)``, so no function's
configuration touches the process environment. Tests may set the environment and call
``get_settings.cache_clear()``, or build a Settings with ``Settings.model_validate({...})``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from botocore.utils import validate_region_name
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from relay.errors import ConfigurationError
from relay.models.breaker import DeliveryLane
from relay.models.http import RETRY_AFTER_CEILING_SECONDS
from relay.observability import DEFAULT_SERVICE


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], BeforeValidator(_csv)]
Port = Annotated[int, Field(ge=1, le=65_535)]
CsvPorts = Annotated[list[Port], BeforeValidator(_csv), Field(min_length=1)]


def _region(value: str) -> str:
    """A region name as botocore checks it (its own rule: a host label; InvalidRegionError is a
    ValueError, so the setting is named). Refused here, not when a client is made: there it is a
    ValueError that the CLI could only call a bug."""
    validate_region_name(value)
    return value


# Not empty either, which botocore's rule lets through: `AWS_REGION=$UNSET` would reach it as the
# endpoint https://sqs..amazonaws.com.
AwsRegion = Annotated[str, Field(min_length=1), AfterValidator(_region)]


def _endpoint_url(value: str | None) -> str | None:
    """An http(s) URL with a host, as botocore takes an endpoint (else its ValueError, a bug to the CLI).
    The message never quotes the value: a URL can carry credentials."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - read to check it: a port out of range or not a number raises
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


EndpointUrl = Annotated[str | None, AfterValidator(_endpoint_url)]


def _integration_id(value: str | None) -> str | None:
    """EVENTBRIDGE_INTEGRATION_ID: an id the intake could take (relay.models.genesys.INTEGRATION_ID).
    One with a space around it would key its own record, which no target names: every EventBridge
    event accepted and sent nowhere. Empty: unset, as the template's default leaves it."""
    from relay.models.genesys import INTEGRATION_ID

    if not value:
        return None
    if not INTEGRATION_ID.fullmatch(value):
        raise ValueError("not an integration id (a letter or digit, then letters, digits, . _ : -)")
    return value


IntegrationId = Annotated[str | None, AfterValidator(_integration_id)]


def _api_host(value: str | None) -> str | None:
    """GENESYS_API_HOST: unset or empty means the region's host; anything else must be an http(s) URL
    with a host, else the SDK's URL error reached the login as "an unreadable body" from Genesys."""
    return _endpoint_url(value) if value else None


ApiHost = Annotated[str | None, AfterValidator(_api_host)]


class Settings(BaseModel):
    """Everything the functions and the CLI read from the environment (names are the env vars)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    # --- deployment -------------------------------------------------------------------------------
    stage: Literal["local", "dev", "prod"] = Field("local", alias="RELAY_STAGE")
    region: AwsRegion = Field("us-east-1", alias="AWS_REGION")
    # Where every AWS client connects (moto's server in the local stack and the tests); None: AWS.
    aws_endpoint_url: EndpointUrl = Field(None, alias="AWS_ENDPOINT_URL")
    # Explicit credentials for the clients (the local stack's dummy ones). None: boto3's own chain.
    aws_access_key_id: str | None = Field(None, alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, alias="AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = Field(None, alias="AWS_SESSION_TOKEN")
    # Each AWS call's bounds (relay.adapters.aws): connect, read, and tries in all, the first included
    # (botocore's standard retries; 4 is what "max_attempts": 3 gave). template.yaml gives the intake
    # shorter ones: its calls must end inside its own timeout.
    aws_connect_timeout_seconds: float = Field(2.0, alias="AWS_CONNECT_TIMEOUT_SECONDS", gt=0, le=60)
    aws_read_timeout_seconds: float = Field(5.0, alias="AWS_READ_TIMEOUT_SECONDS", gt=0, le=60)
    aws_max_attempts: int = Field(4, alias="AWS_MAX_ATTEMPTS", ge=1, le=10)
    metrics_namespace: str = Field("GenesysRelay", alias="POWERTOOLS_METRICS_NAMESPACE")
    service_name: str = Field(DEFAULT_SERVICE, alias="POWERTOOLS_SERVICE_NAME")  # as relay.observability
    # Set by Lambda, never by the template: this function's name and the version running here (the
    # published version's number when invoked through the alias `live`). None outside Lambda.
    lambda_function_name: str | None = Field(None, alias="AWS_LAMBDA_FUNCTION_NAME")
    lambda_function_version: str | None = Field(None, alias="AWS_LAMBDA_FUNCTION_VERSION")

    # --- resources (set by template.yaml; None where a function does not need them) ------------------
    targets_table: str | None = Field(None, alias="TARGETS_TABLE")
    breaker_table: str | None = Field(None, alias="BREAKER_TABLE")
    idempotency_table: str | None = Field(None, alias="IDEMPOTENCY_TABLE")
    # The queue this function sends tasks to (intake) or consumes (a dispatcher: its own lane's queue).
    delivery_queue_url: str | None = Field(None, alias="DELIVERY_QUEUE_URL")
    # The intake's FIFO first hop (docs/intake.md, "The first hop"). Set on the intake: tasks for
    # unordered targets go there, each its own message group, deduplicated by SQS on the delivery id,
    # and the intake writes no idempotency record (template parameter IntakeDeduplication=queue).
    first_hop_queue_url: str | None = Field(None, alias="FIRST_HOP_QUEUE_URL")
    # Its FIFO dead-letter queue, where SQS's redrive backstop moves a first-hop record the dispatcher
    # never finished with (stack output FirstHopDeadLetterQueueUrl): read only by
    # `relay dlq --queue first-hop`, which redrives its letters to FIRST_HOP_QUEUE_URL.
    first_hop_dead_letter_queue_url: str | None = Field(None, alias="FIRST_HOP_DEAD_LETTER_QUEUE_URL")
    # Set on the dispatcher that consumes the first hop (its DELIVERY_QUEUE_URL): its records' message
    # groups are single deliveries, not conversations, so they take the standard path; and since a FIFO
    # queue takes no per-message delay, deferrals are re-sent to REQUEUE_QUEUE_URL (the DeliveryQueue).
    first_hop: bool = Field(False, alias="FIRST_HOP")
    requeue_queue_url: str | None = Field(None, alias="REQUEUE_QUEUE_URL")
    # The slow lane's queue, where the fast lane's dispatcher routes a slow target's records.
    slow_delivery_queue_url: str | None = Field(None, alias="SLOW_DELIVERY_QUEUE_URL")
    dead_letter_queue_url: str | None = Field(None, alias="DEAD_LETTER_QUEUE_URL")
    # The EventBridge path's failure queues (stack outputs IntakeFailureQueueUrl and
    # EventBridgeDeadLetterQueueUrl): read only by `relay dlq --queue intake-failures|eventbridge`.
    intake_failure_queue_url: str | None = Field(None, alias="INTAKE_FAILURE_QUEUE_URL")
    eventbridge_dead_letter_queue_url: str | None = Field(None, alias="EVENTBRIDGE_DEAD_LETTER_QUEUE_URL")
    # The ordered path (docs/dispatcher.md, "Ordering"): the FIFO delivery queue and its FIFO dead-letter
    # queue (the intake sends ordered targets' tasks to the first; the ordered dispatcher consumes it), and
    # the table counting the ordered deliveries' failed attempts.
    ordered_queue_url: str | None = Field(None, alias="ORDERED_QUEUE_URL")
    ordered_dead_letter_queue_url: str | None = Field(None, alias="ORDERED_DEAD_LETTER_QUEUE_URL")
    ordered_attempts_table: str | None = Field(None, alias="ORDERED_ATTEMPTS_TABLE")
    audit_bucket: str | None = Field(None, alias="AUDIT_BUCKET")
    # Secrets Manager names are "<prefix>/<kind>/<id>"; see relay.models.secrets.
    secrets_prefix: str = Field("relay/local", alias="SECRETS_PREFIX")

    # --- URL policy ---------------------------------------------------------------------------------
    # Only the local stack sets this: it lets targets be http://127.0.0.1:PORT loopback receivers.
    allow_loopback_targets: bool = Field(False, alias="RELAY_ALLOW_LOOPBACK_TARGETS")
    # Ports a target URL may use (template parameter AllowedTargetPorts), checked by config sync and at
    # connect time. Loopback targets of the local stack may use any port.
    allowed_target_ports: CsvPorts = Field(default_factory=lambda: [443], alias="ALLOWED_TARGET_PORTS")
    # Local stack only (needs RELAY_ALLOW_LOOPBACK_TARGETS): a PEM file of CA certificates trusted
    # besides certifi's, for loopback https receivers and token endpoints (relay.adapters.tls).
    local_trusted_cas: str | None = Field(None, alias="RELAY_LOCAL_TRUSTED_CAS")

    # --- caches -------------------------------------------------------------------------------------
    # How long a container trusts its cached targets: how late a `relay targets disable` or a config
    # change reaches the dispatchers (a disabled target is read again every second: DISABLED_RECHECK_SECONDS).
    target_cache_ttl_seconds: float = Field(10.0, alias="TARGET_CACHE_TTL_SECONDS", ge=0)
    secret_cache_ttl_seconds: int = Field(300, alias="SECRET_CACHE_TTL_SECONDS", ge=0)

    # --- intake -------------------------------------------------------------------------------------
    max_body_bytes: int = Field(262_144, alias="MAX_BODY_BYTES", gt=0)
    idempotency_ttl_seconds: int = Field(3_600, alias="IDEMPOTENCY_TTL_SECONDS", gt=0)
    # EventBridge partner events carry no integration id: they fan out to this integration's targets.
    eventbridge_integration_id: IntegrationId = Field(None, alias="EVENTBRIDGE_INTEGRATION_ID")

    # --- dispatcher ---------------------------------------------------------------------------------
    delivery_concurrency: int = Field(10, alias="DELIVERY_CONCURRENCY", ge=1, le=100)
    per_target_concurrency: int = Field(10, alias="PER_TARGET_CONCURRENCY", ge=1, le=100)
    # A batch whose targets all answered faster than this lately starts on one thread, and gets the
    # others once it has run this long with records still waiting; any other batch starts on all of
    # them (relay.logic.dispatch.runners). 0: all threads from the start.
    serial_budget_ms: float = Field(20.0, alias="SERIAL_BUDGET_MS", ge=0)
    connect_timeout_seconds: float = Field(3.0, alias="CONNECT_TIMEOUT_SECONDS", gt=0)
    read_timeout_seconds: float = Field(10.0, alias="READ_TIMEOUT_SECONDS", gt=0)
    # The dispatcher function's own Timeout (template parameter DispatcherTimeoutSeconds): a request's
    # connect + read timeouts are cut to fit in one invocation (relay.logic.dispatch.attempt.timeouts),
    # or a target whose timeouts do not fit would never be attempted. At least 10 s: 3 s to settle and 2 s
    # to start leave 5 s for a request (the template's shortest is 15).
    dispatcher_timeout_seconds: float | None = Field(None, alias="DISPATCHER_TIMEOUT_SECONDS", ge=10)
    response_body_limit_bytes: int = Field(65_536, alias="RESPONSE_BODY_LIMIT_BYTES", ge=0)
    breaker_failure_threshold: int = Field(5, alias="BREAKER_FAILURE_THRESHOLD", ge=1)
    breaker_reset_seconds: float = Field(30.0, alias="BREAKER_RESET_SECONDS", gt=0)
    breaker_max_reset_seconds: float = Field(600.0, alias="BREAKER_MAX_RESET_SECONDS", gt=0)
    max_retry_delay_seconds: int = Field(
        RETRY_AFTER_CEILING_SECONDS, alias="MAX_RETRY_DELAY_SECONDS", ge=0, le=RETRY_AFTER_CEILING_SECONDS
    )
    # The delivery queue's redrive maxReceiveCount (template parameter MaxReceiveCount): planned attempts
    # stay below it, so the backstop never dead-letters a message without the relay's reason.
    max_receive_count: int | None = Field(None, alias="MAX_RECEIVE_COUNT", ge=2)
    # Slow-target isolation (relay.logic.dispatch.isolation). The lane this dispatcher serves; a target
    # whose latency (EWMA, timeouts counted in full) is above SLOW_TARGET_MS moves to the slow lane, and
    # comes back once below half of it, after at least SLOW_LANE_MIN_SECONDS there.
    dispatch_lane: DeliveryLane = Field(DeliveryLane.FAST, alias="DISPATCH_LANE")
    isolate_slow_targets: bool = Field(True, alias="ISOLATE_SLOW_TARGETS")
    slow_target_ms: float = Field(1_000.0, alias="SLOW_TARGET_MS", gt=0)
    slow_lane_min_seconds: float = Field(60.0, alias="SLOW_LANE_MIN_SECONDS", ge=0)
    # How long a conversation blocked by an ordered target with onExhausted block waits before its
    # blocking delivery is tried again (SQS caps a message's visibility at 12 h from its receipt).
    ordered_block_hold_seconds: int = Field(3_600, alias="ORDERED_BLOCK_HOLD_SECONDS", ge=1, le=43_000)
    # A batch of the ordered queue still running after this long deletes the records of the
    # conversations it has settled, so SQS hands out their next messages to another invocation instead
    # of keeping them behind a slow conversation until the batch ends (relay.logic.dispatch.fifo_groups).
    ordered_release_after_ms: int = Field(500, alias="ORDERED_RELEASE_AFTER_MS", ge=0, le=900_000)

    # The event archive (template parameter ArchiveEnabled): one object per invocation under archive/
    # in AUDIT_BUCKET holding the events it handled, so that `relay deliveries replay` can send them again.
    archive_enabled: bool = Field(True, alias="ARCHIVE_ENABLED")

    # --- config sync (Genesys Cloud) ----------------------------------------------------------------
    genesys_region: str = Field("mypurecloud.com", alias="GENESYS_REGION")
    genesys_api_host: ApiHost = Field(None, alias="GENESYS_API_HOST")
    genesys_credentials_secret: str | None = Field(None, alias="GENESYS_CREDENTIALS_SECRET")
    genesys_client_id: str | None = Field(None, alias="GENESYS_CLIENT_ID")
    genesys_client_secret: SecretStr | None = Field(None, alias="GENESYS_CLIENT_SECRET")
    genesys_open_messaging_integration_ids: CsvList = Field(
        default_factory=list, alias="GENESYS_OPEN_MESSAGING_INTEGRATION_IDS"
    )
    genesys_webhook_integration_ids: CsvList = Field(
        default_factory=list, alias="GENESYS_WEBHOOK_INTEGRATION_IDS"
    )
    genesys_timeout_seconds: float = Field(10.0, alias="GENESYS_TIMEOUT_SECONDS", gt=0)
    # 429 from Genesys: wait out Retry-After at most this many times, each wait at most this long;
    # past either bound the sync run ends with GenesysRateLimited (the next scheduled run retries).
    genesys_max_rate_limit_retries: int = Field(3, alias="GENESYS_MAX_RATE_LIMIT_RETRIES", ge=0, le=10)
    genesys_max_retry_after_seconds: float = Field(10.0, alias="GENESYS_MAX_RETRY_AFTER_SECONDS", ge=0, le=60)
    # One sync run ends with GenesysDeadlineExceeded rather than wait or request past this many seconds
    # from its start; template.yaml keeps it below ConfigSyncFunction's Timeout so the run ends cleanly.
    genesys_sync_deadline_seconds: float = Field(100.0, alias="GENESYS_SYNC_DEADLINE_SECONDS", gt=0, le=900)

    def release_dimensions(self) -> dict[str, str]:
        """The dimensions naming the release that runs here, ``function`` and ``version``, which the
        crash metrics carry in a dimension set of their own so that a deploy's rollback alarms watch
        only the version being deployed (docs/architecture.md, "Metrics"); empty outside Lambda."""
        if not self.lambda_function_name or not self.lambda_function_version:
            return {}
        return {"function": self.lambda_function_name, "version": self.lambda_function_version}

    def need(self, field: str) -> str:
        """The value of an optional resource setting that this caller cannot run without."""
        value = getattr(self, field)
        if not value:
            alias = type(self).model_fields[field].alias or field.upper()
            raise ConfigurationError(f"setting {alias} is required here but not set")
        return str(value)


class _SettingsLoader:
    """``get_settings()``: the settings in force here.

    Inside ``settings_scope(settings)`` (the local stack runs several functions in one process, each
    with its own environment from the template) that object; otherwise the process environment, read
    once and cached (``get_settings.cache_clear()`` forgets it).
    """

    def __init__(self) -> None:
        self._scoped: ContextVar[Settings | None] = ContextVar("relay_settings", default=None)

    def __call__(self) -> Settings:
        scoped = self._scoped.get()
        return scoped if scoped is not None else _from_environment()

    def cache_clear(self) -> None:
        _from_environment.cache_clear()

    @contextmanager
    def scope(self, settings: Settings) -> Iterator[Settings]:
        token = self._scoped.set(settings)
        try:
            yield settings
        finally:
            self._scoped.reset(token)


@lru_cache(maxsize=1)
def _from_environment() -> Settings:
    """The one reader of the process environment."""
    return load_settings(os.environ)


def environment_variable(name: str) -> str | None:
    """A variable the operator names for one command (``relay decrypt --key-env NAME``, the local API
    for ``relay local put-event``): not a relay setting, but read here so that this module stays the one
    reader of the process environment."""
    return os.environ.get(name)


def load_settings(environment: Mapping[str, str]) -> Settings:
    """Settings from an environment (variable name -> value); ConfigurationError naming the bad fields."""
    try:
        return Settings.model_validate(dict(environment))
    except ValueError as exc:  # pydantic.ValidationError; never echo values (they may be secrets)
        fields = ", ".join(str(e["loc"][0]) for e in getattr(exc, "errors", lambda: [])())
        raise ConfigurationError(f"invalid settings: {fields or exc.__class__.__name__}") from None


def with_values(settings: Settings, values: Mapping[str, str]) -> Settings:
    """``settings`` with these fields (field name -> text, as its environment variable would hold it)
    read in their place and validated as the environment is (a list from comma-separated text);
    ConfigurationError naming the bad fields."""
    read = load_settings({Settings.model_fields[name].alias or name: text for name, text in values.items()})
    return settings.model_copy(update={name: getattr(read, name) for name in values})


get_settings = _SettingsLoader()
settings_scope = get_settings.scope

"""A downstream target's configuration as read from Genesys Cloud, validated before it becomes a Target.

The seed's schema (``id`` UUID, ``name``, ``enabled``, ``url``, ``method`` POST|PUT, ``headers``,
``security`` none|basic|bearer with its value) plus what delivery needs: the open-messaging
integration whose events it receives, the signing secret, the encryption key, the retry matrix and
timeouts; and security type oauth2 (its token endpoint and client; the value is the client secret) and
a client certificate for mTLS, with any security type. Secret values are SecretStr; ``safe_errors``
reports validation problems without them.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.models.client_certificate import parse_client_certificate
from relay.models.event_filters import EventFilters
from relay.models.numbers import ConfigFloat
from relay.models.rate_limit import RateLimit
from relay.models.targets import (
    ConfiguredRetryMatrix,
    OAuth2Client,
    OnExhausted,
    Ordering,
    RetryMatrix,
    SecurityType,
)

# Headers the relay sets itself, that describe the body it writes (a Content-Encoding: gzip on a plain
# body makes it unreadable to the receiver), or that the connection and framing depend on, compared
# lower-cased, and every ``webhook-*`` header (Standard Webhooks'): a config must not set them.
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "content-encoding",
        "content-range",
        "content-md5",
        "content-digest",
        "repr-digest",
        "digest",
        "user-agent",
        "x-delivery-id",
        "x-format-version",
        "x-integration-id",
        "connection",
        "content-length",
        "expect",
        "host",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Used with fullmatch: "$" alone also matches before a trailing "\n", which would let "token\n" through.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# What a header value may hold (RFC 9110 field-value: visible ASCII, space, tab, obs-text); anything
# else http.client cannot encode (beyond Latin-1) or would be a control character on the wire.
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
# A bearer token goes into Authorization as it is: visible ASCII, no space (RFC 6750's b64token and more).
_BEARER_TOKEN = re.compile(r"^[\x21-\x7e]+$")
# The seed's z.string().uuid(): 8-4-4-4-12 hex digits. UUID() also reads "{...}", "urn:uuid:..." and 32 bare
# digits, but the id is used as written (table keys, Secrets Manager names, which take no "{" or ":").
_UUID_FORM = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_header_value(value: str) -> bool:
    """Whether ``value`` can go on the wire as a header's value (visible ASCII, space, tab, obs-text)."""
    return bool(_HEADER_VALUE.fullmatch(value))


def is_reserved_header(name: str) -> bool:
    """Whether ``name`` is a header only the relay (or HTTP itself) sets."""
    lowered = name.lower()
    return lowered in RESERVED_HEADERS or lowered.startswith("webhook-")


def is_custom_header(name: str, value: str) -> bool:
    """Whether a config may set header ``name`` to ``value``: a valid name, not reserved, a value HTTP
    can carry (no line break, no control character, nothing beyond Latin-1)."""
    return (
        bool(_HEADER_NAME.fullmatch(name))
        and not is_reserved_header(name)
        and bool(_HEADER_VALUE.fullmatch(value))
    )


MIN_ENCRYPTION_KEY_CHARS = 16
MIN_SIGNING_SECRET_BYTES = 16
# The most a target's custom headers may take in all (names and values, as sent): common servers refuse
# a larger header section (Node.js's default limit is 16 KiB for all of it), and the target's record,
# which holds them, must fit in one TargetsTable item (400 KB): a larger one failed the whole sync run.
MAX_CUSTOM_HEADER_BYTES = 16 * 1024
# ... and how many there may be: common servers refuse a request of more than 100 header fields
# (Python's http.server, Apache's LimitRequestFields, Tomcat's maxHeaderCount; the relay's own answer
# reader too), and the relay sends about a dozen of its own. Past that every delivery is refused (431).
MAX_CUSTOM_HEADERS = 50


class WebhookSecurity(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    type: SecurityType = SecurityType.NONE
    # The bearer token, "user:password", or the OAuth client secret.
    value: SecretStr | None = None
    # Security type oauth2 only: the token endpoint and client (config property ``oauth2``).
    oauth2: OAuth2Client | None = None
    # mTLS, with any type: the client certificate, its chain and its key as one PEM bundle.
    client_certificate: SecretStr | None = Field(None, alias="clientCertificate")

    @field_validator("client_certificate")
    @classmethod
    def _usable_client_certificate(cls, bundle: SecretStr | None) -> SecretStr | None:
        if bundle is not None:
            parse_client_certificate(bundle.get_secret_value(), now=datetime.now(UTC))
        return bundle

    @model_validator(mode="after")
    def _value_matches_type(self) -> WebhookSecurity:
        if self.type is SecurityType.OAUTH2 and self.oauth2 is None:
            raise ValueError("security type oauth2 needs the oauth2 property (tokenUrl, clientId, ...)")
        if self.type is not SecurityType.OAUTH2 and self.oauth2 is not None:
            raise ValueError("the oauth2 property belongs to security type oauth2 only")
        if self.type is SecurityType.NONE:
            if self.value is not None:
                raise ValueError("security type none takes no value")
            return self
        if self.value is None or not self.value.get_secret_value():
            raise ValueError(f"security type {self.type.value} needs a value")
        if self.type is SecurityType.BASIC and ":" not in self.value.get_secret_value():
            raise ValueError("basic security value must be 'user:password'")
        if self.type is SecurityType.BEARER and not _BEARER_TOKEN.fullmatch(self.value.get_secret_value()):
            raise ValueError("bearer token must be visible ASCII characters without spaces")
        return self


class WebhookConfig(BaseModel):
    """One webhook integration from Genesys Cloud, after validation (the URL policy is checked apart)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    id: UUID
    name: str = Field(min_length=1, max_length=200)
    enabled: bool
    url: str = Field(min_length=1, max_length=2048)
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    security: WebhookSecurity = Field(default_factory=WebhookSecurity)
    # The Open Messaging integration whose events this target receives.
    integration_id: str = Field(alias="openMessagingIntegrationId", min_length=1)
    signing_secret: SecretStr | None = Field(None, alias="signingSecret")
    encryption_key: SecretStr | None = Field(None, alias="encryptionKey")
    retry_matrix: ConfiguredRetryMatrix = Field(default_factory=RetryMatrix, alias="retryMatrix")
    connect_timeout_seconds: ConfigFloat | None = Field(None, alias="connectTimeoutSeconds", gt=0, le=30)
    read_timeout_seconds: ConfigFloat | None = Field(None, alias="readTimeoutSeconds", gt=0, le=60)
    # Ordered delivery per conversation, and what an ordered conversation does with a delivery that
    # will not be retried (docs/config-sync.md).
    ordering: Ordering = Ordering.NONE
    on_exhausted: OnExhausted = Field(OnExhausted.DEAD_LETTER, alias="onExhausted")
    # Receiver controls (docs/config-sync.md): which events the target gets, and how fast.
    filters: EventFilters = Field(default_factory=EventFilters)
    rate_limit: RateLimit | None = Field(None, alias="rateLimit")
    # Genesys' configuration version, for the log only.
    config_version: int | None = Field(None, alias="configVersion")

    @model_validator(mode="before")
    @classmethod
    def _text_utf8_carries(cls, data: Any) -> Any:
        """JSON can spell an unpaired UTF-16 surrogate (``"\\ud800"``); no request, key derivation or
        header can carry one, so every delivery would fail before a byte was sent."""
        where = _unpaired_surrogate_at(data)
        if where is not None:
            raise ValueError(f"{where or 'config'} holds text UTF-8 cannot carry (an unpaired surrogate)")
        return data

    @field_validator("id", mode="before")
    @classmethod
    def _written_as_a_uuid(cls, ident: Any) -> Any:
        if isinstance(ident, str) and not _UUID_FORM.fullmatch(ident):
            raise ValueError("must be a UUID written as 8-4-4-4-12 hex digits, as Genesys writes its ids")
        return ident

    @model_validator(mode="after")
    def _blocking_needs_ordering(self) -> WebhookConfig:
        if self.on_exhausted is OnExhausted.BLOCK and self.ordering is not Ordering.CONVERSATION:
            raise ValueError("onExhausted block applies to ordered targets only (ordering: conversation)")
        return self

    @field_validator("name")
    @classmethod
    def _has_a_name(cls, name: str) -> str:
        # Operators find a target by its name (`relay targets list`, the dashboard): blanks name nothing.
        if not name.strip():
            raise ValueError("target name is blank")
        return name

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        reserved = [name for name in headers if _HEADER_NAME.fullmatch(name) and is_reserved_header(name)]
        if reserved:  # all of them at once: one fix, not one per run
            named = ", ".join(reserved)
            raise ValueError(
                f"header{'s' if len(reserved) > 1 else ''} {named} {'are' if len(reserved) > 1 else 'is'} "
                "the relay's to set (set by the relay, describing the body it writes, or needed by the "
                "connection) and cannot be configured"
            )
        seen: dict[str, str] = {}
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP token")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} has a line break in its value")
            if not _HEADER_VALUE.fullmatch(value):
                raise ValueError(
                    f"header {name} has a character HTTP cannot carry in its value (a control character, "
                    "or one beyond Latin-1)"
                )
            if name.lower() in seen:
                raise ValueError(
                    f"header {name} is also configured as {seen[name.lower()]}: both would be sent"
                )
            seen[name.lower()] = name
        if len(headers) > MAX_CUSTOM_HEADERS:
            raise ValueError(f"{len(headers)} headers configured; at most {MAX_CUSTOM_HEADERS}")
        size = sum(len(name) + len(value.encode("latin-1")) for name, value in headers.items())
        if size > MAX_CUSTOM_HEADER_BYTES:
            raise ValueError(
                f"headers take {size} bytes in all (names and values); at most {MAX_CUSTOM_HEADER_BYTES}"
            )
        return headers

    @field_validator("signing_secret")
    @classmethod
    def _standard_webhooks_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None:
            return None
        raw = secret.get_secret_value()
        if not raw.startswith("whsec_"):
            raise ValueError("signing secret must be 'whsec_' followed by base64")
        try:
            decoded = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("signing secret must be 'whsec_' followed by base64") from None
        if len(decoded) < MIN_SIGNING_SECRET_BYTES:
            raise ValueError(f"signing secret must hold at least {MIN_SIGNING_SECRET_BYTES} bytes")
        return secret

    @field_validator("encryption_key")
    @classmethod
    def _long_enough_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < MIN_ENCRYPTION_KEY_CHARS:
            raise ValueError(f"encryption key must have at least {MIN_ENCRYPTION_KEY_CHARS} characters")
        return key


def _unpaired_surrogate_at(data: Any) -> str | None:
    """The dotted path of the first text (a value or a name) in ``data`` that UTF-8 cannot encode."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, SecretStr):
            item = item.get_secret_value()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(item, dict):
            for name, value in item.items():
                child = f"{path}.{name}" if path else str(name)
                stack.extend(((path or "config", name), (child, value)))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}.{index}", value) for index, value in enumerate(item))
    return None


def safe_errors(
    exc: ValidationError, *, whole: str = "config", most: int | None = None, quoting: bool = True
) -> str:
    """A validation error as 'field: problem; ...' without the offending input (it may be a secret);
    ``whole`` names a problem of the whole document, and past ``most`` problems the rest are counted.
    A validator of ours may quote the value it refuses (``unknown message type 'Txt'``): with
    ``quoting=False`` such a message is not shown either (for a stored record: any field may hold a
    secret)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or whole
        message = error["msg"]
        if not quoting and error["type"] in ("value_error", "assertion_error"):
            message = "Value error, not shown (it may quote the value)"
        parts.append(f"{where}: {message}")
    if most is not None and len(parts) > most:
        parts[most:] = [f"and {len(parts) - most} more"]
    return "; ".join(parts)


def webhook_config_from_genesys(
    integration: dict[str, Any], config: dict[str, Any], secret_values: dict[str, str | None]
) -> WebhookConfig:
    """Build (and validate) a WebhookConfig from Genesys' integration, its current config and secrets.

    ``secret_values`` maps the credential keys (``security``, ``signingSecret``, ``encryptionKey``,
    ``clientCertificate``) to the values read from Genesys, or None when Genesys redacted them.
    """
    properties = config.get("properties") or {}
    if not isinstance(properties, dict):
        properties = {}
    security_type = properties.get("securityType", SecurityType.NONE.value)
    doc: dict[str, Any] = {
        "id": integration.get("id"),
        "name": integration.get("name") or config.get("name"),
        "enabled": integration.get("intendedState") == "ENABLED",
        "url": properties.get("url"),
        "method": properties.get("method", "POST"),
        "headers": properties.get("headers") or {},
        "security": {
            "type": security_type,
            "value": secret_values.get("security"),
            "oauth2": properties.get("oauth2"),
            "clientCertificate": secret_values.get("clientCertificate"),
        },
        "openMessagingIntegrationId": properties.get("openMessagingIntegrationId"),
        "signingSecret": secret_values.get("signingSecret"),
        "encryptionKey": secret_values.get("encryptionKey"),
        "configVersion": config.get("version"),
    }
    for optional in (
        "retryMatrix",
        "connectTimeoutSeconds",
        "readTimeoutSeconds",
        "filters",
        "rateLimit",
        "ordering",
        "onExhausted",
    ):
        if properties.get(optional) is not None:
            doc[optional] = properties[optional]
    return WebhookConfig.model_validate(doc)

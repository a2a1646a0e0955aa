"""Integrations and delivery targets as the relay stores them (DynamoDB) and uses them.

Secret *values* never live here: a target names the Secrets Manager secret that holds each value
(``*_secret_name``), see relay.models.secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Literal
from urllib.parse import unquote

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from relay.errors import UnreadableRecord
from relay.models.event_filters import EventFilters
from relay.models.numbers import ConfigFloat, ConfigInt
from relay.models.rate_limit import RateLimit

# A configured header's or URL query's value at least this long may be a credential (an API key, a
# token): scrubbed from the audit's answers, masked where the URL is shown. Shorter ones ("json",
# "v=2") are plain configuration, and redacting them would mangle ordinary text.
CREDENTIAL_LIKE_LENGTH = 8


def query_parts(query: str) -> list[tuple[str, str, str]]:
    """A URL query (or fragment) split as written: ``(name, "=", value)`` per ``&``-separated part. A
    part without ``=`` is all value, ``("", "", part)``: ``?<token>`` carries a credential as surely as
    ``?token=<token>`` does (``parse_qsl`` drops such a part)."""
    parts = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        parts.append((name, eq, value) if eq else ("", "", part))
    return parts


CREDENTIAL_MASK = "****"


def masked_url(url: str) -> str:
    """A target's URL for display: a password before its host (``user:<password>@``) and a query
    value long enough to be a token (``api_key=...``, or a bare ``?<token>``) masked, names and short
    values ("v=2") kept; the fragment likewise."""
    base, hash_mark, fragment = url.partition("#")
    base, mark, query = base.partition("?")
    scheme, slashes, rest = base.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if slashes and at and ":" in userinfo:
        base = f"{scheme}{slashes}{userinfo.partition(':')[0]}:****@{host}{slash}{path}"
    return f"{base}{mark}{_masked_query(query)}{hash_mark}{_masked_query(fragment)}"


def _masked_query(query: str) -> str:
    return "&".join(
        f"{name}{eq}{CREDENTIAL_MASK}"
        if len(unquote(value)) >= CREDENTIAL_LIKE_LENGTH
        else f"{name}{eq}{value}"
        for name, eq, value in query_parts(query)
    )


class CamelModel(BaseModel):
    """camelCase on the wire and in DynamoDB, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


MAX_INTERVAL_MS = 43_200_000


class RetryMatrix(CamelModel):
    """The seed's retry matrix; the defaults are the seed's. Configs set one as ``ConfiguredRetryMatrix``."""

    attempts: ConfigInt = Field(3, ge=1, le=50)
    # At most 12 h, the longest SQS keeps a message hidden (no retry can wait longer); the bound also
    # keeps every envelope's retryMatrix to numbers a receiver's JSON parser reads as written.
    base_interval_ms: ConfigInt = Field(1_000, ge=0, le=MAX_INTERVAL_MS)
    max_interval_ms: ConfigInt = Field(30_000, ge=0, le=MAX_INTERVAL_MS)
    multiplier: ConfigFloat = Field(2.0, ge=1.0)


# Past this a multiplier is a typo, not a curve: x100 goes from 1 s to the 12 h SQS allows in three retries.
MAX_RETRY_MULTIPLIER = 100


def sensible_retry_matrix[M: RetryMatrix](matrix: M) -> M:
    if matrix.multiplier > MAX_RETRY_MULTIPLIER:
        # As given (the shortest repr): "got 100" would not say what is wrong with 100.0001.
        raise ValueError(f"multiplier must be at most {MAX_RETRY_MULTIPLIER} (got {matrix.multiplier!r})")
    if matrix.base_interval_ms > matrix.max_interval_ms:
        # Most likely the two swapped: every retry would wait maxIntervalMs, not what was meant.
        raise ValueError(
            f"baseIntervalMs ({matrix.base_interval_ms}) must not be larger than "
            f"maxIntervalMs ({matrix.max_interval_ms})"
        )
    return matrix


# A retry matrix as a config may set it (Genesys, the fixtures file). Stored records and envelopes keep
# RetryMatrix's looser bounds: a record a former version accepted must still load (the last good config
# stays in force), and the dispatcher's backoff copes with any matrix RetryMatrix accepts.
ConfiguredRetryMatrix = Annotated[RetryMatrix, AfterValidator(sensible_retry_matrix)]


class SecurityType(StrEnum):
    NONE = "none"
    BASIC = "basic"
    BEARER = "bearer"
    OAUTH2 = "oauth2"  # client credentials: a bearer token from the target's token endpoint


class Ordering(StrEnum):
    """Whether a target's deliveries keep the order of a conversation (docs/dispatcher.md, "Ordering")."""

    NONE = "none"  # concurrent, each delivery retried on its own
    CONVERSATION = "conversation"  # one at a time per conversation, in the order the intake accepted them


class OnExhausted(StrEnum):
    """What an ordered target does with a delivery that will not be retried (exhausted, permanent)."""

    DEAD_LETTER = "dead-letter"  # to the ordered dead-letter queue; the conversation moves on
    BLOCK = "block"  # the conversation waits behind it, tried again every hold period, and an alarm fires


class TokenEndpointAuthMethod(StrEnum):
    """How the relay authenticates to a token endpoint (the OAuth registry's names, RFC 7591)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # HTTP Basic with the form-encoded id and secret
    CLIENT_SECRET_POST = "client_secret_post"  # client_id and client_secret in the form


# No control characters: these values go into a form body and, for the client id, a Basic header.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class OAuth2Client(CamelModel):
    """The OAuth 2.0 client-credentials grant (RFC 6749 §4.4) of a target whose security type is oauth2.
    Not secret; the client secret is the target's auth secret (``TargetSecurity.secret_name``)."""

    # Checked by the URL policy, like the target's own URL, and stored as the policy normalised it.
    token_url: str = Field(min_length=1, max_length=2048)
    client_id: str = Field(min_length=1, max_length=256, pattern=_PRINTABLE)
    scope: str | None = Field(None, min_length=1, max_length=1024, pattern=_PRINTABLE)
    audience: str | None = Field(None, min_length=1, max_length=1024, pattern=_PRINTABLE)
    token_endpoint_auth_method: TokenEndpointAuthMethod = TokenEndpointAuthMethod.CLIENT_SECRET_BASIC


class TargetSecurity(CamelModel):
    type: SecurityType = SecurityType.NONE
    # Secrets Manager name holding the bearer token, "user:password", or the OAuth client secret;
    # None when type is none.
    secret_name: str | None = None
    # The token endpoint and client of security type oauth2; None for the other types.
    oauth2: OAuth2Client | None = None
    # mTLS, whatever the type: the Secrets Manager name of the client certificate and key the relay
    # presents in the TLS handshake (relay.models.client_certificate); None: no client certificate.
    client_certificate_name: str | None = None


class Integration(CamelModel):
    """A Genesys Cloud Open Messaging integration whose webhook events the intake accepts."""

    integration_id: str
    name: str
    enabled: bool = True
    # Secrets Manager name holding the X-Hub-Signature-256 secret (current + previous for rotation).
    # None for the EventBridge path's own integration: it takes no webhooks, so it has no such secret.
    signature_secret_name: str | None = None
    version: int = 1
    synced_at: str | None = None


class Target(CamelModel):
    """A downstream endpoint that receives the events of one integration."""

    integration_id: str
    target_id: str
    name: str
    enabled: bool = True
    url: str
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    security: TargetSecurity = Field(default_factory=TargetSecurity)
    # Standard Webhooks signing secret ("whsec_..."), current + previous while it rotates.
    signing_secret_name: str | None = None
    # AES-256-GCM envelope encryption key; None means envelopes go out in clear.
    encryption_key_name: str | None = None
    retry_matrix: RetryMatrix = Field(default_factory=RetryMatrix)
    connect_timeout_seconds: ConfigFloat | None = Field(None, gt=0)
    read_timeout_seconds: ConfigFloat | None = Field(None, gt=0)
    ordering: Ordering = Ordering.NONE
    on_exhausted: OnExhausted = OnExhausted.DEAD_LETTER
    # Receiver controls: which events it gets (checked at the intake) and how fast (the dispatcher).
    filters: EventFilters = Field(default_factory=EventFilters)
    rate_limit: RateLimit | None = None
    version: int = 1
    synced_at: str | None = None


@dataclass(frozen=True)
class UnreadableTarget:
    """A target record this release cannot validate (a newer release's, a hand edit): what its raw item
    still tells. ``reason`` names the fields at fault and what is wrong with them, never a value (a
    record may hold a secret); ``version`` is the item's own attribute (None if that is unreadable too),
    so that config sync can overwrite the record with a conditional write."""

    integration_id: str
    target_id: str
    reason: str
    version: int | None

    @property
    def why(self) -> str:
        """What the audit, the DLQ and the operator are told."""
        return f"target record unreadable: {self.reason}"

    def error(self) -> UnreadableRecord:
        return UnreadableRecord(f"target {self.target_id} of integration {self.integration_id}", self.why)


@dataclass(frozen=True)
class IntegrationEntry:
    """An integration with its targets, as one TargetsTable Query returns them. A target whose record
    cannot be validated is in ``unreadable`` (by target id), not in ``targets``: one bad record never
    hides its neighbours."""

    integration: Integration
    targets: tuple[Target, ...]
    unreadable: Mapping[str, UnreadableTarget] = field(default_factory=dict)

    def target(self, target_id: str) -> Target | None:
        return next((t for t in self.targets if t.target_id == target_id), None)

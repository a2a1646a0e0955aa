"""The fixtures file: the integrations and targets the local stack's fake Genesys Cloud serves.

A target whose URL is ``http://127.0.0.1:0/...`` (port 0) gets a demo receiver started by the local
stack on a free port, and its URL rewritten to that port; any other URL is used as it is (your own
receiver), but port 0 anywhere else, an OAuth ``tokenUrl`` included, is refused: nothing listens there.
Only the local stack allows http://127.0.0.1 targets. ``eventBridgeIntegrationId`` (optional)
names the integration whose targets Genesys EventBridge events go to; by default the first one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from relay.json_input import load_json
from relay.logic.url_policy import unreadable_reason
from relay.models.client_certificate import parse_client_certificate
from relay.models.event_filters import EventFilters
from relay.models.genesys import INTEGRATION_ID
from relay.models.numbers import ConfigFloat
from relay.models.rate_limit import RateLimit
from relay.models.targets import (
    OAuth2Client,
    OnExhausted,
    Ordering,
    RetryMatrix,
    SecurityType,
    sensible_retry_matrix,
)

DEFAULT_FIXTURES = Path(__file__).resolve().parents[4] / "events" / "fixtures" / "local.json"


class _FixtureModel(BaseModel):
    # Unknown keys are kept, not refused (a file may carry notes of its own), and named by
    # ``Fixtures.unknown_keys`` so that a misspelt field does not pass for its default unnoticed.
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    def _unknown_keys(self, place: str) -> list[str]:
        return _unknown_keys(self, place)


def _unknown_keys(model: BaseModel | None, place: str) -> list[str]:
    """``place.key`` for each key ``model`` does not know, with the field it may have meant."""
    if model is None:
        return []
    known = [field.alias or name for name, field in type(model).model_fields.items()]
    notes = []
    for key in model.model_extra or {}:
        near = difflib.get_close_matches(key, known, n=1)
        notes.append(f"{place}{key}" + (f" (did you mean {near[0]}?)" if near else ""))
    return notes


# The relay's own models, keeping unknown keys here only, so that a misspelt one is named too.
class _FixtureRetryMatrix(RetryMatrix):
    model_config = ConfigDict(extra="allow")


FixtureRetryMatrix = Annotated[_FixtureRetryMatrix, AfterValidator(sensible_retry_matrix)]


class FixtureOAuth2Client(OAuth2Client):
    model_config = ConfigDict(extra="allow")

    @field_validator("token_url")
    @classmethod
    def _token_endpoint_can_listen(cls, url: str) -> str:
        # The stack starts no demo token endpoint: with port 0 serve would start, then every delivery
        # would fail to get a token and be dead-lettered.
        if _port(url) == 0:
            raise ValueError(
                "port 0: nothing listens there (the local stack starts no token endpoint); "
                "give the port your token endpoint listens on"
            )
        return url


def _not_redacted(secret: str | None) -> str | None:
    # The fake serves the value as Genesys would; config sync takes all '*' for a redacted one and, with
    # nothing in Secrets Manager yet, refuses the target only once the whole stack has started.
    if secret and set(secret) == {"*"}:
        raise ValueError("all '*' is how Genesys redacts a secret: config sync would take it for none")
    return secret


UNREDACTED = AfterValidator(_not_redacted)  # a secret the fixtures give must not read as redacted


class FixtureSecurity(_FixtureModel):
    type: SecurityType = SecurityType.NONE
    value: Annotated[str | None, UNREDACTED] = None  # for oauth2: the client secret
    oauth2: FixtureOAuth2Client | None = (
        None  # {tokenUrl, clientId, scope?, audience?, tokenEndpointAuthMethod?}
    )


class FixtureTarget(_FixtureModel):
    id: str
    name: str
    url: str
    method: Literal["POST", "PUT"] = "POST"
    enabled: bool = True
    headers: dict[str, str] = Field(default_factory=dict)
    security: FixtureSecurity = Field(default_factory=FixtureSecurity)
    signing_secret: str | None = Field(None, alias="signingSecret")
    encryption_key: Annotated[str | None, UNREDACTED] = Field(None, alias="encryptionKey")
    # mTLS: the client certificate, its chain and its key, one PEM bundle.
    client_certificate: str | None = Field(None, alias="clientCertificate")
    retry_matrix: FixtureRetryMatrix | None = Field(None, alias="retryMatrix")
    ordering: Ordering | None = None  # none (default) or conversation
    on_exhausted: OnExhausted | None = Field(None, alias="onExhausted")
    filters: EventFilters | None = None
    rate_limit: RateLimit | None = Field(None, alias="rateLimit")
    connect_timeout_seconds: ConfigFloat | None = Field(None, alias="connectTimeoutSeconds")
    read_timeout_seconds: ConfigFloat | None = Field(None, alias="readTimeoutSeconds")

    @field_validator("url")
    @classmethod
    def _port_is_usable(cls, url: str) -> str:
        # The stack reads the port (0 asks for a demo receiver) before config sync checks the rest.
        if _port(url) == 0 and not wants_demo_receiver(url):  # nothing ever listens on port 0
            raise ValueError(
                "port 0 asks for a demo receiver, which only http://127.0.0.1:0/<path> gets; "
                "give the port your receiver listens on"
            )
        return url

    @field_validator("client_certificate")
    @classmethod
    def _usable_client_certificate(cls, bundle: str | None) -> str | None:
        # Config sync makes the same check, but its error names its own field
        # (security.clientCertificate), not this file's; the reason never quotes the bundle.
        if bundle is not None:
            parse_client_certificate(bundle, now=datetime.now(UTC))
        return bundle

    @model_validator(mode="after")
    def _certificate_needs_tls(self) -> FixtureTarget:
        # Presented in the TLS handshake: on http:// there is none, and nothing would ever be presented.
        if self.client_certificate is not None and urlsplit(self.url).scheme.lower() != "https":
            raise ValueError("clientCertificate needs an https:// url: it is presented in the TLS handshake")
        return self


class FixtureIntegration(_FixtureModel):
    id: str
    name: str
    signature_secret: Annotated[str, UNREDACTED] = Field(alias="signatureSecret", min_length=16)
    targets: list[FixtureTarget] = Field(default_factory=list)

    # Config sync's own checks of an integration (logic.config_sync.reading.open_integration), made when
    # the file is read: found by its run, each cost a whole start.
    @field_validator("name")
    @classmethod
    def _has_a_name(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("integration has no name (config sync refuses it)")
        return name

    @field_validator("id")
    @classmethod
    def _id_can_be_posted_to(cls, ident: str) -> str:
        # Config sync takes any id, but the intake answers 404 to a webhook URL naming one outside its
        # pattern: serve would start and list a URL that can never take an event.
        if not INTEGRATION_ID.fullmatch(ident):
            raise ValueError(
                "not an integration id a webhook URL can name: a letter or digit, then at most 127 "
                "letters, digits, '.', '_', ':' or '-' (Genesys' ids are UUIDs)"
            )
        return ident


class Fixtures(_FixtureModel):
    # At least one: with none, serve would start a stack that answers every webhook 404 and fails every
    # EventBridge event (no integration for them), with nothing in the file to say why.
    integrations: list[FixtureIntegration] = Field(min_length=1)
    # Which integration's targets Genesys EventBridge events fan out to (EVENTBRIDGE_INTEGRATION_ID);
    # the first integration when absent.
    eventbridge_integration_id: str | None = Field(None, alias="eventBridgeIntegrationId")

    @model_validator(mode="after")
    def _eventbridge_integration_is_listed(self) -> Fixtures:
        ids = [integration.id for integration in self.integrations]
        if self.eventbridge_integration_id is not None and self.eventbridge_integration_id not in ids:
            raise ValueError(
                f"eventBridgeIntegrationId {self.eventbridge_integration_id} is not an integration"
            )
        return self

    @model_validator(mode="after")
    def _ids_are_unique(self) -> Fixtures:
        # The fake Genesys API serves one integration per id: a repeated id would silently replace the
        # earlier one, and leave events for it undeliverable.
        _refuse_repeats("integration", ((i.id, f"integrations.{n}") for n, i in enumerate(self.integrations)))
        _refuse_repeats(
            "target",
            (
                (target.id, f"integrations.{n}.targets.{m}")
                for n, integration in enumerate(self.integrations)
                for m, target in enumerate(integration.targets)
            ),
        )
        return self

    @property
    def eventbridge_integration(self) -> str | None:
        """The integration EventBridge events are delivered for in the local stack."""
        return self.eventbridge_integration_id or (self.integrations[0].id if self.integrations else None)

    def unknown_keys(self) -> list[str]:
        """Keys no fixtures field has, by place: e.g. ``integrations.0.targets.1.retryMatrx (did you
        mean retryMatrix?)``. They are ignored; the local stack logs a warning naming each."""
        notes = self._unknown_keys("")
        for n, integration in enumerate(self.integrations):
            notes += integration._unknown_keys(f"integrations.{n}.")
            for m, target in enumerate(integration.targets):
                notes += target._unknown_keys(f"integrations.{n}.targets.{m}.")
                place = f"integrations.{n}.targets.{m}."
                notes += target.security._unknown_keys(f"{place}security.")
                notes += _unknown_keys(target.security.oauth2, f"{place}security.oauth2.")
                notes += _unknown_keys(target.retry_matrix, f"{place}retryMatrix.")
        return notes

    @classmethod
    def load(cls, path: str | Path | None = None) -> Fixtures:
        """The file read as UTF-8 (JSON's encoding), whatever the locale: read in the locale's, a valid
        file was refused as not ASCII, or its secrets misread as other characters (Latin-1). A leading
        byte order mark (Windows editors write one; RFC 8259 lets a parser ignore it) is no content."""
        raw = Path(path or DEFAULT_FIXTURES).read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text (byte {exc.start} is not UTF-8)") from None
        return cls.model_validate(load_json(text, object_pairs_hook=_no_repeated_keys))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of the fixtures file; a key written twice is refused. JSON keeps the last silently: a
    second "integrations" would drop the first set, a second "url" would change a target unseen."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def _refuse_repeats(kind: str, ids_and_places: Iterable[tuple[str, str]]) -> None:
    first_place: dict[str, str] = {}
    for ident, place in ids_and_places:
        if ident in first_place:
            raise ValueError(f"{kind} id {ident} is used twice, at {first_place[ident]} and {place}")
        first_place[ident] = place


def _port(url: str) -> int | None:
    """The URL's port, None when it names none; a ValueError for one that is not a usable number, or a
    URL that does not split (a bracket that does not close, brackets around no IP address)."""
    try:
        parts = urlsplit(url)
    except ValueError as unreadable:
        # "Invalid IPv6 URL", "'zz' does not appear to be an IPv4 or IPv6 address"
        raise ValueError(f"not a URL that can be read: {unreadable_reason(unreadable)}") from None
    try:
        return parts.port  # raises for 65536, -1 or a word
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None


def wants_demo_receiver(url: str) -> bool:
    """``http://127.0.0.1:0/...``: the fixtures ask the stack for a receiver on a free port."""
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname == "127.0.0.1" and parts.port == 0

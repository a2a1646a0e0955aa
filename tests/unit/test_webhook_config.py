"""WebhookConfig: the seed's schema plus what delivery needs, validated without leaking secret values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from support.secure_peers import Pki, key_body

from relay.models.targets import OnExhausted, Ordering, SecurityType, TokenEndpointAuthMethod
from relay.models.webhook_config import (
    MAX_CUSTOM_HEADERS,
    WebhookConfig,
    safe_errors,
    webhook_config_from_genesys,
)

TARGET_ID = "3f1d2c4b-5a69-4e7f-8a1b-2c3d4e5f6a70"
OPEN_ID = "6685901b-6d0e-43db-95ff-d64406e9dce2"
BEARER = "a-bearer-token-that-must-not-leak"
SIGNING = "whsec_bG9jYWwtZGVtby1zaWduaW5nLXNlY3JldC0wMDE="
KEY = "an-encryption-key-that-must-not-leak"


def _integration(**changes: Any) -> dict[str, Any]:
    return {"id": TARGET_ID, "name": "crm", "intendedState": "ENABLED", **changes}


def _config(**properties: Any) -> dict[str, Any]:
    base = {
        "openMessagingIntegrationId": OPEN_ID,
        "url": "https://hooks.example.com/crm",
        "method": "POST",
        "headers": {"X-Team": "crm"},
        "securityType": "bearer",
    }
    return {"id": TARGET_ID, "version": 4, "properties": {**base, **properties}}


def _secrets(**changes: str | None) -> dict[str, str | None]:
    return {"security": BEARER, "signingSecret": SIGNING, "encryptionKey": KEY, **changes}


def test_a_good_config_maps_every_field() -> None:
    config = webhook_config_from_genesys(
        _integration(),
        _config(retryMatrix={"attempts": 5}, readTimeoutSeconds=4),
        _secrets(),
    )

    assert str(config.id) == TARGET_ID and config.name == "crm" and config.enabled
    assert (config.url, config.method, config.headers) == (
        "https://hooks.example.com/crm",
        "POST",
        {"X-Team": "crm"},
    )
    assert config.security.type is SecurityType.BEARER
    assert config.security.value is not None and config.security.value.get_secret_value() == BEARER
    assert config.integration_id == OPEN_ID
    assert config.retry_matrix.attempts == 5 and config.retry_matrix.base_interval_ms == 1_000
    assert config.read_timeout_seconds == 4 and config.config_version == 4


def test_disabled_when_intended_state_is_not_enabled() -> None:
    config = webhook_config_from_genesys(_integration(intendedState="DISABLED"), _config(), _secrets())
    assert config.enabled is False


def test_secret_values_stay_hidden_in_repr() -> None:
    config = webhook_config_from_genesys(_integration(), _config(), _secrets())
    text = f"{config!r} {config}"
    for value in (BEARER, SIGNING, KEY):
        assert value not in text


@pytest.mark.parametrize(
    ("integration", "properties", "secrets", "field"),
    [
        ({"id": "not-a-uuid"}, {}, {}, "id"),
        # Forms UUID() reads but the seed's schema refuses; the id is used as written (Secrets Manager names)
        ({"id": "{" + TARGET_ID + "}"}, {}, {}, "id"),
        ({"id": "urn:uuid:" + TARGET_ID}, {}, {}, "id"),
        ({"id": TARGET_ID.replace("-", "")}, {}, {}, "id"),
        ({"id": TARGET_ID + "\n"}, {}, {}, "id"),
        ({"name": ""}, {}, {}, "name"),
        ({"name": " \t "}, {}, {}, "name"),
        ({}, {"method": "GET"}, {}, "method"),
        ({}, {"url": None}, {}, "url"),
        ({}, {"openMessagingIntegrationId": None}, {}, "openMessagingIntegrationId"),
        ({}, {"headers": {"Content-Type": "text/plain"}}, {}, "headers"),
        ({}, {"headers": {"X-Evil": "a\r\nInjected: yes"}}, {}, "headers"),
        ({}, {"headers": {"bad header": "x"}}, {}, "headers"),
        ({}, {"headers": {"X-Team\n": "crm"}}, {}, "headers"),
        ({}, {"headers": {"Authorization\n": "Basic Zm9vOmJhcg=="}}, {}, "headers"),
        # Headers the relay sets, or the connection depends on, whatever their case
        ({}, {"headers": {"User-Agent": "mine"}}, {}, "headers"),
        ({}, {"headers": {"x-delivery-id": "1"}}, {}, "headers"),
        ({}, {"headers": {"X-Format-Version": "9"}}, {}, "headers"),
        ({}, {"headers": {"x-integration-id": "another"}}, {}, "headers"),
        # Headers that describe the body the relay writes: a receiver would read it wrong
        ({}, {"headers": {"Content-Encoding": "gzip"}}, {}, "headers"),
        ({}, {"headers": {"content-digest": "sha-256=:x:"}}, {}, "headers"),
        ({}, {"headers": {"Expect": "100-continue"}}, {}, "headers"),
        ({}, {"headers": {"Webhook-Anything": "x"}}, {}, "headers"),
        # Values HTTP cannot carry: beyond Latin-1, or control characters (HTAB is allowed)
        ({}, {"headers": {"X-Emoji": "\U0001f600"}}, {}, "headers"),
        ({}, {"headers": {"X-Nul": "a\x00b"}}, {}, "headers"),
        ({}, {"headers": {"X-Ctl": "a\x01b"}}, {}, "headers"),
        ({}, {"headers": {"X-Del": "a\x7fb"}}, {}, "headers"),
        # The same header twice, in two cases: both would be sent
        ({}, {"headers": {"X-Team": "a", "x-team": "b"}}, {}, "headers"),
        # More headers than common servers take with the relay's own (more than 100 fields: 431)
        ({}, {"headers": {f"X-H{n}": "v" for n in range(MAX_CUSTOM_HEADERS + 1)}}, {}, "headers"),
        ({}, {"securityType": "bearer"}, {"security": None}, "security"),
        ({}, {"securityType": "basic"}, {"security": "no-colon-here"}, "security"),
        # A bearer token goes into the Authorization header as it is: visible ASCII only
        ({}, {"securityType": "bearer"}, {"security": "tok\U0001f600"}, "security"),
        ({}, {"securityType": "bearer"}, {"security": "tok\r\nX-Evil: 1"}, "security"),
        ({}, {"securityType": "bearer"}, {"security": "two words"}, "security"),
        # A trailing line break (a pasted token) passes a "^...$" pattern: every delivery would fail
        ({}, {"securityType": "bearer"}, {"security": "tok-abc\n"}, "security"),
        ({}, {"securityType": "none"}, {"security": BEARER}, "security"),
        ({}, {"securityType": "digest"}, {}, "security.type"),
        ({}, {}, {"signingSecret": "not-whsec-prefixed"}, "signingSecret"),
        ({}, {}, {"signingSecret": "whsec_c2hvcnQ="}, "signingSecret"),
        ({}, {}, {"encryptionKey": "short"}, "encryptionKey"),
        ({}, {"retryMatrix": {"attempts": 0}}, {}, "retryMatrix.attempts"),
        ({}, {"connectTimeoutSeconds": 0}, {}, "connectTimeoutSeconds"),
        ({}, {"filters": {"types": ["Txt"]}}, {}, "filters.types"),
        ({}, {"filters": {"originatingEntities": ["Robot"]}}, {}, "filters.originatingEntities"),
        ({}, {"filters": {"eventTypes": []}}, {}, "filters.eventTypes"),
        ({}, {"filters": {"detailTypes": [""]}}, {}, "filters.detailTypes"),
        ({}, {"filters": {"direction": ["Outbound"]}}, {}, "filters.direction"),
        ({}, {"rateLimit": {"perSecond": -1}}, {}, "rateLimit.perSecond"),
        ({}, {"rateLimit": {"burst": 5}}, {}, "rateLimit.perSecond"),
        ({}, {"rateLimit": {"perSecond": 5, "burst": 0}}, {}, "rateLimit.burst"),
    ],
)
def test_invalid_configs_are_refused_naming_the_field_not_the_value(
    integration: dict[str, Any], properties: dict[str, Any], secrets: dict[str, str | None], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(**integration), _config(**properties), _secrets(**secrets))

    message = safe_errors(caught.value)
    assert message.startswith(field) or f"; {field}" in message
    for value in (
        BEARER,
        SIGNING,
        KEY,
        "no-colon-here",
        "not-whsec-prefixed",
        "short",
        "tok\U0001f600",
        "two words",
    ):
        assert value not in message


@pytest.mark.parametrize("ident", [TARGET_ID.upper(), "00000000-0000-0000-0000-000000000000"])
def test_an_id_the_seeds_uuid_rule_takes_is_taken_as_written(ident: str) -> None:
    config = webhook_config_from_genesys(_integration(id=ident), _config(), _secrets())
    assert str(config.id) == ident.lower()


def test_every_reserved_header_of_a_config_is_named_in_one_refusal() -> None:
    headers = {"Digest": "x", "X-Team": "crm", "Host": "h", "Content-MD5": "m"}
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(), _config(headers=headers), _secrets())
    assert "headers Digest, Host, Content-MD5 are the relay's to set" in safe_errors(caught.value)


@pytest.mark.parametrize(
    ("properties", "secrets", "where"),
    [
        ({}, {"encryptionKey": "an-encryption-key-\ud800-that-must-not-leak"}, "encryptionKey"),
        ({"securityType": "basic"}, {"security": "user:pass-\udc00-word"}, "security.value"),
        ({}, {"signingSecret": "whsec_\udbff"}, "signingSecret"),
        ({"headers": {"X-Team": "crm-\ud83d"}}, {}, "headers.X-Team"),
        ({"filters": {"eventTypes": ["x\udfff"]}}, {}, "filters.eventTypes.0"),
    ],
)
def test_text_utf8_cannot_carry_is_refused_naming_where_it_is(
    properties: dict[str, Any], secrets: dict[str, str | None], where: str
) -> None:
    # Given a config (or a credential) holding an unpaired UTF-16 surrogate, which JSON can spell
    # ("\ud800") but no request can carry: every delivery would fail before a byte was sent
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(), _config(**properties), _secrets(**secrets))

    # Then the config is refused, naming where the text is and never the text
    message = safe_errors(caught.value)
    assert f"{where} holds text UTF-8 cannot carry (an unpaired surrogate)" in message
    assert "must-not-leak" not in message and "pass-" not in message and "crm-" not in message


@pytest.mark.parametrize(
    ("matrix", "reason"),
    [
        (
            {"attempts": 4, "baseIntervalMs": 100, "maxIntervalMs": 200, "multiplier": 1e200},
            "multiplier must be at most 100 (got 1e+200)",
        ),
        ({"multiplier": float("inf")}, "multiplier must be at most 100 (got inf)"),
        ({"multiplier": 100.0001}, "multiplier must be at most 100 (got 100.0001)"),
        (
            {"baseIntervalMs": 5000, "maxIntervalMs": 200},
            "baseIntervalMs (5000) must not be larger than maxIntervalMs (200)",
        ),
        # Against the default cap, 30 s
        ({"baseIntervalMs": 60_000}, "baseIntervalMs (60000) must not be larger than maxIntervalMs (30000)"),
    ],
)
def test_an_absurd_multiplier_or_a_base_above_the_cap_is_refused_with_the_field(
    matrix: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(), _config(retryMatrix=matrix), _secrets())

    assert safe_errors(caught.value) == f"retryMatrix: Value error, {reason}"


def test_the_largest_multiplier_and_a_base_equal_to_the_cap_are_accepted() -> None:
    matrix = {"baseIntervalMs": 5000, "maxIntervalMs": 5000, "multiplier": 100}
    config = webhook_config_from_genesys(_integration(), _config(retryMatrix=matrix), _secrets())
    assert (config.retry_matrix.base_interval_ms, config.retry_matrix.multiplier) == (5000, 100)


def test_model_accepts_the_seed_field_names() -> None:
    config = WebhookConfig.model_validate(
        {
            "id": TARGET_ID,
            "name": "crm",
            "enabled": True,
            "url": "https://hooks.example.com/crm",
            "method": "PUT",
            "security": {"type": "none"},
            "openMessagingIntegrationId": OPEN_ID,
        }
    )
    assert config.method == "PUT" and config.security.value is None and config.headers == {}


def test_filters_and_rate_limit_map_in_genesys_spelling() -> None:
    config = webhook_config_from_genesys(
        _integration(),
        _config(
            filters={
                "types": ["TEXT", "event", "Text"],
                "eventTypes": ["typing"],
                "directions": ["Outbound"],
                "originatingEntities": ["bot"],
                "detailTypes": ["v2.detail.events.conversation.*"],
            },
            rateLimit={"perSecond": 0.5},
        ),
        _secrets(),
    )

    assert config.filters.describe() == (
        "types=Text,Event eventTypes=Typing directions=Outbound originatingEntities=Bot "
        "detailTypes=v2.detail.events.conversation.*"
    )
    limit = config.rate_limit
    assert limit is not None and (limit.per_second, limit.capacity) == (0.5, 1)


@pytest.mark.parametrize(
    "change",
    [
        {"rateLimit": {"perSecond": True}},
        {"rateLimit": {"perSecond": 5, "burst": True}},
        {"retryMatrix": {"attempts": True}},
        {"readTimeoutSeconds": True},
    ],
    ids=["perSecond", "burst", "attempts", "readTimeoutSeconds"],
)
def test_true_or_false_where_a_number_belongs_is_refused_not_read_as_1(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="must be a number, not true or false"):
        webhook_config_from_genesys(_integration(), _config(**change), _secrets())


def test_without_filters_or_limit_every_event_goes_at_any_rate() -> None:
    config = webhook_config_from_genesys(_integration(), _config(), _secrets())

    assert not config.filters.filters_anything and config.filters.describe() == "all"
    assert config.rate_limit is None


@pytest.mark.parametrize(
    "values",
    [["Text"] * 51, [f"v2.detail.events.{n}.*" for n in range(50)] + ["v2.detail.events.0.*"]],
    ids=["types", "detailTypes"],
)
def test_repeated_filter_values_count_once_towards_the_limit(values: list[str]) -> None:
    # Given a filter listing at most 50 different values, one of them twice (51 in all)
    name = "detailTypes" if values[0].startswith("v2") else "types"
    config = webhook_config_from_genesys(_integration(), _config(filters={name: values}), _secrets())

    # Then it is accepted, each value kept once
    kept = config.filters.detail_types if name == "detailTypes" else config.filters.types
    assert kept is not None and len(kept) == len(set(values))


def test_more_than_fifty_different_detail_type_globs_are_refused_saying_how_many() -> None:
    globs = [f"v2.detail.events.{n}.*" for n in range(51)]
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(), _config(filters={"detailTypes": globs}), _secrets())

    message = safe_errors(caught.value)
    assert message.startswith("filters.detailTypes")
    assert "at most 50 detail-type globs (repeats count once), not 51" in message


def test_an_unknown_filter_value_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(), _config(filters={"directions": ["Sideways"]}), _secrets())

    assert "unknown direction 'Sideways' (known: Inbound, Outbound)" in safe_errors(caught.value)


# --- OAuth 2.0 client credentials and mTLS ------------------------------------------------------------

CLIENT_SECRET = "an-oauth-client-secret-that-must-not-leak"
OAUTH2 = {"tokenUrl": "https://idp.example.com/oauth2/token", "clientId": "relay", "scope": "events:write"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def test_an_oauth2_config_maps_its_client_and_keeps_the_secret_as_the_value() -> None:
    config = webhook_config_from_genesys(
        _integration(), _config(securityType="oauth2", oauth2=OAUTH2), _secrets(security=CLIENT_SECRET)
    )

    security = config.security
    assert security.type is SecurityType.OAUTH2
    assert security.value is not None and security.value.get_secret_value() == CLIENT_SECRET
    assert security.oauth2 is not None
    assert (security.oauth2.token_url, security.oauth2.client_id, security.oauth2.scope) == (
        "https://idp.example.com/oauth2/token",
        "relay",
        "events:write",
    )
    assert security.oauth2.token_endpoint_auth_method is TokenEndpointAuthMethod.CLIENT_SECRET_BASIC
    assert CLIENT_SECRET not in f"{config!r}"


@pytest.mark.parametrize(
    ("properties", "secrets", "reason"),
    [
        ({"securityType": "oauth2"}, {"security": CLIENT_SECRET}, "needs the oauth2 property"),
        ({"securityType": "oauth2", "oauth2": OAUTH2}, {"security": None}, "needs a value"),
        ({"securityType": "bearer", "oauth2": OAUTH2}, {}, "belongs to security type oauth2 only"),
        (
            {"securityType": "oauth2", "oauth2": {**OAUTH2, "clientId": ""}},
            {"security": CLIENT_SECRET},
            "clientId",
        ),
        (
            {"securityType": "oauth2", "oauth2": {**OAUTH2, "tokenEndpointAuthMethod": "private_key_jwt"}},
            {"security": CLIENT_SECRET},
            "tokenEndpointAuthMethod",
        ),
        (
            {"securityType": "oauth2", "oauth2": {**OAUTH2, "scope": "a\r\nb"}},
            {"security": CLIENT_SECRET},
            "scope",
        ),
    ],
    ids=["no-client", "no-secret", "client-on-bearer", "empty-client-id", "unsupported-auth", "scope-crlf"],
)
def test_an_invalid_oauth2_config_is_refused_with_its_reason(
    properties: dict[str, Any], secrets: dict[str, str | None], reason: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(), _config(**properties), _secrets(**secrets))

    message = safe_errors(caught.value)
    assert reason in message
    assert CLIENT_SECRET not in message


@pytest.mark.parametrize("security_type", ["none", "bearer", "oauth2"])
def test_a_client_certificate_goes_with_any_security_type(pki: Pki, security_type: str) -> None:
    bundle = pki.client_bundle()
    properties: dict[str, Any] = {"securityType": security_type}
    secrets: dict[str, str | None] = {"clientCertificate": bundle}
    if security_type == "oauth2":
        properties["oauth2"] = OAUTH2
    if security_type == "none":
        secrets["security"] = None

    config = webhook_config_from_genesys(_integration(), _config(**properties), _secrets(**secrets))

    assert config.security.client_certificate is not None
    assert config.security.client_certificate.get_secret_value() == bundle
    assert key_body(bundle)[:64] not in f"{config!r} {config}"


def test_an_unusable_or_expired_client_certificate_is_refused_without_quoting_it(pki: Pki) -> None:
    certificate_only = pki.client_bundle().split("-----BEGIN PRIVATE KEY-----")[0]
    expired = pki.client_bundle(valid_days=-1)

    for bundle, reason in ((certificate_only, "found 0"), (expired, "expired")):
        with pytest.raises(ValidationError) as caught:
            webhook_config_from_genesys(_integration(), _config(), _secrets(clientCertificate=bundle))
        message = safe_errors(caught.value)
        assert message.startswith("security.clientCertificate") and reason in message
        assert "-----BEGIN" not in message and "MII" not in message


def test_ordering_and_on_exhausted_come_from_the_config_properties() -> None:
    default = webhook_config_from_genesys(_integration(), _config(), _secrets())
    assert (default.ordering, default.on_exhausted) == (Ordering.NONE, OnExhausted.DEAD_LETTER)

    ordered = webhook_config_from_genesys(
        _integration(), _config(ordering="conversation", onExhausted="block"), _secrets()
    )
    assert (ordered.ordering, ordered.on_exhausted) == (Ordering.CONVERSATION, OnExhausted.BLOCK)


@pytest.mark.parametrize(
    ("properties", "problem"),
    [
        ({"ordering": "global"}, "ordering"),
        ({"onExhausted": "block"}, "ordered targets only"),
        ({"ordering": "conversation", "onExhausted": "retry-forever"}, "onExhausted"),
    ],
)
def test_an_unknown_ordering_or_a_block_without_ordering_is_refused(
    properties: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        webhook_config_from_genesys(_integration(), _config(**properties), _secrets())
    assert problem in safe_errors(refused.value)


@pytest.mark.parametrize(
    ("headers", "security"),
    [
        ({"X-Accent": "café", "X-Tab": "a\tb", "X-Team": "crm"}, "a-bearer-token_with.some~chars+/="),
        ({}, "ünïcode-user:pässwörd"),  # basic: base64 of UTF-8, any text goes
        ({f"X-H{n}": "v" for n in range(MAX_CUSTOM_HEADERS)}, "a-bearer-token"),
    ],
    ids=["latin-1 headers, b64token bearer", "unicode basic credentials", "as many headers as allowed"],
)
def test_what_http_can_carry_is_accepted(headers: dict[str, str], security: str) -> None:
    kind = "basic" if ":" in security else "bearer"
    config = webhook_config_from_genesys(
        _integration(), _config(headers=headers, securityType=kind), _secrets(security=security)
    )
    assert config.headers == headers


def test_safe_errors_names_each_problem_up_to_a_bound_and_counts_the_rest() -> None:
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(
            _integration(),
            _config(method="GET", readTimeoutSeconds=61, retryMatrix={"attempts": 0}),
            _secrets(),
        )
    every = safe_errors(caught.value)
    assert every.count(": ") == caught.value.error_count() >= 3
    first_two = "; ".join(every.split("; ")[:2])
    assert safe_errors(caught.value, most=2) == f"{first_two}; and {caught.value.error_count() - 2} more"


@pytest.mark.parametrize("field", ["baseIntervalMs", "maxIntervalMs"])
@pytest.mark.parametrize("value", [43_200_001, 10**400])
def test_a_retry_interval_past_what_sqs_can_wait_is_refused_with_the_field(field: str, value: int) -> None:
    # Past 12 h no retry can wait longer; 10**400 would reach every envelope as a number JSON parsers
    # read as Infinity
    matrix = {"baseIntervalMs": 1000, "maxIntervalMs": 43_200_000, field: value}
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(), _config(retryMatrix=matrix), _secrets())

    message = safe_errors(caught.value)
    assert f"retryMatrix.{field}" in message and "43200000" in message


def test_a_retry_interval_of_twelve_hours_is_accepted() -> None:
    matrix = {"baseIntervalMs": 43_200_000, "maxIntervalMs": 43_200_000}
    config = webhook_config_from_genesys(_integration(), _config(retryMatrix=matrix), _secrets())

    assert config.retry_matrix.max_interval_ms == 43_200_000

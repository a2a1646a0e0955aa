"""WebhookConfig: the seed's schema plus what delivery needs, validated without leaking secret values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from relay.models.targets import SecurityType
from relay.models.webhook_config import WebhookConfig, safe_errors, webhook_config_from_genesys

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
        ({"name": ""}, {}, {}, "name"),
        ({}, {"method": "GET"}, {}, "method"),
        ({}, {"url": None}, {}, "url"),
        ({}, {"openMessagingIntegrationId": None}, {}, "openMessagingIntegrationId"),
        ({}, {"headers": {"Content-Type": "text/plain"}}, {}, "headers"),
        ({}, {"headers": {"X-Evil": "a\r\nInjected: yes"}}, {}, "headers"),
        ({}, {"headers": {"bad header": "x"}}, {}, "headers"),
        ({}, {"securityType": "bearer"}, {"security": None}, "security"),
        ({}, {"securityType": "basic"}, {"security": "no-colon-here"}, "security"),
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
    for value in (BEARER, SIGNING, KEY, "no-colon-here", "not-whsec-prefixed", "short"):
        assert value not in message


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


def test_without_filters_or_limit_every_event_goes_at_any_rate() -> None:
    config = webhook_config_from_genesys(_integration(), _config(), _secrets())

    assert not config.filters.filters_anything and config.filters.describe() == "all"
    assert config.rate_limit is None


def test_an_unknown_filter_value_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValidationError) as caught:
        webhook_config_from_genesys(_integration(), _config(filters={"directions": ["Sideways"]}), _secrets())

    assert "unknown direction 'Sideways' (known: Inbound, Outbound)" in safe_errors(caught.value)

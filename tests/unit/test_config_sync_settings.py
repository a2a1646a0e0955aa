"""Config sync settings: read through Settings; Genesys credentials from the env or Secrets Manager."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from relay.adapters.genesys import credentials_from_settings
from relay.errors import ConfigurationError
from relay.models.secrets import RotatingSecret
from relay.settings import Settings


def test_sync_settings_come_from_the_environment_names() -> None:
    settings = Settings.model_validate(
        {
            "GENESYS_REGION": "eu-west-1",
            "GENESYS_API_HOST": "http://127.0.0.1:8080",
            "GENESYS_OPEN_MESSAGING_INTEGRATION_IDS": " a, b ,,",
            "GENESYS_WEBHOOK_INTEGRATION_IDS": "t1",
            "GENESYS_TIMEOUT_SECONDS": "2.5",
            "GENESYS_MAX_RATE_LIMIT_RETRIES": "1",
            "GENESYS_MAX_RETRY_AFTER_SECONDS": "4",
            "GENESYS_SYNC_DEADLINE_SECONDS": "45",
            "RELAY_ALLOW_LOOPBACK_TARGETS": "true",
        }
    )
    assert settings.genesys_open_messaging_integration_ids == ["a", "b"]
    assert settings.genesys_webhook_integration_ids == ["t1"]
    assert (settings.genesys_timeout_seconds, settings.genesys_max_rate_limit_retries) == (2.5, 1)
    assert settings.genesys_max_retry_after_seconds == 4 and settings.allow_loopback_targets
    assert settings.genesys_sync_deadline_seconds == 45


def test_rate_limit_bounds_are_bounded() -> None:
    with pytest.raises(ValueError):
        Settings.model_validate({"GENESYS_MAX_RETRY_AFTER_SECONDS": "3600"})


@pytest.mark.parametrize("deadline", ["0", "-5", "901"])
def test_sync_deadline_is_positive_and_within_the_lambda_maximum(deadline: str) -> None:
    with pytest.raises(ValueError, match="GENESYS_SYNC_DEADLINE_SECONDS"):
        Settings.model_validate({"GENESYS_SYNC_DEADLINE_SECONDS": deadline})


def test_plain_client_credentials_win_locally() -> None:
    def must_not_read(name: str) -> RotatingSecret:
        raise AssertionError("the secret must not be read when the environment has credentials")

    settings = Settings.model_validate(
        {"GENESYS_CLIENT_ID": "cid", "GENESYS_CLIENT_SECRET": "csecret", "GENESYS_CREDENTIALS_SECRET": "x"}
    )
    credentials = credentials_from_settings(settings, read_secret=must_not_read)
    assert credentials.client_id == "cid" and credentials.client_secret.get_secret_value() == "csecret"
    assert "csecret" not in repr(credentials)


def test_credentials_secret_holds_client_id_as_key_id() -> None:
    read: list[str] = []

    def reader(name: str) -> RotatingSecret:
        read.append(name)
        return RotatingSecret(current=SecretStr("from-secrets-manager"), key_id="client-7")

    settings = Settings.model_validate({"GENESYS_CREDENTIALS_SECRET": "relay/genesys/client"})
    credentials = credentials_from_settings(settings, read_secret=reader)

    assert read == ["relay/genesys/client"]
    assert credentials.client_id == "client-7"
    assert credentials.client_secret.get_secret_value() == "from-secrets-manager"


def test_credentials_secret_without_client_id_is_a_configuration_error() -> None:
    settings = Settings.model_validate({"GENESYS_CREDENTIALS_SECRET": "relay/genesys/client"})
    with pytest.raises(ConfigurationError, match="keyId") as caught:
        credentials_from_settings(
            settings, read_secret=lambda _: RotatingSecret(current=SecretStr("hidden-value"))
        )
    assert "hidden-value" not in str(caught.value)


def test_no_credentials_at_all_names_the_settings() -> None:
    with pytest.raises(ConfigurationError, match="GENESYS_CREDENTIALS_SECRET.*GENESYS_CLIENT_ID"):
        credentials_from_settings(Settings.model_validate({}))

"""The formatVersion 2.1 envelope and the headers of a delivery (pure logic)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from relay.errors import ConfigurationError
from relay.logic import crypto
from relay.logic.envelope import USER_AGENT, TargetSecrets, build_request, encryption_key_for
from relay.models.delivery import DeliveryTask
from relay.models.secrets import RotatingSecret
from relay.models.targets import RetryMatrix, SecurityType, Target, TargetSecurity

NOW = datetime(2026, 11, 28, 17, 30, 5, 123456, tzinfo=UTC)
EVENT = {"id": "evt-1", "type": "Text", "text": "hello", "channel": {"id": "c-1"}}
EVENT_JSON = json.dumps(EVENT)
SIGNING = RotatingSecret(current="whsec_" + base64.b64encode(b"k" * 24).decode())


def _task() -> DeliveryTask:
    return DeliveryTask(
        delivery_id=uuid.UUID("5f0c2b8e-9a41-4d3e-8b6f-1c2d3e4f5a61"),
        integration_id="i-1",
        target_id="t-1",
        event_id="evt-1",
        received_at=NOW,
        event_json=EVENT_JSON,
    )


def _target(**changes: object) -> Target:
    base = Target(integration_id="i-1", target_id="t-1", name="crm", url="https://example.com/hook")
    return base.model_copy(update=changes)


def test_the_envelope_has_the_seed_fields_in_camel_case() -> None:
    # Given a plain target with the default retry matrix
    request = build_request(
        _task(), EVENT_JSON, _target(), TargetSecrets(), key_cache=crypto.KeyCache(), now=NOW
    )

    # When the body is read back
    body = json.loads(request.body)

    # Then it is the 2.1 envelope, field for field
    assert body == {
        "deliveryId": "5f0c2b8e-9a41-4d3e-8b6f-1c2d3e4f5a61",
        "timestamp": "2026-11-28T17:30:05.123Z",
        "retryMatrix": {"attempts": 3, "baseIntervalMs": 1000, "maxIntervalMs": 30000, "multiplier": 2.0},
        "encryptionDirective": None,
        "sourceEvent": EVENT,
        "formatVersion": "2.1",
    }


# Spellings a parse and re-dump would change: exponent, long decimal, -0, a huge integer, escapes next
# to the characters they stand for, whitespace around and inside.
FAITHFUL_TEXT = (
    ' {"id" : "evt-1", "n": [1E+2, 0.1000000000000000055511151231257827, -0, 1e308, ' + "1" * 40 + "],\n"
    ' "escaped": "caf\\u00e9 \\ud83d\\ude00 \\u0000", "raw": "caf\u00e9 \U0001f600"}\t'
)


def test_source_event_is_the_event_text_spliced_in_byte_for_byte() -> None:
    # Given an event whose text a parse and re-dump would change
    task = _task().model_copy(update={"event_json": FAITHFUL_TEXT})

    # When a plain target's body is built
    request = build_request(
        task, FAITHFUL_TEXT, _target(), TargetSecrets(), key_cache=crypto.KeyCache(), now=NOW
    )

    # Then the text sits between the envelope's other fields untouched, and the body is still JSON
    head, tail = request.body.split(b',"sourceEvent":', 1)
    assert tail == FAITHFUL_TEXT.encode() + b',"formatVersion":"2.1"}'
    assert json.loads(head + b"}")["deliveryId"] == str(task.delivery_id)
    assert json.loads(request.body)["sourceEvent"] == json.loads(FAITHFUL_TEXT)


def test_an_encrypting_target_seals_the_event_text_byte_for_byte() -> None:
    # Given a target with an encryption key version
    secret = RotatingSecret(current="enc-secret", key_id="k7", salt="ab" * 16)
    target = _target(encryption_key_name="relay/local/encryption/t-1")
    cache = crypto.KeyCache()

    # When its request is built around an event text a re-encoding would change
    request = build_request(
        _task(), FAITHFUL_TEXT, target, TargetSecrets(encryption=secret), key_cache=cache, now=NOW
    )

    # Then the plaintext is exactly the event's UTF-8 bytes
    directive = json.loads(request.body)["encryptionDirective"]
    sealed = crypto.Sealed(
        bytes.fromhex(directive["iv"]),
        bytes.fromhex(directive["encryptedPayload"]),
        bytes.fromhex(directive["authTag"]),
    )
    key = encryption_key_for(secret, cache, target_id="t-1").key
    plaintext = crypto.unseal(sealed, key, associated_data=str(_task().delivery_id).encode())
    assert plaintext == FAITHFUL_TEXT.encode()


def test_a_target_retry_matrix_overrides_the_defaults() -> None:
    target = _target(
        retry_matrix=RetryMatrix(attempts=5, base_interval_ms=200, max_interval_ms=2000, multiplier=3)
    )
    request = build_request(
        _task(), EVENT_JSON, target, TargetSecrets(), key_cache=crypto.KeyCache(), now=NOW
    )
    assert json.loads(request.body)["retryMatrix"] == {
        "attempts": 5,
        "baseIntervalMs": 200,
        "maxIntervalMs": 2000,
        "multiplier": 3.0,
    }


def test_an_encrypting_target_gets_an_empty_source_event_and_a_full_directive() -> None:
    # Given a target with an encryption key version (keyId + salt)
    secret = RotatingSecret(current="enc-secret", key_id="k7", salt="ab" * 16)
    target = _target(encryption_key_name="relay/local/encryption/t-1")

    # When its request is built
    request = build_request(
        _task(), EVENT_JSON, target, TargetSecrets(encryption=secret), key_cache=crypto.KeyCache(), now=NOW
    )

    # Then the event is only inside the directive, and nothing of it shows in clear
    body = json.loads(request.body)
    directive = body["encryptionDirective"]
    assert body["sourceEvent"] == {}
    assert set(directive) == {
        "algorithm",
        "keyDerivation",
        "encryptedPayload",
        "iv",
        "authTag",
        "salt",
        "keyId",
    }
    assert (directive["algorithm"], directive["keyDerivation"], directive["keyId"]) == (
        "aes-256-gcm",
        "scrypt",
        "k7",
    )
    assert directive["salt"] == "ab" * 16
    assert len(bytes.fromhex(directive["iv"])) == 12 and len(bytes.fromhex(directive["authTag"])) == 16
    assert b"hello" not in request.body


def test_encryption_without_a_salt_fails_instead_of_sending_in_clear() -> None:
    secret = RotatingSecret(current="enc-secret", key_id="k7", salt=None)
    target = _target(encryption_key_name="relay/local/encryption/t-1")
    with pytest.raises(ConfigurationError, match="no salt"):
        build_request(
            _task(),
            EVENT_JSON,
            target,
            TargetSecrets(encryption=secret),
            key_cache=crypto.KeyCache(),
            now=NOW,
        )


def test_encryption_wanted_but_secret_missing_fails() -> None:
    target = _target(encryption_key_name="relay/local/encryption/t-1")
    with pytest.raises(ConfigurationError):
        build_request(_task(), EVENT_JSON, target, TargetSecrets(), key_cache=crypto.KeyCache(), now=NOW)


def test_headers_carry_ids_version_signature_auth_and_user_agent() -> None:
    target = _target(security=TargetSecurity(type=SecurityType.BEARER, secret_name="relay/local/auth/t-1"))
    secrets = TargetSecrets(signing=SIGNING, auth=RotatingSecret(current="tok-123"))
    headers = build_request(
        _task(), EVENT_JSON, target, secrets, key_cache=crypto.KeyCache(), now=NOW
    ).headers
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Delivery-Id"] == headers["webhook-id"] == "5f0c2b8e-9a41-4d3e-8b6f-1c2d3e4f5a61"
    assert headers["X-Format-Version"] == "2.1"
    assert headers["X-Integration-Id"] == "t-1"
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["User-Agent"] == USER_AGENT


def test_basic_auth_is_base64_of_user_colon_password() -> None:
    target = _target(security=TargetSecurity(type=SecurityType.BASIC, secret_name="relay/local/auth/t-1"))
    secrets = TargetSecrets(auth=RotatingSecret(current="archive:pw"))
    headers = build_request(
        _task(), EVENT_JSON, target, secrets, key_cache=crypto.KeyCache(), now=NOW
    ).headers
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"archive:pw").decode()


def test_custom_headers_never_override_the_relays_own() -> None:
    # Given custom headers that try to replace relay headers, in any case, one that injects a line and
    # two HTTP cannot carry (stored before config sync refused them)
    custom = {
        "authorization": "Bearer stolen",
        "Webhook-Id": "forged",
        "webhook-signature": "v1,forged",
        "CONTENT-TYPE": "text/plain",
        "User-Agent": "spoof",
        "Host": "evil.example",
        "X-Evil": "a\r\nInjected: yes",
        "X-Emoji": "\U0001f600",
        "X-Ctl": "a\x01b",
        "X-Team": "crm",
    }
    target = _target(headers=custom, security=TargetSecurity(type=SecurityType.BEARER, secret_name="s"))
    secrets = TargetSecrets(signing=SIGNING, auth=RotatingSecret(current="tok-123"))

    # When the headers are built
    headers = build_request(
        _task(), EVENT_JSON, target, secrets, key_cache=crypto.KeyCache(), now=NOW
    ).headers

    # Then only the harmless custom header survives, and the relay's values stand
    lowered = {k.lower(): v for k, v in headers.items()}
    assert len(lowered) == len(headers)  # no duplicate names differing in case
    assert lowered["x-team"] == "crm"
    assert not {"x-evil", "x-emoji", "x-ctl", "host"} & set(lowered)
    assert lowered["authorization"] == "Bearer tok-123"
    assert lowered["webhook-id"] == "5f0c2b8e-9a41-4d3e-8b6f-1c2d3e4f5a61"
    assert lowered["content-type"] == "application/json"
    assert lowered["user-agent"] == USER_AGENT

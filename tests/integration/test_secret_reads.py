"""Secret reads through relay.adapters.secrets against moto: what the cache keeps, and for how long."""

from __future__ import annotations

import secrets

import pytest
from test_dispatch_support import (
    ENCRYPTED_TARGET,
    ENCRYPTION_SALT,
    ENCRYPTION_SECRET,
    secret_name,
    seed_target,
    task_record,
)

from relay.adapters.secrets import UNUSABLE_RECHECK_SECONDS, SecretsManagerSecrets
from relay.errors import ConfigurationError
from relay.local.aws_stack import LocalResources, local_client
from relay.local.receiver import Receiver
from relay.models.secrets import RotatingSecret, SecretKind
from relay.settings import get_settings
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration

TTL_SECONDS = 300


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_secret_fixed_by_hand_is_read_again_within_seconds_not_after_the_cache_ttl(
    aws_stack: LocalResources,
) -> None:
    # Given a signature secret an operator overwrote with a value not in the relay's shape, read once
    client = local_client("secretsmanager", aws_stack.endpoint_url)
    name = f"relay/test-{secrets.token_hex(4)}/signature/intake"
    client.create_secret(Name=name, SecretString="pasted-the-bare-value")
    clock = Clock()
    store = SecretsManagerSecrets(client, cache_ttl_seconds=TTL_SECONDS, monotonic=clock)
    with pytest.raises(ConfigurationError, match="not in the relay's JSON shape"):
        store.get(name)

    # When the operator puts the right value back
    fixed = RotatingSecret(current="whsec-fixed-value-0123456789")
    client.put_secret_value(SecretId=name, SecretString=fixed.to_json())

    # Then reads just after still see the cached bad value (no Secrets Manager call per request) ...
    clock.now = UNUSABLE_RECHECK_SECONDS - 1
    with pytest.raises(ConfigurationError):
        store.get(name)
    # ... and the fixed value is read once the recheck interval has passed, long before the cache's TTL
    clock.now = UNUSABLE_RECHECK_SECONDS
    assert store.get(name).values() == fixed.values()


def test_a_usable_secret_is_kept_for_the_caches_ttl(aws_stack: LocalResources) -> None:
    # Given a secret read once
    client = local_client("secretsmanager", aws_stack.endpoint_url)
    name = f"relay/test-{secrets.token_hex(4)}/signing/target"
    first = RotatingSecret(current="whsec-first-value-0123456789")
    client.create_secret(Name=name, SecretString=first.to_json())
    clock = Clock()
    store = SecretsManagerSecrets(client, cache_ttl_seconds=TTL_SECONDS, monotonic=clock)
    assert store.get(name).values() == first.values()

    # When it changes in Secrets Manager, and more than the recheck interval passes
    client.put_secret_value(SecretId=name, SecretString=RotatingSecret(current="whsec-second-0123").to_json())
    clock.now = UNUSABLE_RECHECK_SECONDS * 3

    # Then the cache still answers with the value it read (the recheck is for unusable values only)
    assert store.get(name).values() == first.values()


def test_a_target_secret_that_parses_but_cannot_be_used_is_read_again_within_seconds(
    aws_stack: LocalResources, receiver: Receiver
) -> None:
    # Given an encrypted target whose encryption secret an operator wrote by hand without keyId and salt
    # (in the relay's shape, so it is cached as any value is), and a dispatcher that read it once
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    client = local_client("secretsmanager", aws_stack.endpoint_url)
    name = secret_name(SecretKind.ENCRYPTION, ENCRYPTED_TARGET)
    client.put_secret_value(SecretId=name, SecretString=RotatingSecret(current=ENCRYPTION_SECRET).to_json())
    clock = Clock()
    dispatcher = build_dispatcher(
        get_settings(), secrets=SecretsManagerSecrets(client, cache_ttl_seconds=TTL_SECONDS, monotonic=clock)
    )
    try:
        failed = dispatcher.handle_batch([task_record(ENCRYPTED_TARGET)])["batchItemFailures"]
        assert len(failed) == 1 and receiver.deliveries == []  # retried: nothing sent in clear

        # When the operator adds them, and the recheck interval passes (far within the cache's TTL)
        fixed = RotatingSecret(current=ENCRYPTION_SECRET, key_id="k2", salt=ENCRYPTION_SALT)
        client.put_secret_value(SecretId=name, SecretString=fixed.to_json())
        clock.now = UNUSABLE_RECHECK_SECONDS

        # Then the next record is sealed with the fixed key and delivered, not retried for 5 minutes
        assert dispatcher.handle_batch([task_record(ENCRYPTED_TARGET)]) == {"batchItemFailures": []}
        (request,) = receiver.deliveries
        assert request.encrypted and request.json()["encryptionDirective"]["keyId"] == "k2"
    finally:
        dispatcher.close()

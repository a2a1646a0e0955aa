"""Shared helpers for the dispatcher's integration tests (no tests here); what every test directory
shares (events, the handler loader, queues, waiting) is in tests/support.

Targets and secrets are seeded through the relay's own stores into moto.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from support.events import DELIVERY_BATCH_SAMPLE, INTEGRATION_ID, sample, sqs_record
from support.queues import receive

from relay.local.aws_stack import LocalResources
from relay.models import secrets
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.targets import Integration, RetryMatrix, SecurityType, Target, TargetSecurity
from relay.settings import get_settings
from relay.wiring import aws_client, secret_store, target_store


def secret_name(kind: SecretKind, ident: str) -> str:
    """The secret's name under the current settings' SECRETS_PREFIX."""
    return secrets.secret_name(get_settings().secrets_prefix, kind, ident)


def put_secret(name: str, secret: RotatingSecret) -> None:
    secret_store(get_settings()).put(name, secret)


def get_secret(name: str, *, force_fetch: bool = False) -> RotatingSecret:
    """The secret as Secrets Manager holds it now (a store of its own: no cache from earlier reads)."""
    return secret_store(get_settings()).get(name, force_fetch=force_fetch)


class ManualClock:
    """A clock the test moves by hand (``clock.now += 30``); injected where code takes ``clock=``."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


PLAIN_TARGET = "3f1d2c4b-5a69-4e7f-8a1b-2c3d4e5f6a70"
ENCRYPTED_TARGET = "9b8a7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
SIGNING_SECRET = "whsec_bG9jYWwtZGVtby1zaWduaW5nLXNlY3JldC0wMDE="
OLD_SIGNING_SECRET = "whsec_b2xkLXNpZ25pbmctc2VjcmV0LXN0aWxsLXZhbGlkIQ=="
BEARER = "local-demo-bearer-token"
ENCRYPTION_SECRET = "local-demo-encryption-key-0001"
ENCRYPTION_SALT = "00112233445566778899aabbccddeeff"


def seed_target(
    resources: LocalResources,
    url: str,
    *,
    target_id: str = PLAIN_TARGET,
    encrypted: bool = False,
    enabled: bool = True,
    attempts: int = 3,
    headers: dict[str, str] | None = None,
    previous_signing_secret: str | None = None,
    read_timeout_seconds: float | None = None,
) -> Target:
    """One integration with one target in the TargetsTable, and the target's secrets in Secrets Manager."""
    store = target_store(get_settings())
    store.put_integration(
        Integration(
            integration_id=INTEGRATION_ID,
            name="Acme Open Channel",
            signature_secret_name=secret_name(SecretKind.SIGNATURE, INTEGRATION_ID),
        )
    )
    signing = secret_name(SecretKind.SIGNING, target_id)
    put_secret(signing, RotatingSecret(current=SIGNING_SECRET, previous=previous_signing_secret))
    auth = secret_name(SecretKind.AUTH, target_id)
    put_secret(auth, RotatingSecret(current=BEARER))
    encryption = None
    if encrypted:
        encryption = secret_name(SecretKind.ENCRYPTION, target_id)
        put_secret(encryption, RotatingSecret(current=ENCRYPTION_SECRET, key_id="k1", salt=ENCRYPTION_SALT))
    target = Target(
        integration_id=INTEGRATION_ID,
        target_id=target_id,
        name=f"target-{target_id[:8]}",
        enabled=enabled,
        url=url,
        headers=headers if headers is not None else {"X-Team": "crm"},
        security=TargetSecurity(type=SecurityType.BEARER, secret_name=auth),
        signing_secret_name=signing,
        encryption_key_name=encryption,
        retry_matrix=RetryMatrix(attempts=attempts, base_interval_ms=200, max_interval_ms=2000, multiplier=2),
        read_timeout_seconds=read_timeout_seconds,
    )
    store.put_target(target)
    return target


def task_record(
    target_id: str = PLAIN_TARGET,
    *,
    delivery_id: str | None = None,
    receive_count: int = 1,
    attempts: int | None = None,
    deferrals: int | None = None,
    event: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An SQS event record carrying one DeliveryTask (the sample batch's first, for this target)."""
    body = json.loads(sample(DELIVERY_BATCH_SAMPLE)["Records"][0]["body"])
    body["targetId"] = target_id
    body["deliveryId"] = delivery_id or str(uuid.uuid4())
    if event is not None:
        body["eventJson"] = json.dumps(event)
    counters = {"relay-attempts": attempts, "relay-deferrals": deferrals}
    return sqs_record(
        body,
        receive_count=receive_count,
        attributes={name: value for name, value in counters.items() if value is not None},
    )


def queue_records(resources: LocalResources, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send records' bodies and attributes through the real delivery queue (moto) and receive them back
    as Lambda event records: real receipt handles, so visibility changes can be observed."""
    sqs = aws_client("sqs")
    for record in records:
        kwargs: dict[str, Any] = {"QueueUrl": resources.delivery_queue_url, "MessageBody": record["body"]}
        attrs = {
            name: {"DataType": value["dataType"], "StringValue": value["stringValue"]}
            for name, value in record.get("messageAttributes", {}).items()
        }
        if attrs:
            kwargs["MessageAttributes"] = attrs
        sqs.send_message(**kwargs)
    received: list[dict[str, Any]] = []
    for _ in range(10):
        if len(received) >= len(records):
            break
        received.extend(receive(resources.delivery_queue_url))
    assert len(received) == len(records)
    return received


def attr(record: dict[str, Any], name: str) -> str | None:
    value = record["messageAttributes"].get(name)
    return None if value is None else str(value["stringValue"])


def audit_lines(resources: LocalResources) -> list[dict[str, Any]]:
    """Every audit JSON line in the bucket, with the object key it came from (``_key``)."""
    s3 = aws_client("s3")
    lines: list[dict[str, Any]] = []
    for obj in s3.list_objects_v2(Bucket=resources.audit_bucket, Prefix="audit/").get("Contents", []):
        body = s3.get_object(Bucket=resources.audit_bucket, Key=obj["Key"])["Body"].read().decode()
        lines.extend({**json.loads(line), "_key": obj["Key"]} for line in body.splitlines() if line)
    return lines

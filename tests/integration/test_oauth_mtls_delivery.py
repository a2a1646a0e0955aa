"""OAuth 2.0 and mTLS through the real config path: the fake Genesys API serves a webhook integration
with security type oauth2 and a client certificate, config sync stores it (secrets in Secrets Manager
on moto), and the dispatcher built from settings delivers to a loopback HTTPS receiver that requires
the client certificate and a bearer token the loopback token endpoint issued.

Then the scan the chaos run makes (bench/chaos.py ``security_scan``), on this run: no log line, metric,
audit object or sync report holds the client secret, a token or the private key."""

from __future__ import annotations

import json
import secrets
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.events import INTEGRATION_ID
from support.secure_peers import HttpsReceiver, Pki, SeenRequest, TokenEndpoint, key_body
from test_dispatch_support import audit_lines, get_secret, secret_name, task_record

from relay.local.aws_stack import LocalResources, forget_cached_configuration
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures
from relay.models.secrets import SecretKind
from relay.models.targets import SecurityType
from relay.settings import get_settings
from relay.wiring import target_store
from relay.wiring.config_sync import run_config_sync
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration

TARGET_ID = str(uuid.uuid4())


@dataclass
class SecureTarget:
    """The peers of one OAuth + mTLS target, and what config sync made of it."""

    pki: Pki
    tokens: TokenEndpoint
    receiver: HttpsReceiver
    bundle: str
    genesys: FakeGenesys
    report: dict[str, Any]

    def answer(self, request: SeenRequest) -> tuple[int, bytes]:
        """200 to a token the endpoint issued and has not revoked, else 401; the body echoes the
        Authorization header (a careless receiver), to show the audit never keeps it."""
        status = 200 if self.tokens.valid(request.headers.get("authorization")) else 401
        return status, json.dumps({"echo": request.headers.get("authorization")}).encode()

    def secret_values(self) -> dict[str, str]:
        """Every secret in play, by name (the scan's list)."""
        values = {"client_secret": self.tokens.client_secret, "private_key": key_body(self.bundle)[:64]}
        values.update({f"token_{n}": token for n, token in enumerate(self.tokens.issued)})
        return values


def fixtures(tokens: TokenEndpoint, receiver: HttpsReceiver, bundle: str) -> Fixtures:
    return Fixtures.model_validate(
        {
            "integrations": [
                {
                    "id": INTEGRATION_ID,
                    "name": "Acme Open Channel",
                    "signatureSecret": "oauth-mtls-signature-secret-01",
                    "targets": [
                        {
                            "id": TARGET_ID,
                            "name": "crm over oauth2 and mtls",
                            "url": f"{receiver.url}/hooks/crm",
                            "security": {
                                "type": "oauth2",
                                "value": tokens.client_secret,
                                "oauth2": {
                                    "tokenUrl": tokens.url,
                                    "clientId": tokens.client_id,
                                    "scope": "events:write",
                                },
                            },
                            "clientCertificate": bundle,
                        }
                    ],
                }
            ]
        }
    )


@pytest.fixture
def secure(
    aws_stack: LocalResources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecureTarget]:
    pki = Pki.create(tmp_path)
    bundle = pki.client_bundle("relay-dispatcher")
    with (
        TokenEndpoint() as tokens,
        HttpsReceiver(pki, client_certificates=ssl.CERT_REQUIRED) as receiver,
        FakeGenesys(fixtures(tokens, receiver, bundle)) as genesys,
    ):
        for name, value in genesys.settings_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("RELAY_ALLOW_LOOPBACK_TARGETS", "true")
        monkeypatch.setenv("RELAY_LOCAL_TRUSTED_CAS", str(pki.ca_file()))
        monkeypatch.setenv("SECRETS_PREFIX", f"relay/test-{secrets.token_hex(4)}")
        forget_cached_configuration()
        report = run_config_sync(get_settings()).to_dict()
        target = SecureTarget(pki, tokens, receiver, bundle, genesys, report)
        receiver.answer = target.answer
        yield target


def test_config_sync_stores_the_oauth_client_and_the_client_certificate_apart(secure: SecureTarget) -> None:
    assert secure.report["rejected"] == [] and secure.report["targets"] == [TARGET_ID]

    stored = target_store(get_settings(), cache_ttl_seconds=0).get(INTEGRATION_ID)
    assert stored is not None
    target = stored.target(TARGET_ID)
    assert target is not None
    security = target.security
    assert security.type is SecurityType.OAUTH2
    assert security.oauth2 is not None
    assert (security.oauth2.token_url, security.oauth2.client_id, security.oauth2.scope) == (
        secure.tokens.url,
        secure.tokens.client_id,
        "events:write",
    )
    assert security.secret_name == secret_name(SecretKind.AUTH, TARGET_ID)
    assert security.client_certificate_name == secret_name(SecretKind.MTLS, TARGET_ID)
    auth = get_secret(secret_name(SecretKind.AUTH, TARGET_ID), force_fetch=True)
    mtls = get_secret(secret_name(SecretKind.MTLS, TARGET_ID), force_fetch=True)
    assert auth.current.get_secret_value() == secure.tokens.client_secret
    assert mtls.current.get_secret_value() == secure.bundle
    # The table holds names only
    assert secure.tokens.client_secret not in target.model_dump_json()
    assert key_body(secure.bundle)[:64] not in target.model_dump_json()


def test_deliveries_carry_the_client_certificate_and_one_token_refreshed_once_on_401(
    secure: SecureTarget,
    aws_stack: LocalResources,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = build_dispatcher(get_settings())
    try:
        # When a batch of four records goes out (concurrently: a cold token cache)
        first = dispatcher.handle_batch([task_record(TARGET_ID) for _ in range(4)])
        # and, after the token endpoint revoked every token it issued, a batch of three
        secure.tokens.revoke_all()
        second = dispatcher.handle_batch([task_record(TARGET_ID) for _ in range(3)])
    finally:
        dispatcher.close()

    # Then every record was delivered, each request with the relay's client certificate
    assert first["batchItemFailures"] == [] and second["batchItemFailures"] == []
    requests = secure.receiver.requests
    assert {r.client_certificate for r in requests} == {"relay-dispatcher"}
    assert (
        sum(1 for r in requests if r.headers.get("authorization") == f"Bearer {secure.tokens.issued[0]}") >= 4
    )
    # with one token for the first batch, and one fresh token for the second (its 401s refreshed once)
    assert len(secure.tokens.requests) == 2
    assert all(
        r.basic == (secure.tokens.client_id, secure.tokens.client_secret) for r in secure.tokens.requests
    )
    delivered = [line for line in audit_lines(aws_stack) if line["outcome"] == "delivered"]
    assert len(delivered) == 7 and {line["attempt"] for line in delivered} == {1}

    # And no secret is in any log line, metric, audit object or the sync report
    output = capfd.readouterr()
    texts = [output.out, output.err, json.dumps(secure.report)]
    texts += [json.dumps({k: str(v) for k, v in vars(r).items()}) for r in caplog.records]
    texts += [json.dumps(line) for line in audit_lines(aws_stack)]
    hits = {name: value for name, value in secure.secret_values().items() if any(value in t for t in texts)}
    assert hits == {}
    assert len(secure.secret_values()) >= 4  # the client secret, the key, two tokens: the scan had them
    assert any("[redacted]" in json.dumps(line) for line in audit_lines(aws_stack))  # the echo, scrubbed


def test_a_token_url_the_url_policy_refuses_rejects_the_target(secure: SecureTarget) -> None:
    # Given an admin points the token URL at the cloud metadata address
    secure.genesys.update_config_properties(
        TARGET_ID,
        oauth2={"tokenUrl": "https://169.254.169.254/latest/api/token", "clientId": "relay"},
    )

    report = run_config_sync(get_settings())

    # Then the target is rejected naming the token URL, and the last good record stays
    (rejection,) = report.rejected
    assert rejection.id == TARGET_ID
    assert rejection.reason.startswith("OAuth token URL refused: ")
    assert "metadata" in rejection.reason
    stored = target_store(get_settings(), cache_ttl_seconds=0).get(INTEGRATION_ID)
    assert stored is not None and stored.targets[0].security.oauth2 is not None
    assert stored.targets[0].security.oauth2.token_url == secure.tokens.url

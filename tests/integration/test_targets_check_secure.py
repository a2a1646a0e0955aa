"""``relay targets check`` of mTLS and OAuth2 targets, against moto-backed secrets, a loopback HTTPS
receiver that requires a client certificate and a loopback token endpoint: the check presents the
target's client certificate as a delivery does, and asks its token endpoint for a token as a delivery
does, never showing the certificate's key, the client secret or the token."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from misbehaving_peer import Answer, misbehaving_peer
from support.secure_peers import HttpsReceiver, Pki, TokenEndpoint, key_body

from relay.cli import main
from relay.local.aws_stack import LocalResources, forget_cached_configuration
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.secrets import secret_name as named
from relay.models.targets import Integration, OAuth2Client, SecurityType, Target, TargetSecurity
from relay.settings import get_settings
from relay.wiring import secret_store, target_store

pytestmark = pytest.mark.integration

INTEGRATION_ID = "11111111-2222-4333-8444-555555555555"


@dataclass
class Peers:
    pki: Pki
    receiver: HttpsReceiver  # requires a client certificate the test CA signed
    tokens: TokenEndpoint
    bundle: str  # the client certificate and key the mTLS targets' secrets hold


@pytest.fixture
def peers(aws_stack: LocalResources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Peers]:
    pki = Pki.create(tmp_path)
    monkeypatch.setenv("RELAY_ALLOW_LOOPBACK_TARGETS", "true")
    monkeypatch.setenv("RELAY_LOCAL_TRUSTED_CAS", str(pki.ca_file()))
    monkeypatch.setenv("SECRETS_PREFIX", f"relay/test-{secrets.token_hex(4)}")
    forget_cached_configuration()
    store = target_store(get_settings(), cache_ttl_seconds=0)
    store.put_integration(Integration(integration_id=INTEGRATION_ID, name="secure"))
    with (
        HttpsReceiver(pki, client_certificates=ssl.CERT_REQUIRED) as receiver,
        TokenEndpoint() as tokens,
    ):
        yield Peers(pki, receiver, tokens, pki.client_bundle("relay-check"))


def _secret(kind: SecretKind, target_id: str, value: str | None) -> str:
    """The name of the target's secret of ``kind``, stored with ``value`` (None: left missing)."""
    name = named(get_settings().secrets_prefix, kind, target_id)
    if value is not None:
        secret_store(get_settings()).put(name, RotatingSecret(current=value))
    return name


def _put(target_id: str, url: str, **security: Any) -> None:
    target_store(get_settings(), cache_ttl_seconds=0).put_target(
        Target(
            integration_id=INTEGRATION_ID,
            target_id=target_id,
            name=target_id,
            url=url,
            security=TargetSecurity(**security),
        )
    )


def _mtls_target(peers: Peers, target_id: str, bundle: str | None) -> None:
    name = _secret(SecretKind.MTLS, target_id, bundle)
    _put(target_id, f"{peers.receiver.url}/hook", client_certificate_name=name)


def _oauth_target(
    peers: Peers,
    target_id: str,
    *,
    token_url: str | None = None,
    client_secret: str | None = "same",
    url: str | None = None,
) -> None:
    """An OAuth2 + mTLS target on the receiver (or ``url``), its client the token endpoint's
    (``client_secret`` "same": the endpoint's own secret; None: the secret left missing)."""
    value = peers.tokens.client_secret if client_secret == "same" else client_secret
    _put(
        target_id,
        url or f"{peers.receiver.url}/hook",
        type=SecurityType.OAUTH2,
        secret_name=_secret(SecretKind.AUTH, target_id, value),
        oauth2=OAuth2Client(
            token_url=token_url or peers.tokens.url, client_id=peers.tokens.client_id, scope="events:write"
        ),
        client_certificate_name=_secret(SecretKind.MTLS, target_id, peers.bundle),
    )


def _check(*args: str) -> int:
    return main(["targets", "check", *args])


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Checked:
    row: dict[str, Any]  # the target's JSON row
    said: str  # everything the JSON check said (output, errors, log records)
    table: str  # everything the table check said
    codes: tuple[int, int]  # the JSON check's exit code, the table check's


def _checked_both_ways(
    target_id: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Checked:
    code = _check(target_id, "--format", "json")
    said = _everything_said(capfd, caplog)
    table_code = _check(target_id)
    table = _everything_said(capfd, caplog)
    [row] = _json_lines(said.split("\n", 1)[0])
    return Checked(row, said, table, (code, table_code))


def _everything_said(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    """Every line the command wrote, and every log record it made (with its extra fields)."""
    output = capfd.readouterr()
    records = [json.dumps({k: str(v) for k, v in vars(r).items()}) for r in caplog.records]
    return "\n".join([output.out, output.err, *records])


# --- mTLS ---------------------------------------------------------------------------------------------


def test_check_presents_an_mtls_targets_client_certificate_as_a_delivery_does(
    peers: Peers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a target whose receiver refuses any handshake without the relay's client certificate
    _mtls_target(peers, "t-mtls", peers.bundle)

    # When it is checked
    code = _check("t-mtls", "--format", "json")

    # Then the handshake carried the target's certificate and the HEAD was answered: reachable
    said = _everything_said(capfd, caplog)
    [row] = _json_lines(said.split("\n", 1)[0])
    assert (row["reachable"], row["status"], row["error"]) == (True, 200, None)
    assert [(r.method, r.client_certificate) for r in peers.receiver.requests] == [("HEAD", "relay-check")]
    assert peers.receiver.refused_handshakes == 0
    assert code == 0
    # and no part of the key shows anywhere
    assert key_body(peers.bundle)[:64] not in said


@pytest.mark.parametrize(
    ("stored", "cause"),
    [
        (None, "does not exist"),
        ("not a PEM bundle at all", "expected one private key in the PEM bundle, found 0"),
        ("key-only", "no certificate in the PEM bundle matches its private key"),
    ],
    ids=["missing", "not-pem", "key-without-its-certificate"],
)
def test_an_mtls_target_whose_certificate_cannot_be_used_is_not_reached_and_the_row_says_why(
    peers: Peers,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    stored: str | None,
    cause: str,
) -> None:
    # Given an mTLS target whose certificate secret is missing, or holds something unusable
    value = stored
    if stored == "key-only":  # a real private key, without the certificate it belongs to
        value = peers.bundle[peers.bundle.index("-----BEGIN PRIVATE KEY-----") :]
    _mtls_target(peers, "t-bad-cert", value)

    # When it is checked
    code = _check("t-bad-cert", "--format", "json")

    # Then nothing was sent (not even a handshake), and the row says it is the client certificate, why
    said = _everything_said(capfd, caplog)
    [row] = _json_lines(said.split("\n", 1)[0])
    assert (row["reachable"], row["status"], row["latencyMs"]) == (False, None, None)
    assert row["error"].startswith("client certificate") and cause in row["error"]
    assert peers.receiver.requests == [] and peers.receiver.refused_handshakes == 0
    assert code == 1
    # without any of the secret's text
    assert "not a PEM bundle" not in said and key_body(peers.bundle)[:64] not in said


# --- OAuth2 -------------------------------------------------------------------------------------------


def test_check_gets_an_oauth_targets_token_as_a_delivery_does_and_shows_neither_token_nor_secret(
    peers: Peers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given an OAuth2 (and mTLS) target whose token endpoint issues tokens to its client
    _oauth_target(peers, "t-oauth")

    # When it is checked, as JSON and as a table
    code = _check("t-oauth", "--format", "json")
    json_said = _everything_said(capfd, caplog)
    table_code = _check("t-oauth")
    table_said = _everything_said(capfd, caplog)

    # Then the token endpoint was asked for a token, as a delivery asks (client credentials, the
    # client's id and secret in Basic, its scope), once per check
    assert len(peers.tokens.requests) == 2 and len(peers.tokens.issued) == 2
    asked = peers.tokens.requests[0]
    assert asked.form == {"grant_type": "client_credentials", "scope": "events:write"}
    assert asked.basic == (peers.tokens.client_id, peers.tokens.client_secret)
    # and its answer is in the row, beside the HEAD's, which is unchanged: no Authorization header
    [row] = _json_lines(json_said.split("\n", 1)[0])
    assert (row["reachable"], row["status"], row["error"]) == (True, 200, None)
    endpoint = row["tokenEndpoint"]
    assert (endpoint["ok"], endpoint["status"], endpoint["error"]) == (True, 200, None)
    assert isinstance(endpoint["latencyMs"], float)
    heads = peers.receiver.requests
    assert [r.method for r in heads] == ["HEAD", "HEAD"]
    assert all("authorization" not in r.headers for r in heads)
    header, line = table_said.splitlines()[:2]
    assert "TOKEN" in header and " ok " in line
    assert (code, table_code) == (0, 0)
    # And neither the tokens issued nor the client secret show anywhere: output, errors, log records
    hits = [v for v in [peers.tokens.client_secret, *peers.tokens.issued] if v in json_said + table_said]
    assert hits == []


def test_a_token_endpoint_refusing_the_client_makes_the_row_need_attention_naming_its_answer(
    peers: Peers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given an OAuth2 target whose token endpoint answers 400 invalid_client, and whose receiver is up
    peers.tokens.status, peers.tokens.error = 400, "invalid_client"
    _oauth_target(peers, "t-refused")

    # When it is checked
    checked = _checked_both_ways("t-refused", capfd, caplog)

    # Then the HEAD was answered, but the row says the token endpoint's answer, and the check exits 1
    row, said, table, (code, table_code) = checked.row, checked.said, checked.table, checked.codes
    assert (row["reachable"], row["status"], row["error"]) == (True, 200, None)
    endpoint = row["tokenEndpoint"]
    assert (endpoint["ok"], endpoint["status"]) == (False, 400)
    assert endpoint["error"] == "token endpoint 127.0.0.1 answered 400 (invalid_client)"
    assert (code, table_code) == (1, 1)
    line = table.splitlines()[1]
    assert "failed" in line and "answered 400 (invalid_client)" in line
    assert peers.tokens.client_secret not in said + table


def test_an_unreachable_token_endpoint_is_an_error_in_the_row(
    peers: Peers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given an OAuth2 target whose token endpoint is not listening
    _oauth_target(peers, "t-no-idp", token_url=f"http://127.0.0.1:{_closed_port()}/oauth2/token")

    # When it is checked
    code = _check("t-no-idp", "--format", "json", "--timeout", "2")

    # Then the row says the token endpoint could not be reached, and why
    said = _everything_said(capfd, caplog)
    [row] = _json_lines(said.split("\n", 1)[0])
    endpoint = row["tokenEndpoint"]
    assert (endpoint["ok"], endpoint["status"]) == (False, None)
    assert endpoint["error"].startswith("token endpoint 127.0.0.1: connection-error")
    assert "ConnectionRefusedError" in endpoint["error"]
    assert row["reachable"] is True and code == 1
    assert peers.tokens.client_secret not in said


def test_a_token_endpoint_that_never_answers_is_cut_off_at_the_timeout_beside_the_head(
    peers: Peers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given an OAuth2 target whose token endpoint takes the request and never answers, nor the target
    with misbehaving_peer(lambda *_: Answer(after="hold")) as idp:
        _oauth_target(peers, "t-silent-idp", token_url=f"{idp.url}/oauth2/token", url=f"{idp.url}/hook")
        started = time.monotonic()

        # When it is checked with --timeout 1
        code = _check("t-silent-idp", "--format", "json", "--timeout", "1")
        took = time.monotonic() - started

    # Then the token request and the HEAD were both cut off at about 1 s, side by side (not one after
    # the other): --timeout still bounds the check in all
    [row] = _json_lines(_everything_said(capfd, caplog).split("\n", 1)[0])
    endpoint = row["tokenEndpoint"]
    assert (endpoint["ok"], endpoint["status"]) == (False, None)
    assert endpoint["error"].startswith("token endpoint 127.0.0.1: ")
    assert "deadline" in endpoint["error"] or "timed out" in endpoint["error"]
    assert sorted(method for method, _ in idp.requests) == ["HEAD", "POST"]
    assert row["reachable"] is False and row["error"].endswith("1 s deadline") and code == 1
    assert took < 1.9


def test_an_oauth_target_whose_client_secret_is_missing_says_so_without_asking_for_a_token(
    peers: Peers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _oauth_target(peers, "t-no-secret", client_secret=None)

    code = _check("t-no-secret", "--format", "json")

    [row] = _json_lines(_everything_said(capfd, caplog).split("\n", 1)[0])
    endpoint = row["tokenEndpoint"]
    assert (endpoint["ok"], endpoint["status"], endpoint["latencyMs"]) == (False, None, None)
    assert endpoint["error"].startswith("client secret: ") and "does not exist" in endpoint["error"]
    assert peers.tokens.requests == [] and code == 1


def test_a_target_without_oauth2_has_no_token_endpoint_in_its_row(
    peers: Peers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _mtls_target(peers, "t-plain-mtls", peers.bundle)

    assert _check("t-plain-mtls", "--format", "json") == 0

    [row] = _json_lines(_everything_said(capfd, caplog).split("\n", 1)[0])
    assert row["tokenEndpoint"] is None and peers.tokens.requests == []


# --- configuration: the target's other secrets, as a delivery uses them ---------------------------------

WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()


def _configured_target(peers: Peers, target_id: str, **secrets_by_kind: RotatingSecret | None) -> None:
    """An mTLS target on the receiver with the given secrets of kind signing / encryption / auth
    (bearer) stored (None: named but left missing)."""
    names = {}
    for kind, value in secrets_by_kind.items():
        name = named(get_settings().secrets_prefix, SecretKind(kind), target_id)
        if value is not None:
            secret_store(get_settings()).put(name, value)
        names[kind] = name
    target_store(get_settings(), cache_ttl_seconds=0).put_target(
        Target(
            integration_id=INTEGRATION_ID,
            target_id=target_id,
            name=target_id,
            url=f"{peers.receiver.url}/hook",
            signing_secret_name=names.get("signing"),
            encryption_key_name=names.get("encryption"),
            security=TargetSecurity(
                type=SecurityType.BEARER if "auth" in names else SecurityType.NONE,
                secret_name=names.get("auth"),
                client_certificate_name=_secret(SecretKind.MTLS, target_id, peers.bundle),
            ),
        )
    )


@pytest.mark.parametrize(
    ("secrets_by_kind", "says", "value"),
    [
        ({"signing": RotatingSecret(current="not-a-whsec-value-0123")}, "whsec_", "not-a-whsec-value-0123"),
        (
            {"encryption": RotatingSecret(current="an-encryption-passphrase-0123")},
            "has no keyId",
            "an-encryption-passphrase-0123",
        ),
        ({"auth": None}, "does not exist", None),
        ({"auth": RotatingSecret(current="a-bearer-token-0123\n")}, "bearer token", "a-bearer-token-0123"),
    ],
    ids=[
        "signing-secret-not-whsec",
        "encryption-secret-without-keyid",
        "bearer-secret-missing",
        "bearer-secret-with-a-line-break",
    ],
)
def test_a_target_whose_deliveries_could_not_be_built_with_its_secrets_needs_attention(
    peers: Peers,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    secrets_by_kind: dict[str, RotatingSecret | None],
    says: str,
    value: str | None,
) -> None:
    # Given a reachable target with a secret its deliveries would fail on as `configuration`
    _configured_target(peers, "t-misconfigured", **secrets_by_kind)

    # When it is checked
    checked = _checked_both_ways("t-misconfigured", capfd, caplog)

    # Then the HEAD was answered, but the row says what a delivery would be dead-lettered for, and
    # the check exits 1; the secret's value shows nowhere
    row = checked.row
    assert (row["reachable"], row["status"], row["error"]) == (True, 200, None)
    assert says in row["configurationError"]
    assert says in checked.table.splitlines()[1]
    assert checked.codes == (1, 1)
    assert value is None or value not in checked.said + checked.table


def test_a_target_whose_secrets_build_a_delivery_has_no_configuration_error(
    peers: Peers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _configured_target(
        peers,
        "t-configured",
        signing=RotatingSecret(current=WHSEC),
        encryption=RotatingSecret(current="an-encryption-passphrase-0123", key_id="k1", salt="ab" * 16),
        auth=RotatingSecret(current="a-bearer-token-0123"),
    )

    assert _check("t-configured", "--format", "json") == 0

    [row] = _json_lines(_everything_said(capfd, caplog).split("\n", 1)[0])
    assert (row["reachable"], row["configurationError"]) == (True, None)

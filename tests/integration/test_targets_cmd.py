"""``relay targets sync | list | check`` against moto, the fake Genesys API and a loopback receiver."""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from misbehaving_peer import Answer, misbehaving_peer
from support.secure_peers import HttpsReceiver, Pki

from relay.cli import main
from relay.local.aws_stack import (
    LocalResources,
    create_resources,
    forget_cached_configuration,
    local_client,
    register_stack,
)
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures, FixtureTarget
from relay.local.loopback import SHUTDOWN_POLL_SECONDS
from relay.local.template import load_template
from relay.models.event_filters import EventFilters
from relay.models.rate_limit import RateLimit, rate_key
from relay.models.targets import (
    Integration,
    OAuth2Client,
    OnExhausted,
    Ordering,
    RetryMatrix,
    SecurityType,
    Target,
    TargetSecurity,
)
from relay.settings import get_settings
from relay.wiring import rate_limit_store, target_store

pytestmark = pytest.mark.integration

FIXTURES = Fixtures.load()
INTEGRATION_ID = "11111111-2222-4333-8444-555555555555"
GENESYS_IDS = ("GENESYS_OPEN_MESSAGING_INTEGRATION_IDS", "GENESYS_WEBHOOK_INTEGRATION_IDS")


class RecordingReceiver:
    """Loopback server that records every method it is sent; /slow answers late, /post-only refuses HEAD,
    /moved redirects to /ok, /together* answer 200 once TOGETHER of them wait at once, else 503."""

    TOGETHER = 3

    def __init__(self) -> None:
        self.methods: list[tuple[str, str]] = []
        self.together = threading.Barrier(self.TOGETHER, timeout=5)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def _answer(self) -> None:
                receiver.methods.append((self.command, self.path))
                if self.path == "/slow":
                    time.sleep(1.0)  # not a wait: a slow endpoint, under test
                status = 405 if self.path == "/post-only" and self.command != "POST" else 200
                if self.path.startswith("/together"):
                    try:  # answered only once every /together target is being checked at the same time
                        receiver.together.wait()
                    except threading.BrokenBarrierError:
                        status = 503
                status = 301 if self.path == "/moved" else status
                self.send_response(status)
                if status == 301:
                    self.send_header("Location", f"{receiver.url}/ok")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_HEAD = do_GET = do_POST = do_PUT = _answer  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), daemon=True
        )

    def __enter__(self) -> RecordingReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def local_settings(aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ALLOW_LOOPBACK_TARGETS", "true")
    monkeypatch.setenv("SECRETS_PREFIX", f"relay/test-{secrets.token_hex(4)}")
    forget_cached_configuration()


@pytest.fixture
def receiver(local_settings: None) -> Iterator[RecordingReceiver]:
    with RecordingReceiver() as server:
        store = target_store(get_settings(), cache_ttl_seconds=0)
        store.put_integration(
            Integration(
                integration_id=INTEGRATION_ID, name="check", signature_secret_name="relay/x/signature/1"
            )
        )
        for target_id, url in (
            ("t-ok", f"{server.url}/ok"),
            ("t-post-only", f"{server.url}/post-only"),
            ("t-slow", f"{server.url}/slow"),
            ("t-moved", f"{server.url}/moved"),
            ("t-closed", f"http://127.0.0.1:{_closed_port()}/hook"),
            ("t-private", "https://10.0.0.7/hook"),
        ):
            store.put_target(
                Target(integration_id=INTEGRATION_ID, target_id=target_id, name=target_id, url=url)
            )
        yield server


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_check_sends_only_head_and_reports_status_latency_and_error(
    receiver: RecordingReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    # When every target is checked with a short timeout
    code = main(["targets", "check", "--timeout", "0.3", "--format", "json"])

    # Then each got at most one HEAD, and nothing was POSTed
    results = {r["targetId"]: r for r in _json_lines(capsys.readouterr().out)}
    # (the redirect was not followed: /ok got the one HEAD of its own target)
    assert sorted(receiver.methods) == [
        ("HEAD", "/moved"),
        ("HEAD", "/ok"),
        ("HEAD", "/post-only"),
        ("HEAD", "/slow"),
    ]
    # And the answers are reported as they were
    assert results["t-ok"]["status"] == 200 and results["t-ok"]["error"] is None
    assert results["t-ok"]["reachable"] is True and isinstance(results["t-ok"]["latencyMs"], float)
    assert results["t-post-only"]["status"] == 405 and results["t-post-only"]["error"] == "HTTP 405"
    # (a redirect is there, but deliveries to it are dead-lettered: the check says why)
    moved = results["t-moved"]
    assert (moved["reachable"], moved["status"]) == (True, 301)
    assert moved["error"] == "HTTP 301: redirects are not followed"
    # (--timeout is the total: the slow answer is cut off at 0.3 s)
    assert results["t-slow"]["status"] is None and results["t-slow"]["reachable"] is False
    assert results["t-slow"]["error"] == "no complete answer within the request's 0.3 s deadline"
    closed = results["t-closed"]
    assert closed["reachable"] is False and closed["error"] == "NewConnectionError(ConnectionRefusedError)"
    assert (
        results["t-private"]["error"].startswith("URL refused") and results["t-private"]["latencyMs"] is None
    )
    assert code == 1  # some targets are unreachable


@pytest.mark.parametrize("status_line_first", [False, True], ids=["all-trickled", "status-line-at-once"])
def test_check_ends_at_its_timeout_against_a_target_trickling_its_answer(
    local_settings: None, capsys: pytest.CaptureFixture[str], status_line_first: bool
) -> None:
    # Given a target that answers one byte every 0.2 s (about 20 s in all), or sends its status line
    # at once and trickles the rest
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"p" * 60 + b"\r\n\r\n"
    split = len(b"HTTP/1.1 200 OK\r\n") if status_line_first else 0
    with misbehaving_peer(lambda *_: Answer(head=answer[:split], trickle=answer[split:])) as peer:
        store = target_store(get_settings(), cache_ttl_seconds=0)
        store.put_integration(
            Integration(
                integration_id=INTEGRATION_ID, name="check", signature_secret_name="relay/x/signature/1"
            )
        )
        store.put_target(
            Target(integration_id=INTEGRATION_ID, target_id="t-trickle", name="t", url=f"{peer.url}/hook")
        )
        started = time.monotonic()

        # When it is checked with --timeout 1
        code = main(["targets", "check", "t-trickle", "--timeout", "1", "--format", "json"])
        took = time.monotonic() - started

    # Then the check ends at about 1 s in all, as unreachable, saying why, with no status: an answer
    # that never completed is not a 200, whatever its first line said
    [result] = _json_lines(capsys.readouterr().out)
    assert (result["reachable"], result["status"]) == (False, None)
    assert result["error"] == "no complete answer within the request's 1 s deadline"
    assert took < 3.0 and code == 1


def test_check_trusts_the_local_stacks_cas_as_deliveries_do(
    local_settings: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an HTTPS target whose certificate a test CA signed, that CA trusted as the local stack's
    # functions trust it: RELAY_LOCAL_TRUSTED_CAS
    pki = Pki.create(tmp_path)
    monkeypatch.setenv("RELAY_LOCAL_TRUSTED_CAS", str(pki.ca_file()))
    forget_cached_configuration()
    with HttpsReceiver(pki, client_certificates=ssl.CERT_NONE) as https:
        store = target_store(get_settings(), cache_ttl_seconds=0)
        store.put_integration(Integration(integration_id=INTEGRATION_ID, name="tls"))
        store.put_target(
            Target(integration_id=INTEGRATION_ID, target_id="t-tls", name="tls", url=f"{https.url}/hook")
        )

        # When it is checked
        code = main(["targets", "check", "t-tls", "--format", "json"])

        # Then the certificate was verified against that CA and the HEAD answered, as a delivery would be
        [result] = _json_lines(capsys.readouterr().out)
        assert (result["reachable"], result["status"], result["error"]) == (True, 200, None)
        assert [(seen.method, seen.path) for seen in https.requests] == [("HEAD", "/hook")]
        assert code == 0


def test_check_checks_targets_side_by_side_not_one_timeout_after_another(
    receiver: RecordingReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an integration whose targets answer only while all of them are being checked at once
    store = target_store(get_settings(), cache_ttl_seconds=0)
    store.put_integration(Integration(integration_id="together", name="together"))
    for n in range(RecordingReceiver.TOGETHER):
        url = f"{receiver.url}/together/{n}"
        store.put_target(Target(integration_id="together", target_id=f"t-{n}", name=f"t-{n}", url=url))

    # When they are checked
    code = main(["targets", "check", "--integration", "together", "--timeout", "10", "--format", "json"])

    # Then each was answered: one at a time, the first would have waited alone and got a 503
    results = _json_lines(capsys.readouterr().out)
    assert [(r["targetId"], r["status"]) for r in results] == [
        (f"t-{n}", 200) for n in range(RecordingReceiver.TOGETHER)
    ]
    assert code == 0


def test_check_one_target_by_id(receiver: RecordingReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    # (with the longest --timeout taken, one day: the socket and the deadline's waits take it)
    code = main(["targets", "check", "t-ok", "--timeout", "86400", "--format", "json"])

    assert [r["targetId"] for r in _json_lines(capsys.readouterr().out)] == ["t-ok"]
    assert receiver.methods == [("HEAD", "/ok")]
    assert code == 0


def test_check_unknown_target_fails_clearly(
    receiver: RecordingReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["targets", "check", "no-such-target"])

    # A target id that names nothing in the table: the command could not run (3)
    assert code == 3
    assert capsys.readouterr().err == "relay targets check: no target no-such-target in the TargetsTable\n"
    assert receiver.methods == []


def test_check_of_a_target_id_two_integrations_hold_asks_which_and_checks_the_one_chosen(
    receiver: RecordingReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given t-ok held under a second integration too, there pointing at a closed port
    other = "99999999-2222-4333-8444-555555555555"
    store = target_store(get_settings(), cache_ttl_seconds=0)
    store.put_integration(
        Integration(integration_id=other, name="other", signature_secret_name="relay/x/signature/2")
    )
    store.put_target(
        Target(integration_id=other, target_id="t-ok", name="t-ok", url=f"http://127.0.0.1:{_closed_port()}/")
    )

    # When it is checked by its id alone, then with each integration
    ambiguous = main(["targets", "check", "t-ok"])
    refusal = capsys.readouterr().err
    first = main(["targets", "check", "t-ok", "--integration", INTEGRATION_ID, "--format", "json"])
    (checked_first,) = _json_lines(capsys.readouterr().out)
    second = main(["targets", "check", "t-ok", "--integration", other, "--format", "json"])
    (checked_second,) = _json_lines(capsys.readouterr().out)

    # Then the id alone is a usage error naming both, as for every command; each choice checks its own
    # copy, and says which integration it is
    assert ambiguous == 2 and INTEGRATION_ID in refusal and other in refusal and "--integration" in refusal
    assert (first, checked_first["integrationId"], checked_first["reachable"]) == (0, INTEGRATION_ID, True)
    assert (second, checked_second["integrationId"], checked_second["reachable"]) == (1, other, False)
    assert receiver.methods == [("HEAD", "/ok")]


def test_sync_then_list_masks_every_secret(
    local_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeGenesys(FIXTURES) as fake:
        for name, value in fake.settings_env().items():
            monkeypatch.setenv(name, value)
        forget_cached_configuration()

        # When the operator syncs from the terminal and lists what was stored
        sync_code = main(["targets", "sync"])
        sync_out = capsys.readouterr().out
        list_code = main(["targets", "list", "--format", "json"])
        listed = _json_lines(capsys.readouterr().out)
        table_code = main(["targets", "list"])
        table = capsys.readouterr().out

    # Then the sync reported the fixtures' integration and targets
    report = json.loads(sync_out)
    integration = FIXTURES.integrations[0]
    assert sync_code == 0 and report["integrations"] == [integration.id]
    assert sorted(report["targets"]) == sorted(t.id for t in integration.targets)
    # And the listing shows them with every secret masked
    [entry] = listed
    assert entry["signatureSecret"] == "****"
    by_id = {t["targetId"]: t for t in entry["targets"]}
    archive = by_id[integration.targets[1].id]
    assert (archive["auth"], archive["signingSecret"], archive["encryptionKey"]) == ("****", "****", "****")
    assert by_id[integration.targets[0].id]["encryptionKey"] is None
    assert list_code == 0 and table_code == 0
    # And no secret value appears anywhere in what was printed
    printed = sync_out + json.dumps(listed) + table
    values = [integration.signature_secret] + [
        v for t in integration.targets for v in (t.security.value, t.signing_secret, t.encryption_key) if v
    ]
    for value in values:
        assert value not in printed


def test_list_shows_each_targets_auth_type_and_never_a_secret(
    local_settings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given targets of every auth type, one of them also presenting a client certificate (mTLS)
    store = target_store(get_settings(), cache_ttl_seconds=0)
    store.put_integration(Integration(integration_id=INTEGRATION_ID, name="auth types"))
    oauth2 = OAuth2Client(token_url="https://idp.example.com/oauth2/token", client_id="relay")
    securities = {
        "t-none": TargetSecurity(),
        "t-basic": TargetSecurity(type=SecurityType.BASIC, secret_name="relay/x/auth/t-basic"),
        "t-bearer": TargetSecurity(type=SecurityType.BEARER, secret_name="relay/x/auth/t-bearer"),
        "t-oauth2-mtls": TargetSecurity(
            type=SecurityType.OAUTH2,
            secret_name="relay/x/auth/t-oauth2-mtls",
            oauth2=oauth2,
            client_certificate_name="relay/x/mtls/t-oauth2-mtls",
        ),
    }
    for target_id, security in securities.items():
        store.put_target(
            Target(
                integration_id=INTEGRATION_ID,
                target_id=target_id,
                name=target_id,
                url="https://hooks.example.com/x",
                security=security,
            )
        )

    # When they are listed, as JSON and as a table
    assert main(["targets", "list", "--format", "json"]) == 0
    (entry,) = _json_lines(capsys.readouterr().out)
    assert main(["targets", "list"]) == 0
    table = capsys.readouterr().out

    # Then each shows its auth type, the OAuth client (not secret) and masks for the secrets it names
    by_id = {t["targetId"]: t for t in entry["targets"]}
    assert {i: t["authType"] for i, t in by_id.items()} == {
        "t-none": "none",
        "t-basic": "basic",
        "t-bearer": "bearer",
        "t-oauth2-mtls": "oauth2+mtls",
    }
    shown = by_id["t-oauth2-mtls"]
    assert (shown["auth"], shown["clientCertificate"]) == ("****", "****")
    assert shown["oauth2"]["tokenUrl"] == "https://idp.example.com/oauth2/token"
    assert by_id["t-bearer"]["clientCertificate"] is None and by_id["t-bearer"]["oauth2"] is None
    row = next(line for line in table.splitlines() if "t-oauth2-mtls" in line)
    assert "oauth2+mtls ****" in row
    assert "relay/x/" not in table + json.dumps(entry)  # not even the secrets' names


def test_sync_without_credentials_fails_with_a_clear_message(
    local_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GENESYS_OPEN_MESSAGING_INTEGRATION_IDS", INTEGRATION_ID)
    forget_cached_configuration()

    code = main(["targets", "sync"])

    assert code == 3
    assert "GENESYS_CREDENTIALS_SECRET" in capsys.readouterr().err


def test_a_terminal_sync_with_nothing_to_read_is_refused_and_writes_nothing(
    local_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an operator's shell with credentials and the EventBridge integration, but no integration ids
    monkeypatch.setenv("GENESYS_CLIENT_ID", "client")
    monkeypatch.setenv("GENESYS_CLIENT_SECRET", "secret-of-the-client")
    monkeypatch.setenv("EVENTBRIDGE_INTEGRATION_ID", INTEGRATION_ID)
    forget_cached_configuration()

    code = main(["targets", "sync"])

    # Then the sync says what is missing, exits 3, and stores nothing
    err = capsys.readouterr().err
    assert code == 3 and "nothing to sync: GENESYS_OPEN_MESSAGING_INTEGRATION_IDS" in err, err
    assert target_store(get_settings(), cache_ttl_seconds=0).list_integration_ids() == []


def _deployed_with_genesys_client(
    genesys: FakeGenesys, aws_stack: LocalResources, suffix: str, **parameters: str
) -> tuple[str, dict[str, str]]:
    """A stack deployed locally with these parameters and a credentials secret holding the fake's OAuth
    client: its name and its outputs."""
    credentials = f"relay/test-{secrets.token_hex(4)}/genesys-client"
    template = load_template(
        parameters={"Stage": "local", "GenesysCredentialsSecretName": credentials, **parameters}
    )
    deployed = create_resources(template, aws_stack.endpoint_url, f"{aws_stack.prefix}{suffix}")
    stack = f"{deployed.prefix}-stack"
    outputs = register_stack(deployed, stack)
    client = {"current": genesys.client_secret, "keyId": genesys.client_id}
    secretsmanager = local_client("secretsmanager", aws_stack.endpoint_url)
    secretsmanager.create_secret(Name=credentials, SecretString=json.dumps(client))
    return stack, outputs


def test_a_terminal_sync_with_stack_name_reads_what_to_sync_from_the_stacks_outputs(
    genesys: FakeGenesys,
    aws_stack: LocalResources,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a deployed stack configured with the fake's integrations and a credentials secret holding its
    # OAuth client, and an operator's shell that names none of them (only the fake's address: local mode)
    stack, _ = _deployed_with_genesys_client(
        genesys,
        aws_stack,
        "g",
        GenesysOpenMessagingIntegrationIds=",".join(genesys.open_messaging_integration_ids),
        GenesysWebhookIntegrationIds=",".join(genesys.webhook_integration_ids),
    )
    for name in ("GENESYS_CLIENT_ID", "GENESYS_CLIENT_SECRET", *GENESYS_IDS):
        monkeypatch.delenv(name)
    forget_cached_configuration()

    # When the operator syncs naming only the stack
    code = main(["targets", "sync", "--stack-name", stack])
    out = capsys.readouterr().out

    # Then the stack's integrations were read with the stack's credentials, into the stack's table
    integration = FIXTURES.integrations[0]
    report = json.loads(out)
    assert code == 0
    assert report["integrations"] == [integration.id]
    assert sorted(report["targets"]) == sorted(t.id for t in integration.targets)
    assert target_store(get_settings(), cache_ttl_seconds=0).list_integration_ids() == []  # not the shell's
    assert main(["targets", "list", "--format", "json", "--stack-name", stack]) == 0
    (entry,) = _json_lines(capsys.readouterr().out)
    assert sorted(t["targetId"] for t in entry["targets"]) == sorted(t.id for t in integration.targets)


def test_a_terminal_sync_with_stack_name_does_not_take_integrations_the_stack_has_none_of_from_the_shell(
    genesys: FakeGenesys,
    aws_stack: LocalResources,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a stack deployed without webhook integrations (the template then leaves their output out),
    # and an operator's shell still naming webhook integrations from another stage
    stack, outputs = _deployed_with_genesys_client(
        genesys,
        aws_stack,
        "w",
        GenesysOpenMessagingIntegrationIds=",".join(genesys.open_messaging_integration_ids),
    )
    assert "ConfigSyncWebhookIntegrationIds" not in outputs
    monkeypatch.delenv("GENESYS_CLIENT_ID")
    monkeypatch.delenv("GENESYS_CLIENT_SECRET")
    monkeypatch.setenv("GENESYS_OPEN_MESSAGING_INTEGRATION_IDS", "stale-open-messaging-id")
    monkeypatch.setenv("GENESYS_WEBHOOK_INTEGRATION_IDS", ",".join(genesys.webhook_integration_ids))
    forget_cached_configuration()

    # When the operator syncs naming the stack
    code = main(["targets", "sync", "--stack-name", stack])

    # Then only the stack's integrations were read: no target from webhook integrations it was not given
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["integrations"] == genesys.open_messaging_integration_ids
    assert report["targets"] == []


def test_a_terminal_sync_with_stack_name_of_a_stack_without_ids_says_the_shell_does_not_apply(
    genesys: FakeGenesys,
    aws_stack: LocalResources,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a stack deployed without integration ids (the local stack's case), and an operator who set
    # them in the shell, as the refusal used to tell them to
    stack, outputs = _deployed_with_genesys_client(genesys, aws_stack, "n")
    assert "ConfigSyncOpenMessagingIntegrationIds" not in outputs
    monkeypatch.setenv(
        "GENESYS_OPEN_MESSAGING_INTEGRATION_IDS", ",".join(genesys.open_messaging_integration_ids)
    )
    forget_cached_configuration()

    # When they sync naming the stack
    code = main(["targets", "sync", "--stack-name", stack])

    # Then it is refused, naming the stack's parameters, and says the shell's variables do not count
    err = capsys.readouterr().err
    assert code == 3 and f"the stack {stack} was deployed without integration ids" in err, err
    assert "GenesysOpenMessagingIntegrationIds" in err and "do not apply with --stack-name" in err, err


def test_a_terminal_sync_and_check_with_stack_name_allow_the_ports_the_stack_allows(
    genesys: FakeGenesys,
    aws_stack: LocalResources,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a deployed stack whose targets may use port 8443 (AllowedTargetPorts), one target on it, and
    # an operator's shell that does not set ALLOWED_TARGET_PORTS (the default: 443)
    integration = FIXTURES.integrations[0]
    on_8443 = FixtureTarget(
        id="0c0c0c0c-0000-4000-8000-000000008443", name="alt-port", url="https://93.184.216.34:8443/hook"
    )
    genesys.load(Fixtures(integrations=[integration.model_copy(update={"targets": [on_8443]})]))
    credentials = f"relay/test-{secrets.token_hex(4)}/genesys-client"
    parameters = {
        "Stage": "local",
        "GenesysOpenMessagingIntegrationIds": integration.id,
        "GenesysWebhookIntegrationIds": on_8443.id,
        "GenesysCredentialsSecretName": credentials,
        "AllowedTargetPorts": "443,8443",
    }
    endpoint = aws_stack.endpoint_url
    deployed = create_resources(load_template(parameters=parameters), endpoint, f"{aws_stack.prefix}p")
    stack = f"{deployed.prefix}-stack"
    register_stack(deployed, stack)
    client = {"current": genesys.client_secret, "keyId": genesys.client_id}
    local_client("secretsmanager", endpoint).create_secret(Name=credentials, SecretString=json.dumps(client))
    for name in ("GENESYS_CLIENT_ID", "GENESYS_CLIENT_SECRET", *GENESYS_IDS, "ALLOWED_TARGET_PORTS"):
        monkeypatch.delenv(name, raising=False)
    forget_cached_configuration()

    # When the operator syncs naming only the stack
    sync_code = main(["targets", "sync", "--stack-name", stack])
    report = json.loads(capsys.readouterr().out)

    # Then the target is judged by the stack's ports, as its functions judge it: stored
    assert (sync_code, report["rejected"], report["targets"]) == (0, [], [on_8443.id])

    # And its check gets past the URL policy too (this machine reaches no public address: unreachable,
    # but not refused)
    main(["targets", "check", on_8443.id, "--stack-name", stack, "--timeout", "1", "--format", "json"])
    (checked,) = _json_lines(capsys.readouterr().out)
    assert "not allowed" not in (checked["error"] or ""), checked


def test_sync_rejects_unusable_urls_and_syncs_the_targets_after_them(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two targets read before the good ones, whose hosts have an empty and an over-long label
    integration = FIXTURES.integrations[0]
    bad = [
        FixtureTarget(
            id="0c0c0c0c-0000-4000-8000-000000000001", name="empty", url="https://hooks..example.com/hook"
        ),
        FixtureTarget(
            id="0c0c0c0c-0000-4000-8000-000000000002", name="long", url=f"https://{'a' * 64}.example.com/"
        ),
    ]
    good = [t.id for t in integration.targets]
    genesys.load(
        Fixtures(integrations=[integration.model_copy(update={"targets": [*bad, *integration.targets]})])
    )
    monkeypatch.setenv("GENESYS_WEBHOOK_INTEGRATION_IDS", ",".join([*(t.id for t in bad), *good]))
    forget_cached_configuration()

    # When the operator syncs
    code = main(["targets", "sync"])

    # Then both bad targets are rejected with a reason, the good ones after them are stored, exit 1
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [r["id"] for r in report["rejected"]] == [t.id for t in bad]
    assert all(r["reason"] for r in report["rejected"])
    assert report["targets"] == good
    stored = target_store(get_settings(), cache_ttl_seconds=0).get(integration.id)
    assert stored is not None and sorted(t.target_id for t in stored.targets) == sorted(good)


def test_sync_fails_the_run_with_one_error_line_when_the_token_answer_is_unusable(
    genesys: FakeGenesys, capsys: pytest.CaptureFixture[str]
) -> None:
    genesys.malform(path=r"^/oauth/token$", times=10)

    code = main(["targets", "sync"])

    captured = capsys.readouterr()
    assert code == 3 and captured.out == ""
    # stderr holds just the one error line: no traceback, no rejection per item
    assert captured.err.splitlines() == [
        "relay targets sync: GenesysLoginError: Genesys token endpoint answered with an unreadable body"
    ]
    assert genesys.count(r"^/oauth/token$") == 1


def test_list_shows_filters_rate_limit_rate_now_and_auth_type_never_a_secret(
    local_settings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three targets: one filtered and limited to 20/s whose receiver answered 429 a moment ago,
    # one without a limit that got an implicit one from its 429s, and one left alone
    store = target_store(get_settings(), cache_ttl_seconds=0)
    store.put_integration(Integration(integration_id=INTEGRATION_ID, name="list"))
    store.put_target(
        Target(
            integration_id=INTEGRATION_ID,
            target_id="t-limited",
            name="limited",
            url="https://limited.example.com/hook",
            security=TargetSecurity(type=SecurityType.BEARER, secret_name="relay/x/auth/t-limited"),
            filters=EventFilters.model_validate({"types": ["Text"], "directions": ["Outbound"]}),
            rate_limit=RateLimit(per_second=20, burst=40),
        )
    )
    _put_plain_targets(store, "t-implicit", "t-plain")
    buckets = rate_limit_store(get_settings())
    now = time.time()
    buckets.cut(
        rate_key(INTEGRATION_ID, "t-limited"), now=now, rate=15.0, floor_until=now + 60, seen_cut_at=None
    )
    buckets.join(
        rate_key(INTEGRATION_ID, "t-implicit"), now=now, contribution=6.0, floor_until=0.0, fresh_since=0.0
    )

    # When the operator lists them, as JSON and as a table
    assert main(["targets", "list", "--format", "json"]) == 0
    [entry] = _json_lines(capsys.readouterr().out)
    assert main(["targets", "list"]) == 0
    table = capsys.readouterr().out

    # Then each shows its filters, limit, the rate it may be sent at now and why, and its auth type
    by_id = {t["targetId"]: t for t in entry["targets"]}
    limited, implicit, plain = by_id["t-limited"], by_id["t-implicit"], by_id["t-plain"]
    assert limited["filters"] == {"types": ["Text"], "directions": ["Outbound"]}
    assert limited["rateLimit"] == {"perSecond": 20.0, "burst": 40}
    assert limited["rateState"] == "adaptive" and limited["effectiveRate"] == pytest.approx(15.0, abs=0.5)
    assert limited["retryAfterUntil"] is not None
    assert (limited["security"], limited["auth"]) == ("bearer", "****")
    assert implicit["rateLimit"] is None and implicit["rateState"] == "adaptive"
    assert implicit["effectiveRate"] == pytest.approx(6.0, abs=0.5)
    assert (plain["filters"], plain["rateLimit"], plain["rateState"], plain["effectiveRate"]) == (
        {},
        None,
        "unlimited",
        None,
    )
    limited_row = next(line for line in table.splitlines() if "t-limited" in line)
    assert "types=Text directions=Outbound" in limited_row and "20/s burst 40" in limited_row
    assert "(429: cut)" in limited_row and "bearer ****" in limited_row
    assert "relay/x/auth" not in table + json.dumps(entry)  # not even the secret's name


def _put_plain_targets(store: Any, *target_ids: str) -> None:
    """Targets of INTEGRATION_ID with a name and a URL, nothing more configured."""
    for target_id in target_ids:
        url = "https://x.example.com/"
        store.put_target(Target(integration_id=INTEGRATION_ID, target_id=target_id, name=target_id, url=url))


def test_list_table_says_a_target_is_held_quiet_by_a_retry_after(
    local_settings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a target whose receiver answered 429 with a Retry-After of an hour, and one it did not
    store = target_store(get_settings(), cache_ttl_seconds=0)
    store.put_integration(Integration(integration_id=INTEGRATION_ID, name="quiet"))
    _put_plain_targets(store, "t-quiet", "t-plain")
    now = time.time()
    rate_limit_store(get_settings()).join(
        rate_key(INTEGRATION_ID, "t-quiet"),
        now=now,
        contribution=6.0,
        floor_until=now + 3600,
        fresh_since=0.0,
    )

    # When the operator lists the targets as a table
    assert main(["targets", "list", "--format", "json"]) == 0
    [entry] = _json_lines(capsys.readouterr().out)
    assert main(["targets", "list"]) == 0
    table = capsys.readouterr().out

    # Then the quiet target's row says until when it is sent nothing, not only its rate
    until = {t["targetId"]: t["retryAfterUntil"] for t in entry["targets"]}
    assert until["t-quiet"] is not None and until["t-plain"] is None
    quiet_row = next(line for line in table.splitlines() if "t-quiet" in line)
    plain_row = next(line for line in table.splitlines() if "t-plain" in line)
    assert f"quiet until {until['t-quiet']}" in quiet_row
    assert "quiet" not in plain_row
    # spelled as `relay breaker status` spells the same quiet (UTC with a Z, whole seconds)
    assert main(["breaker", "status", "t-quiet", "--format", "json"]) == 0
    [status] = _json_lines(capsys.readouterr().out)
    assert until["t-quiet"] == status["retryAfterUntil"] and until["t-quiet"].endswith("Z")


def test_list_json_shows_how_each_target_is_delivered(
    local_settings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an ordered target that blocks when exhausted, with its own retry matrix and timeouts
    stored_alone(
        target_id="t-ordered",
        name="ordered",
        url="https://ordered.example.com/hook",
        ordering=Ordering.CONVERSATION,
        on_exhausted=OnExhausted.BLOCK,
        retry_matrix=RetryMatrix(attempts=5, base_interval_ms=500, max_interval_ms=8_000, multiplier=3),
        connect_timeout_seconds=2.5,
    )

    # When the operator lists it as JSON
    assert main(["targets", "list", "--format", "json"]) == 0
    [entry] = _json_lines(capsys.readouterr().out)

    # Then the list says how it is delivered, as configured (no timeout set: null, the default)
    [shown] = entry["targets"]
    assert (shown["ordering"], shown["onExhausted"]) == ("conversation", "block")
    assert shown["retryMatrix"] == {
        "attempts": 5,
        "baseIntervalMs": 500,
        "maxIntervalMs": 8_000,
        "multiplier": 3.0,
    }
    assert (shown["connectTimeoutSeconds"], shown["readTimeoutSeconds"]) == (2.5, None)


def stored_alone(*, target_id: str, name: str, url: str, **fields: Any) -> None:
    """One integration in the TargetsTable, with this one target (``fields``: its other settings)."""
    store = target_store(get_settings(), cache_ttl_seconds=0)
    store.put_integration(Integration(integration_id=INTEGRATION_ID, name="one target"))
    store.put_target(Target(integration_id=INTEGRATION_ID, target_id=target_id, name=name, url=url, **fields))


def test_list_shows_control_characters_in_a_name_escaped_in_the_table_and_as_they_are_in_json(
    local_settings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a target whose name (from Genesys) holds a line break, a fake row and a terminal escape
    name = "evil\nINTEGRATION-FAKE  ROW\x1b[31mred\u202e"
    stored_alone(target_id="t-evil", name=name, url="https://x.example.com/")

    # When it is listed as a table and as JSON, and disabled (whose message names it)
    assert main(["targets", "list"]) == 0
    table = capsys.readouterr().out
    assert main(["targets", "list", "--format", "json"]) == 0
    [entry] = _json_lines(capsys.readouterr().out)
    assert main(["targets", "disable", "t-evil"]) == 0
    switched = capsys.readouterr().out

    # Then the table is its header and one row, the name escaped in it, and nothing reaches the terminal raw
    header, row = table.splitlines()
    assert header.startswith("INTEGRATION") and r"evil\nINTEGRATION-FAKE  ROW\x1b[31mred\u202e" in row
    assert r"(evil\nINTEGRATION-FAKE  ROW\x1b[31mred\u202e) disabled" in switched
    assert len(switched.splitlines()) == 1
    assert not {"\x1b", "\u202e"} & set(table + switched)
    # And JSON keeps the name as it is
    assert entry["targets"][0]["name"] == name


@pytest.mark.parametrize(
    ("url", "tokens", "shown"),
    [
        (
            "https://x.example.com/hook?api_key=QTOKEN-0123456789&v=2",
            ["QTOKEN-0123456789"],
            "https://x.example.com/hook?api_key=****&v=2",
        ),
        (  # a token as a query part without a name, and one in the fragment
            "https://x.example.com/hook?v=2&BARETOKEN-0123456789#access_token=FRAGTOKEN-0123456789",
            ["BARETOKEN-0123456789", "FRAGTOKEN-0123456789"],
            "https://x.example.com/hook?v=2&****#access_token=****",
        ),
    ],
    ids=["named", "bare-and-fragment"],
)
def test_list_and_check_mask_a_token_in_the_urls_query(
    local_settings: None, capsys: pytest.CaptureFixture[str], url: str, tokens: list[str], shown: str
) -> None:
    # Given a target whose URL carries a token in its query (and a short, plain value beside it)
    stored_alone(target_id="t-query", name="query", url=url)

    # When it is listed as a table and as JSON, and checked (its URL is refused here: no network)
    assert main(["targets", "list"]) == 0
    table = capsys.readouterr().out
    assert main(["targets", "list", "--format", "json"]) == 0
    [entry] = _json_lines(capsys.readouterr().out)
    main(["targets", "check", "t-query", "--format", "json", "--timeout", "0.3"])
    [checked] = _json_lines(capsys.readouterr().out)

    # Then the token is masked everywhere and the rest of the URL is as stored
    assert not [token for token in tokens if token in table + json.dumps(entry) + json.dumps(checked)]
    assert shown in table and entry["targets"][0]["url"] == shown and checked["url"] == shown


def test_list_masks_a_token_in_the_oauth_token_urls_query(
    local_settings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an OAuth target whose token URL carries a secret in its query, as a target URL may
    secret = "TokenUrlQuerySecret-5566"
    oauth2 = OAuth2Client(
        token_url=f"https://idp.example.com/token?client_assertion={secret}&v=2", client_id="relay"
    )
    security = TargetSecurity(type=SecurityType.OAUTH2, secret_name="relay/x/auth/t-q", oauth2=oauth2)
    stored_alone(target_id="t-q", name="oauth query", url="https://x.example.com/hook", security=security)

    # When it is listed as a table and as JSON
    assert main(["targets", "list"]) == 0
    table = capsys.readouterr().out
    assert main(["targets", "list", "--format", "json"]) == 0
    [entry] = _json_lines(capsys.readouterr().out)

    # Then the secret shows nowhere, and the token URL is shown masked as a target URL is
    assert secret not in table + json.dumps(entry)
    assert (
        entry["targets"][0]["oauth2"]["tokenUrl"] == "https://idp.example.com/token?client_assertion=****&v=2"
    )

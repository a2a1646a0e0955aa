"""mTLS: HttpSender against a loopback HTTPS receiver that requires a client certificate signed by a
test CA (all certificates made in the test with ``cryptography``; the sender trusts the test CA the
way the local stack does, never by switching verification off)."""

from __future__ import annotations

import os
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from support.secure_peers import HttpsReceiver, Pki, key_body

from relay.adapters.http import HttpSender
from relay.adapters.tls import TlsTrust
from relay.logic.url_policy import UrlPolicy
from relay.models.http import HttpResult

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def sender(pki: Pki) -> Iterator[HttpSender]:
    http = HttpSender(
        pool_size=4,
        body_limit_bytes=100,
        endpoint_check=UrlPolicy(allow_loopback=True).check_endpoint,
        trust=TlsTrust(pki.ca_pem),
    )
    yield http
    http.close()


def _post(sender: HttpSender, url: str, certificate: str | None = None) -> HttpResult:
    return sender.send(
        "POST",
        f"{url}/hooks/crm",
        body=b"{}",
        headers={"Content-Type": "application/json"},
        connect_timeout=5,
        read_timeout=5,
        client_certificate=SecretStr(certificate) if certificate else None,
    )


def test_a_receiver_requiring_a_client_certificate_gets_the_request_only_with_one(
    pki: Pki, sender: HttpSender
) -> None:
    with HttpsReceiver(pki, client_certificates=ssl.CERT_REQUIRED) as receiver:
        # When a request goes without a client certificate, then one with it
        without = _post(sender, receiver.url)
        with_it = _post(sender, receiver.url, pki.client_bundle("relay-mtls"))

    # Then the first never got past the handshake (a connection error: retried, never delivered)
    assert (without.status, without.error_code) == (None, "connection-error")
    assert receiver.refused_handshakes == 1
    # ... which says why, so an operator can tell it from an untrusted server certificate
    assert without.error is not None and "CERTIFICATE_REQUIRED" in without.error.upper()
    # and the second was delivered, the receiver seeing the relay's certificate
    assert (with_it.status, with_it.error_code) == (200, None)
    assert [r.client_certificate for r in receiver.requests] == ["relay-mtls"]


def test_a_client_certificate_gets_connections_of_its_own(pki: Pki, sender: HttpSender) -> None:
    # Given a keep-alive receiver that asks for a client certificate without requiring one, and two
    # targets on it: one with a client certificate, one without
    bundle = pki.client_bundle("crm-target")
    with HttpsReceiver(pki, client_certificates=ssl.CERT_OPTIONAL) as receiver:
        # When their requests alternate
        results = [_post(sender, receiver.url, certificate) for certificate in (bundle, None, bundle, None)]

    # Then each request went out on a connection made for it: the certificate only where it belongs,
    # and the certificate's connection reused for its next request (pooled, not one per request)
    assert [r.status for r in results] == [200, 200, 200, 200]
    seen = [(r.client_certificate, r.connection) for r in receiver.requests]
    assert [certificate for certificate, _ in seen] == ["crm-target", None, "crm-target", None]
    assert seen[0][1] == seen[2][1] and seen[1][1] == seen[3][1] and seen[0][1] != seen[1][1]


def test_a_server_certificate_outside_the_trusted_cas_is_refused(pki: Pki) -> None:
    # Given a sender that trusts certifi's CAs only (a deployed relay) and the receiver of a test CA
    http = HttpSender(
        pool_size=1, body_limit_bytes=100, endpoint_check=UrlPolicy(allow_loopback=True).check_endpoint
    )
    try:
        with HttpsReceiver(pki, client_certificates=ssl.CERT_NONE) as receiver:
            result = _post(http, receiver.url, pki.client_bundle())
    finally:
        http.close()

    assert (result.status, result.error_code) == (None, "connection-error")
    assert result.error is not None and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert receiver.requests == []


def test_no_file_holding_the_key_remains_after_connecting(
    pki: Pki, sender: HttpSender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a temporary directory of the test's own for the process (where tempfile puts what the
    # sender could write; walking the machine's whole /tmp, other tests' files and build trees
    # included, took 40 s)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    started = time.time() - 1
    bundle = pki.client_bundle()
    with HttpsReceiver(pki) as receiver:
        assert _post(sender, receiver.url, bundle).status == 200

    # No file written there or in shared memory since the test started holds the key (its first PEM
    # line: 64 characters of the key's base64)
    first_line = key_body(bundle)[:64].encode()
    written = [*_files_since(tmp_path, started), *_files_since(Path("/dev/shm"), started)]
    assert [path for path in written if first_line in _bytes_of(path)] == []


def _files_since(root: Path, since: float) -> Iterator[Path]:
    for folder, _, names in os.walk(root, onerror=lambda _: None):
        for name in names:
            path = Path(folder, name)
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime >= since:
                    yield path
            except OSError:
                continue


def _bytes_of(path: Path) -> bytes:
    try:
        return path.read_bytes()[:1_000_000]
    except OSError:
        return b""

"""mTLS client certificates: the PEM bundle is checked and ordered for OpenSSL, and loaded into an
SSLContext without leaving the key readable on disk (relay.models.client_certificate, relay.adapters.tls).

Certificates are made in the test with ``cryptography`` (support.secure_peers.Pki)."""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from support.secure_peers import Pki, key_body

from relay.adapters.tls import TlsContexts, TlsTrust
from relay.errors import ConfigurationError
from relay.models.client_certificate import (
    InvalidClientCertificate,
    load_client_certificate,
    parse_client_certificate,
)
from relay.settings import Settings

BEGIN_KEY = "-----BEGIN PRIVATE KEY-----"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def _split(bundle: str) -> tuple[str, str]:
    """(certificate PEM, key PEM) of a bundle the PKI made (certificate first)."""
    at = bundle.index(BEGIN_KEY)
    return bundle[:at], bundle[at:]


def test_a_bundle_in_any_order_is_loaded_certificate_first_then_chain_then_key(pki: Pki) -> None:
    # Given a bundle with the key first, then an intermediate, then the client certificate
    certificate, key = _split(pki.client_bundle("relay"))
    bundle = key + pki.ca_pem + certificate

    parsed = parse_client_certificate(bundle)

    # Then the certificate that matches the key comes first, the chain after it, the key last
    text = parsed.pem.decode()
    assert text.startswith(certificate)
    assert text.index(pki.ca_pem) == len(certificate)
    assert text.rstrip().endswith("-----END PRIVATE KEY-----")
    assert key_body(text) == key_body(key)


@pytest.mark.parametrize("line_end", ["\r\n", "\r"], ids=["crlf", "cr-only"])
def test_a_bundle_with_other_line_endings_is_read_as_written(pki: Pki, line_end: str) -> None:
    # Given a bundle saved with Windows or old Mac line endings
    bundle = pki.client_bundle("relay")

    parsed = parse_client_certificate(bundle.replace("\n", line_end), now=datetime.datetime.now(datetime.UTC))

    # Then it is the same bundle, in the line endings OpenSSL loads
    assert parsed.pem == parse_client_certificate(bundle).pem


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda pki: _split(pki.client_bundle())[0], "expected one private key in the PEM bundle, found 0"),
        (lambda pki: pki.client_bundle() + _split(pki.client_bundle())[1], "found 2"),
        (
            lambda pki: _split(pki.client_bundle())[0] + _split(pki.client_bundle())[1],
            "matches its private key",
        ),
        (lambda pki: "not a PEM bundle at all", "found 0"),
        (
            lambda pki: (
                _split(pki.client_bundle())[0] + BEGIN_KEY + "\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
            ),
            "does not parse",
        ),
        (
            lambda pki: (
                _split(pki.client_bundle())[0]
                + "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
            ),
            "encrypted",
        ),
    ],
    ids=["no-key", "two-keys", "key-of-another-certificate", "garbage", "unreadable-key", "encrypted-key"],
)
def test_an_unusable_bundle_is_refused_with_a_reason_that_never_quotes_it(
    pki: Pki, build: object, reason: str
) -> None:
    bundle = build(pki)  # type: ignore[operator]

    with pytest.raises(InvalidClientCertificate) as refused:
        parse_client_certificate(bundle)

    assert reason in str(refused.value)
    assert "-----BEGIN" not in str(refused.value) and "MII" not in str(refused.value)


def test_an_expired_certificate_is_refused_when_the_time_is_given(pki: Pki) -> None:
    bundle = pki.client_bundle(valid_days=1)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)

    parse_client_certificate(bundle)  # the dispatcher's use: the server judges expiry
    with pytest.raises(InvalidClientCertificate, match="expired"):
        parse_client_certificate(bundle, now=later)


def test_a_certificate_not_valid_yet_is_refused_when_the_time_is_given(pki: Pki) -> None:
    # A certificate issued now, judged as of yesterday: as one issued for tomorrow is judged today
    bundle = pki.client_bundle(valid_days=1)
    earlier = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)

    with pytest.raises(InvalidClientCertificate, match="not valid before"):
        parse_client_certificate(bundle, now=earlier)


@pytest.mark.parametrize(("days", "says"), [(2, "expired at"), (-1, "not valid before")])
def test_a_refused_validity_spells_its_time_in_utc_with_z_as_every_operator_output_does(
    pki: Pki, days: int, says: str
) -> None:
    # Given a certificate judged after it expired, or before it is valid
    bundle = pki.client_bundle(valid_days=1)
    judged = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)

    # Then the refusal names the time as relay list and status outputs do: "2026-12-03T15:12:38Z"
    with pytest.raises(InvalidClientCertificate, match=rf"{says} \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"):
        parse_client_certificate(bundle, now=judged)


def test_a_bundle_openssl_will_not_load_is_refused_when_checked_for_sync(pki: Pki) -> None:
    # Given a well-formed, current bundle whose key OpenSSL refuses at its default security level
    # (RSA under 2048 bits): every delivery would fail to load it and be dead-lettered
    from cryptography.hazmat.primitives.asymmetric import rsa

    bundle = pki.client_bundle(key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    now = datetime.datetime.now(datetime.UTC)

    # When config sync (or the fixtures file) checks it, it is refused with OpenSSL's reason
    with pytest.raises(InvalidClientCertificate) as refused:
        parse_client_certificate(bundle, now=now)
    assert "OpenSSL" in str(refused.value) and "EE_KEY_TOO_SMALL" in str(refused.value)
    assert "-----BEGIN" not in str(refused.value) and "MII" not in str(refused.value)

    # and the dispatcher, given it anyway, says why too
    with pytest.raises(ConfigurationError, match="EE_KEY_TOO_SMALL"):
        TlsContexts().for_client(SecretStr(bundle))

    # while a 2048-bit RSA key passes both
    usable = pki.client_bundle(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    parse_client_certificate(usable, now=now)
    TlsContexts().for_client(SecretStr(usable))


def test_a_certificate_not_for_client_authentication_is_refused_when_checked_for_sync(pki: Pki) -> None:
    # Given a current, loadable bundle whose certificate's extended key usage is serverAuth only: TLS
    # terminators refuse it as a client certificate (SSLV3_ALERT_UNSUPPORTED_CERTIFICATE), so every
    # delivery to its target would fail its handshake and be dead-lettered
    from cryptography.x509.oid import ExtendedKeyUsageOID

    bundle = pki.client_bundle(usage=ExtendedKeyUsageOID.SERVER_AUTH)
    now = datetime.datetime.now(datetime.UTC)

    # When config sync (or the fixtures file) checks it, it is refused, saying what it is for instead
    with pytest.raises(InvalidClientCertificate, match="not for client authentication") as refused:
        parse_client_certificate(bundle, now=now)
    assert "serverAuth" in str(refused.value) and "-----BEGIN" not in str(refused.value)

    # while a clientAuth one, or one for any purpose, passes
    parse_client_certificate(pki.client_bundle(), now=now)
    parse_client_certificate(pki.client_bundle(usage=ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE), now=now)


def test_a_certificate_whose_key_usage_forbids_signing_is_refused_when_checked_for_sync(pki: Pki) -> None:
    # Given a clientAuth certificate whose key usage allows key encipherment only: a client proves its
    # key by signing, and TLS terminators refuse it (SSLV3_ALERT_UNSUPPORTED_CERTIFICATE)
    from cryptography import x509

    def key_usage(*, digital_signature: bool, key_agreement: bool = False) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=digital_signature,
            content_commitment=False,
            key_encipherment=True,
            data_encipherment=False,
            key_agreement=key_agreement,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )

    now = datetime.datetime.now(datetime.UTC)
    bundle = pki.client_bundle(key_usage=key_usage(digital_signature=False))

    with pytest.raises(InvalidClientCertificate, match="key usage does not allow"):
        parse_client_certificate(bundle, now=now)

    # while one that may sign passes
    parse_client_certificate(pki.client_bundle(key_usage=key_usage(digital_signature=True)), now=now)


class RecordingContext:
    """An SSLContext stand-in that looks at what it is asked to load, while it exists, then loads it
    into a real context (the TLS library is the boundary here)."""

    def __init__(self) -> None:
        self.real = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.path = ""
        self.link = ""
        self.file_mode = 0
        self.directory_mode = 0
        self.content = b""

    def load_cert_chain(self, certfile: str) -> None:
        self.path = certfile
        self.link = os.readlink(certfile) if certfile.startswith("/proc/") else ""
        self.file_mode = stat.S_IMODE(os.stat(certfile).st_mode)
        self.directory_mode = stat.S_IMODE(os.stat(os.path.dirname(certfile)).st_mode)
        self.content = Path(certfile).read_bytes()
        self.real.load_cert_chain(certfile)


def test_the_key_is_loaded_from_anonymous_memory_and_gone_right_after(pki: Pki) -> None:
    bundle = parse_client_certificate(pki.client_bundle()).pem
    context = RecordingContext()

    load_client_certificate(context, bundle)

    assert context.content == bundle
    if hasattr(os, "memfd_create"):  # Linux, so Lambda
        # It was read from a memory file that no file system holds, through this process's descriptor
        assert context.path.startswith("/proc/self/fd/")
        assert context.link.startswith("/memfd:relay-client-certificate")
    else:  # elsewhere: a private file (next test)
        assert (context.file_mode, context.directory_mode) == (0o600, 0o700)
    # and nothing is left to open: the descriptor is closed, or the file and its directory removed
    with pytest.raises(OSError):
        os.stat(context.path)


def test_without_memfd_the_key_file_is_private_while_it_exists_and_removed_at_once(
    pki: Pki, tmp_path: Path
) -> None:
    bundle = parse_client_certificate(pki.client_bundle()).pem
    context = RecordingContext()

    load_client_certificate(context, bundle, use_memfd=False, directory=str(tmp_path))

    assert context.content == bundle
    assert (context.file_mode, context.directory_mode) == (0o600, 0o700)
    assert Path(context.path).is_relative_to(tmp_path)
    assert list(tmp_path.iterdir()) == []  # file and directory removed


def test_an_unusable_client_certificate_is_a_configuration_error_without_the_bundle(pki: Pki) -> None:
    certificate, _ = _split(pki.client_bundle())

    with pytest.raises(ConfigurationError) as refused:
        TlsContexts().for_client(SecretStr(certificate))

    assert "client certificate unusable" in str(refused.value)
    assert "-----BEGIN" not in str(refused.value)


def test_one_context_per_client_certificate_reused_until_the_certificate_changes(pki: Pki) -> None:
    contexts = TlsContexts()
    first, rotated = SecretStr(pki.client_bundle()), SecretStr(pki.client_bundle())

    assert contexts.for_client(first) is contexts.for_client(first)
    assert contexts.for_client(rotated) is not contexts.for_client(first)
    assert contexts.for_client(first) is not contexts.default


def test_extra_trusted_cas_are_for_the_local_stack_only(pki: Pki, tmp_path: Path) -> None:
    ca_file = pki.ca_file()
    deployed = Settings.model_validate({"RELAY_LOCAL_TRUSTED_CAS": str(ca_file)})
    local = Settings.model_validate(
        {"RELAY_LOCAL_TRUSTED_CAS": str(ca_file), "RELAY_ALLOW_LOOPBACK_TARGETS": "true"}
    )

    with pytest.raises(ConfigurationError, match="local stack only"):
        TlsTrust.from_settings(deployed)
    context = TlsTrust.from_settings(local).new_context()

    # The test CA is trusted besides certifi's bundle, and verification stays on
    subjects = [dict(x[0] for x in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "relay test CA"} in subjects
    assert len(subjects) > 1
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)

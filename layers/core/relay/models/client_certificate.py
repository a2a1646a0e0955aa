"""A client certificate for mutual TLS: the certificate, its chain and its private key as one PEM bundle.

A target's ``clientCertificate`` credential (stored as the ``current`` value of Secrets Manager
``<prefix>/mtls/<targetId>``) is a PEM bundle: the client certificate, any intermediate certificates,
and the certificate's private key, unencrypted (PKCS #8, PKCS #1 or SEC 1), in any order. Secrets
Manager encrypts it at rest; a passphrase would only move the secret elsewhere.

``parse_client_certificate`` checks a bundle (config sync refuses one that does not parse, has no key
or several, whose key matches none of its certificates, or whose certificate has expired or is not
valid yet) and puts it in the order OpenSSL loads: the certificate that matches the key, the rest of
the chain, the key.
Checked for config sync (``now`` given), the bundle is also loaded into an OpenSSL context as the
dispatcher loads it: a well-formed bundle OpenSSL refuses at its default security level (an RSA key
under 2048 bits, say) was stored, and every delivery to its target failed to load it and was
dead-lettered. ``load_client_certificate`` is that loading, which never puts the key on a file system.
Errors are ``InvalidClientCertificate`` with messages that never quote the bundle.

``cryptography`` is imported inside the function: only config sync and targets with mTLS need it.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from relay.models.timestamps import iso_utc

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_KEY_BLOCKS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}


class InvalidClientCertificate(ValueError):
    """The bundle is not a usable client certificate; the message says why without quoting it."""


@dataclass(frozen=True)
class ClientCertificate:
    """A checked bundle: ``pem`` is the certificate, its chain and the key (PKCS #8), in that order."""

    pem: bytes
    not_after: datetime


def parse_client_certificate(bundle: str, *, now: datetime | None = None) -> ClientCertificate:
    """The bundle, checked and in load order. ``now`` (config sync's check): also refuse a certificate
    expired by then, or not valid yet, or not for client authentication (an extended key usage without
    clientAuth, a key usage without digitalSignature), or a bundle OpenSSL will not load."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    # Any line ending an editor may have saved (CR-only was read as "found 0" private keys).
    text = bundle.replace("\r\n", "\n").replace("\r", "\n")
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text.encode("utf-8", "replace"))]
    if any(kind == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block for kind, block in blocks):
        raise InvalidClientCertificate(
            "the private key is encrypted: store it unencrypted (Secrets Manager encrypts it at rest)"
        )
    keys = [block for kind, block in blocks if kind in _KEY_BLOCKS]
    if len(keys) != 1:
        raise InvalidClientCertificate(f"expected one private key in the PEM bundle, found {len(keys)}")
    try:
        certificates = [x509.load_pem_x509_certificate(b) for kind, b in blocks if kind == b"CERTIFICATE"]
        key = serialization.load_pem_private_key(keys[0], password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidClientCertificate(
            "the PEM bundle holds a certificate or key that does not parse"
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    leaf = next(
        (c for c in certificates if c.public_key().public_bytes(serialization.Encoding.DER, spki) == public),
        None,
    )
    if leaf is None:
        raise InvalidClientCertificate("no certificate in the PEM bundle matches its private key")
    if now is not None and leaf.not_valid_after_utc <= now:
        raise InvalidClientCertificate(
            f"the client certificate expired at {iso_utc(leaf.not_valid_after_utc, 'seconds')}"
        )
    if now is not None and leaf.not_valid_before_utc > now:
        # Presented now, every handshake would fail; refused, the last good config stays until then.
        raise InvalidClientCertificate(
            f"the client certificate is not valid before {iso_utc(leaf.not_valid_before_utc, 'seconds')}"
        )
    if now is not None and (usages := _extended_key_usages(leaf)) is not None:
        # TLS terminators check a client certificate's purpose: one for servers only is refused in every
        # handshake (SSLV3_ALERT_UNSUPPORTED_CERTIFICATE), and its target's deliveries dead-lettered.
        if not {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(usages):
            named = ", ".join(_usage_name(oid) for oid in usages) or "none"
            raise InvalidClientCertificate(
                f"the client certificate is not for client authentication (its extended key usage: {named})"
            )
    if now is not None and not _may_sign(leaf):
        # OpenSSL's check of a client certificate's purpose: a key usage without digitalSignature (or
        # keyAgreement) is refused in the handshake, as above.
        raise InvalidClientCertificate(
            "the client certificate's key usage does not allow signing (digitalSignature), which a TLS "
            "client does to prove its key"
        )
    chain = [leaf, *(c for c in certificates if c is not leaf)]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain) + key_pem
    if now is not None:
        try:
            load_client_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), pem)
        except ssl.SSLError as exc:
            raise InvalidClientCertificate(load_refusal(exc)) from None
    return ClientCertificate(pem=pem, not_after=leaf.not_valid_after_utc)


def _extended_key_usages(certificate: Any) -> list[Any] | None:
    """The purposes (object identifiers) a certificate's extended key usage names, or None without
    that extension (any purpose) or when its extensions do not parse (the TLS terminator judges it)."""
    from cryptography import x509

    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return list(usage)


def _may_sign(certificate: Any) -> bool:
    """Whether the key usage, if the certificate has one, has digitalSignature or keyAgreement (what
    OpenSSL asks of a TLS client's certificate); True when it has none, or it does not parse."""
    from cryptography import x509

    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return True
    return bool(usage.digital_signature or usage.key_agreement)


def _usage_name(oid: Any) -> str:
    """``serverAuth``, ``clientAuth``, ...; the dotted form for one cryptography does not name."""
    name = getattr(oid, "_name", None)
    return name if isinstance(name, str) and name != "Unknown OID" else str(oid.dotted_string)


def load_refusal(exc: ssl.SSLError) -> str:
    """Why OpenSSL would not load a bundle: its reason code (``EE_KEY_TOO_SMALL``, ...), never the
    bundle."""
    reason = exc.reason if isinstance(exc.reason, str) and exc.reason.isidentifier() else "no reason given"
    return f"OpenSSL refused the bundle ({reason}; a key or signature too weak for its security level?)"


class CertChainLoader(Protocol):
    """What loading needs of an ``ssl.SSLContext``."""

    def load_cert_chain(self, certfile: str) -> None: ...


def load_client_certificate(
    context: CertChainLoader, pem: bytes, *, use_memfd: bool = True, directory: str | None = None
) -> None:
    """Load ``pem`` (certificate, chain and key, in that order) into ``context`` from an anonymous
    memory file, or, without one, from a private temporary file removed at once (module docstring).
    ``directory``: where the private file's directory goes (default: the temporary directory)."""
    if use_memfd and hasattr(os, "memfd_create"):
        try:
            fd = os.memfd_create("relay-client-certificate", os.MFD_CLOEXEC)
        except OSError:  # not allowed here (a seccomp filter, an old kernel): use a private file
            pass
        else:
            try:
                _write_all(fd, pem)
                context.load_cert_chain(f"/proc/self/fd/{fd}")
                return
            except FileNotFoundError:  # no /proc mounted: use a private file
                pass
            finally:
                os.close(fd)
    _load_from_private_file(context, pem, directory)


def _load_from_private_file(context: CertChainLoader, pem: bytes, directory: str | None) -> None:
    folder = tempfile.mkdtemp(prefix="relay-mtls-", dir=directory)  # created 0700
    path = os.path.join(folder, "client.pem")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            _write_all(fd, pem)
        finally:
            os.close(fd)
        context.load_cert_chain(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rmdir(folder)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

"""TLS for outbound requests: the certificate authorities the relay trusts and the client certificates
it presents (mTLS), as the ``ssl.SSLContext`` objects of the HTTP sender's connection pools.

**Trust.** certifi's bundle (what requests verifies against by default) and never less: the chain
and the host name are always verified. For the local stack only (RELAY_ALLOW_LOOPBACK_TARGETS),
RELAY_LOCAL_TRUSTED_CAS names a PEM file of further CA certificates (a test's own CA, say), trusted
besides certifi's; set anywhere else it is a ConfigurationError.

**Client certificates.** One context per client certificate, built the first time it is needed and
kept (``TlsContexts``, keyed by a digest of the PEM bundle: a rotated certificate gets a new context).
The HTTP sender keys its routes (and so its kept connections) by context too, so a target's
certificate is presented only on connections made for it, and a connection made without it is never
reused for it.

**The key never reaches a file system** (relay.models.client_certificate.load_client_certificate, which
config sync's check uses too). ``SSLContext.load_cert_chain`` reads only from a path. The
bundle is written to an anonymous memory file (``memfd_create``: Linux, so Lambda) and loaded through
``/proc/self/fd/<n>``: it lives in this process's memory only, is reachable only through this
process's descriptor table (other users cannot open it), and is closed as soon as OpenSSL has read
it. Without memfd (macOS) it goes to a file created 0600 in a fresh 0700 directory under the
temporary directory (Lambda's /tmp is the container's own), and both are removed right after loading.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections import OrderedDict
from pathlib import Path

import certifi
from pydantic import SecretStr
from urllib3.util.ssl_ import create_urllib3_context

from relay.errors import ConfigurationError
from relay.models.client_certificate import (
    InvalidClientCertificate,
    load_client_certificate,
    load_refusal,
    parse_client_certificate,
)
from relay.settings import Settings

# Client-certificate contexts kept per sender: far more than a deployment's mTLS targets.
_KEPT_CONTEXTS = 64


class TlsTrust:
    """The CAs a server certificate must chain to: certifi's, plus ``extra_ca_pem`` (local stack)."""

    def __init__(self, extra_ca_pem: str | None = None) -> None:
        self._extra_ca_pem = extra_ca_pem

    @classmethod
    def from_settings(cls, settings: Settings) -> TlsTrust:
        path = settings.local_trusted_cas
        if not path:
            return cls()
        if not settings.allow_loopback_targets:
            raise ConfigurationError(
                "RELAY_LOCAL_TRUSTED_CAS is for the local stack only (it needs RELAY_ALLOW_LOOPBACK_TARGETS)"
            )
        try:
            return cls(Path(path).read_text(encoding="ascii"))
        except (OSError, UnicodeError) as exc:
            raise ConfigurationError(
                f"RELAY_LOCAL_TRUSTED_CAS: cannot read {path} ({type(exc).__name__})"
            ) from None

    def new_context(self) -> ssl.SSLContext:
        """A client context verifying chain and host name against the trusted CAs."""
        context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)  # check_hostname on, TLS >= 1.2
        context.load_verify_locations(cafile=certifi.where())
        if self._extra_ca_pem:
            try:
                context.load_verify_locations(cadata=self._extra_ca_pem)
            except ssl.SSLError:
                raise ConfigurationError("RELAY_LOCAL_TRUSTED_CAS holds no readable CA certificate") from None
        return context


class TlsContexts:
    """The contexts of one HTTP sender: ``default`` for every connection without a client certificate,
    and one per client certificate (``for_client``). Thread-safe."""

    def __init__(self, trust: TlsTrust | None = None) -> None:
        self._trust = trust or TlsTrust()
        self.default = self._trust.new_context()
        self._clients: OrderedDict[bytes, ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()

    def for_client(self, bundle: SecretStr) -> ssl.SSLContext:
        """The context presenting ``bundle`` (relay.models.client_certificate); ConfigurationError if
        the bundle is unusable (the message never quotes it)."""
        raw = bundle.get_secret_value()
        digest = hashlib.sha256(raw.encode("utf-8", "replace")).digest()
        with self._lock:
            context = self._clients.get(digest)
            if context is not None:
                self._clients.move_to_end(digest)
                return context
        built = self._client_context(raw)  # outside the lock: parsing and loading take milliseconds
        with self._lock:
            context = self._clients.setdefault(digest, built)  # a racing thread's, if it was first
            while len(self._clients) > _KEPT_CONTEXTS:
                self._clients.popitem(last=False)
        return context

    def _client_context(self, raw: str) -> ssl.SSLContext:
        try:
            certificate = parse_client_certificate(raw)
        except InvalidClientCertificate as exc:
            raise ConfigurationError(f"client certificate unusable: {exc}") from None
        context = self._trust.new_context()
        try:
            load_client_certificate(context, certificate.pem)
        except ssl.SSLError as exc:
            raise ConfigurationError(f"client certificate unusable: {load_refusal(exc)}") from None
        return context

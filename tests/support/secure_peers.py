"""Loopback peers for OAuth 2.0 and mutual TLS, and the certificates they need, made in the test.

    pki = Pki.create(tmp_path)                  # a CA, a server certificate for 127.0.0.1/localhost
    client = pki.client_bundle("relay")         # client certificate + key, one PEM bundle (a str)
    with HttpsReceiver(pki, require_client_certificate=True) as receiver: ...
    with TokenEndpoint() as tokens: ...         # client credentials -> bearer tokens, counted

The relay trusts ``pki.ca_pem`` through ``relay.adapters.tls.TlsTrust`` (the local stack's
RELAY_LOCAL_TRUSTED_CAS); verification is never switched off. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.local.loopback import SHUTDOWN_POLL_SECONDS


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Pki:
    """A test CA and what it signed. ``server_context`` serves 127.0.0.1 and localhost."""

    ca_key: ec.EllipticCurvePrivateKey
    ca_certificate: x509.Certificate
    directory: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = cls._builder(_name("relay test CA"), key.public_key(), _name("relay test CA"))
        certificate = certificate.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        certificate = certificate.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        return cls(key, certificate.sign(key, hashes.SHA256()), directory)

    @staticmethod
    def _builder(
        subject: x509.Name,
        public_key: Any,
        issuer: x509.Name,
        *,
        valid_days: float = 1.0,
        starts_in_days: float = 0.0,
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        ends = now + datetime.timedelta(days=valid_days)  # valid_days < 0: expired already
        starts = (
            now + datetime.timedelta(days=starts_in_days)  # > 0: not valid yet
            if starts_in_days > 0
            else min(now - datetime.timedelta(minutes=5), ends - datetime.timedelta(days=1))
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(starts)
            .not_valid_after(max(ends, starts + datetime.timedelta(days=1)))
        )

    @property
    def ca_pem(self) -> str:
        return _pem(self.ca_certificate)

    def ca_file(self) -> Path:
        """The CA certificate in a file (what RELAY_LOCAL_TRUSTED_CAS names)."""
        path = self.directory / "test-ca.pem"
        path.write_text(self.ca_pem)
        return path

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        *,
        valid_days: float = 1.0,
        starts_in_days: float = 0.0,
        sans: list[x509.GeneralName] | None = None,
        key: Any = None,
        key_usage: x509.KeyUsage | None = None,
    ) -> tuple[Any, x509.Certificate]:
        key = key or ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(
                _name(common_name),
                key.public_key(),
                self.ca_certificate.subject,
                valid_days=valid_days,
                starts_in_days=starts_in_days,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                # Python's default verification is strict (VERIFY_X509_STRICT): real certificates carry it
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if key_usage is not None:
            builder = builder.add_extension(key_usage, critical=True)
        return key, builder.sign(self.ca_key, hashes.SHA256())

    def client_bundle(
        self,
        common_name: str = "relay",
        *,
        valid_days: float = 1.0,
        starts_in_days: float = 0.0,
        key: Any = None,
        usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
        key_usage: x509.KeyUsage | None = None,
    ) -> str:
        """A client certificate (clientAuth, or ``usage``) signed by the CA, and its key: one PEM
        bundle (``valid_days`` < 0: expired; ``starts_in_days`` > 0: not valid yet; ``key``: a private
        key of this test's choosing, by default a new P-256 one; ``key_usage``: a KeyUsage extension,
        by default none)."""
        key, certificate = self._issue(
            common_name,
            usage,
            key_usage=key_usage,
            valid_days=valid_days,
            starts_in_days=starts_in_days,
            key=key,
        )
        return _pem(certificate) + _pem_key(key)

    def server_context(self, *, client_certificates: ssl.VerifyMode = ssl.CERT_NONE) -> ssl.SSLContext:
        """A server context for 127.0.0.1 and localhost; ``CERT_REQUIRED``: a client certificate
        signed by the CA is required (``CERT_OPTIONAL``: asked for, not required)."""
        key, certificate = self._issue(
            "localhost",
            ExtendedKeyUsageOID.SERVER_AUTH,
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        chain = self.directory / f"server-{secrets.token_hex(4)}.pem"
        chain.write_text(_pem(certificate) + _pem_key(key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        chain.unlink()
        context.verify_mode = client_certificates
        if client_certificates != ssl.CERT_NONE:
            context.load_verify_locations(cadata=self.ca_pem)
        return context


def key_body(bundle: str) -> str:
    """The base64 body of the private key in a PEM bundle: what must never show up anywhere."""
    start = bundle.index("-----BEGIN PRIVATE KEY-----") + len("-----BEGIN PRIVATE KEY-----")
    return "".join(bundle[start : bundle.index("-----END PRIVATE KEY-----")].split())


class _Served:
    """A server on 127.0.0.1 served from a thread while the ``with`` block runs."""

    def _serve(self, server: ThreadingHTTPServer, name: str) -> None:
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), name=name, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _reply(
    handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


# --- an HTTPS receiver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenRequest:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    client_certificate: str | None  # the presented certificate's common name
    connection: int  # which TLS connection it came on (keep-alive reuses one)
    method: str = "POST"


Answer = Callable[[SeenRequest], tuple[int, bytes]]


class _TlsServer(ThreadingHTTPServer):
    def __init__(self, context: ssl.SSLContext, receiver: HttpsReceiver) -> None:
        self.context = context
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _HttpsHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake happens here, on the request's own thread, not in the accept loop.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self.receiver.note_refused_handshake()
            return
        try:
            self.receiver.note_connection(tls)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class _HttpsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's pools may reuse a connection
    server: _TlsServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        _reply(self, *self._record(self.rfile.read(length)))

    def do_HEAD(self) -> None:  # the answer's status, no body (relay targets check)
        status, _ = self._record(b"")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _record(self, body: bytes) -> tuple[int, bytes]:
        receiver = self.server.receiver
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        seen = SeenRequest(
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            client_certificate=_common_name(peer),
            connection=receiver.connection_number(self.connection),
            method=self.command,
        )
        return receiver.record(seen)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _common_name(peer: Any) -> str | None:
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class HttpsReceiver(_Served):
    """A loopback HTTPS receiver with the PKI's server certificate. ``client_certificates``:
    ``CERT_REQUIRED`` refuses the handshake without a client certificate signed by the CA.
    ``answer(request) -> (status, body)`` decides each answer (default 200)."""

    def __init__(
        self,
        pki: Pki,
        *,
        client_certificates: ssl.VerifyMode = ssl.CERT_REQUIRED,
        answer: Answer | None = None,
    ) -> None:
        self._serve(
            _TlsServer(pki.server_context(client_certificates=client_certificates), self), "https-receiver"
        )
        self.answer: Answer = answer or (lambda request: (200, b'{"ok":true}'))
        self._lock = threading.Lock()
        self.requests: list[SeenRequest] = []
        self.refused_handshakes = 0
        self._connections: dict[int, int] = {}

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def note_refused_handshake(self) -> None:
        with self._lock:
            self.refused_handshakes += 1

    def note_connection(self, tls: socket.socket) -> None:
        with self._lock:
            self._connections[id(tls)] = len(self._connections) + 1

    def connection_number(self, tls: socket.socket) -> int:
        with self._lock:
            return self._connections.get(id(tls), 0)

    def record(self, request: SeenRequest) -> tuple[int, bytes]:
        with self._lock:
            self.requests.append(request)
        return self.answer(request)


# --- an OAuth 2.0 token endpoint -----------------------------------------------------------------------


@dataclass
class TokenRequest:
    form: dict[str, str]
    basic: tuple[str, str] | None  # (client id, client secret) from an Authorization: Basic header


@dataclass
class TokenEndpoint(_Served):
    """A client-credentials token endpoint on http://127.0.0.1 (the local policy admits loopback
    http). Issues ``tok-<n>-<random>`` tokens to ``client_id``/``client_secret`` (Basic or form),
    counts requests, and says whether a token it issued is still good (``valid``).

    ``expires_in`` (None: left out of the answer), ``status`` (answer this instead of a token, with
    ``error`` as its OAuth error code and ``retry_after`` as its Retry-After header when set) and
    ``body`` (answer this 200 body instead) script it."""

    client_id: str = "relay-client"
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_urlsafe(18))
    expires_in: float | None = 3600
    status: int | None = None
    error: str = "temporarily_unavailable"
    retry_after: str | None = None
    body: bytes | None = None
    requests: list[TokenRequest] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                status, body = endpoint._answer(raw, self.headers.get("Authorization"))
                asked = endpoint.retry_after if endpoint.status is not None else None
                _reply(self, status, body, {"Retry-After": asked} if asked else None)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._serve(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "token-endpoint")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/token"

    def valid(self, authorization: str | None) -> bool:
        """``authorization`` is ``Bearer <a token this endpoint issued and has not revoked>``."""
        token = (authorization or "").removeprefix("Bearer ")
        with self._lock:
            return token in self.issued and token not in self.revoked

    def revoke_all(self) -> None:
        with self._lock:
            self.revoked.update(self.issued)

    def _answer(self, raw: str, authorization: str | None) -> tuple[int, bytes]:
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        basic = None
        if authorization and authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            basic = (unquote(user.replace("+", " ")), unquote(password.replace("+", " ")))
        with self._lock:
            self.requests.append(TokenRequest(form, basic))
            if self.status is not None:
                return self.status, json.dumps({"error": self.error}).encode()
            if self.body is not None:
                return 200, self.body
            presented = basic or (form.get("client_id"), form.get("client_secret"))
            if form.get("grant_type") != "client_credentials" or presented != (
                self.client_id,
                self.client_secret,
            ):
                return 401, b'{"error":"invalid_client"}'
            token = f"tok-{len(self.issued) + 1}-{secrets.token_urlsafe(12)}"
            self.issued.append(token)
        doc: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            doc["expires_in"] = self.expires_in
        return 200, json.dumps(doc).encode()

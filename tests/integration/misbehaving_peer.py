"""A loopback HTTP peer that misbehaves on purpose (no tests here).

Each request read on a connection gets the next ``Answer`` for its path: bytes written at once, bytes
trickled one at a time (the server paces its own writes; the tests never sleep), and then the
connection is closed, kept for the next request (keep-alive), or held open without another byte.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Answer:
    head: bytes = b""  # written at once
    trickle: bytes = b""  # then one byte every ``pace`` seconds
    pace: float = 0.2
    after: str = "close"  # "close", "keep-alive" (serve the next request) or "hold" (say nothing more)


def complete(status: int = 200, body: bytes = b"", *, after: str = "keep-alive") -> Answer:
    """A well-formed answer with a Content-Length."""
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    return Answer(head=head, after=after)


@dataclass
class MisbehavingPeer:
    """``answer(method, path)`` decides each request's Answer."""

    answer: Callable[[str, str], Answer]
    tls: ssl.SSLContext | None = None  # serve https with this server context
    # False: answer on the request's head alone, its body left unread (a 401 or 413 before the body)
    read_bodies: bool = True
    requests: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0
    closed: int = 0  # connections this peer has closed (or seen closed)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._closed_changed = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []

    def start(self) -> MisbehavingPeer:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        _quietly(lambda: self._listener.shutdown(socket.SHUT_RDWR))  # wakes the blocked accept()
        self._listener.close()
        with self._lock:
            for conn in self._open:
                _quietly(lambda conn=conn: conn.shutdown(socket.SHUT_RDWR))
        for thread in self._threads:
            thread.join(timeout=10)

    def wait_closed(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until this peer has closed ``count`` connections."""
        with self._closed_changed:
            return self._closed_changed.wait_for(lambda: self.closed >= count, timeout)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._converse(conn)
        finally:
            with self._closed_changed:
                self.closed += 1
                self._closed_changed.notify_all()

    def _converse(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                return
        with conn:
            reader = conn.makefile("rb")
            while not self._stopping.is_set():
                request = _read_request(reader, self.read_bodies)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                answer = self.answer(*request)
                if not self._write(conn, answer):
                    return
                if answer.after == "close":
                    return
                if answer.after == "hold":
                    self._stopping.wait()
                    return

    def _write(self, conn: socket.socket, answer: Answer) -> bool:
        try:
            conn.sendall(answer.head)
            for byte in answer.trickle:
                if self._stopping.wait(answer.pace):
                    return False
                conn.sendall(bytes([byte]))
        except OSError:  # the client gave up (the deadline shut the connection down)
            return False
        return True


def _read_request(reader: io.BufferedReader, read_body: bool = True) -> tuple[str, str] | None:
    try:
        line = reader.readline()
        if not line:
            return None
        method, path, _ = line.decode("latin-1").split(" ", 2)
        length = 0
        while True:
            header = reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length and read_body:
            reader.read(length)
    except (OSError, ValueError):
        return None
    return method, path


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except OSError:
        pass


@contextmanager
def misbehaving_peer(
    answer: Callable[[str, str], Answer], *, tls: ssl.SSLContext | None = None, read_bodies: bool = True
) -> Iterator[MisbehavingPeer]:
    peer = MisbehavingPeer(answer, tls, read_bodies).start()
    try:
        yield peer
    finally:
        peer.stop()


def self_signed_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh certificate for localhost, and the certificate's file (to trust)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "peer.crt", directory / "peer.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file

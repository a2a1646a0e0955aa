"""A loopback HTTP receiver standing in for a downstream target (demo, tests, chaos runs).

    receiver = Receiver(signing_secrets={"/hooks/crm": ["whsec_..."]})
    url = receiver.start()                  # http://127.0.0.1:<port>
    receiver.behaviour = Behaviour(latency_seconds=0.2, fault_rate=0.1)   # change at any time
    ...
    receiver.unique_delivery_ids            # webhook-ids answered 2xx (and kept) at least once
    receiver.stop()

It answers like a careful real receiver: verifies Standard Webhooks signatures when it knows the
path's secrets (401 otherwise), decrypts encrypted envelopes when it knows the key, deduplicates on
``webhook-id``. Scripted behaviour (a ``Behaviour``, per path or for all): fixed latency, a status
sequence, a fault rate (5xx, 429 with Retry-After, timeouts, dropped connections), a hidden rate
limit (429 beyond N requests per second), a down switch, and deliveries acknowledged and then lost
(``lose``: answered 200, kept nowhere, as a receiver whose own storage failed after answering).

``arrived_at`` of each request is when its request line was read, before the receiver's own time;
``received_at`` when it was answered.

Bound to 127.0.0.1 only. ``disable_nagle_algorithm`` avoids the ~40 ms keep-alive artifact of
http.server (headers and body in separate writes meeting delayed ACK).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from relay.json_input import load_json
from relay.local.loopback import LoopbackServer
from relay.receiver_sdk import InvalidDelivery, decrypt_event, verify_signature

Fault = Literal["5xx", "429", "timeout", "drop"]


@dataclass
class Behaviour:
    """How the receiver answers. Mutable; replace or edit it while the receiver runs."""

    latency_seconds: float = 0.0
    # Answered in order, one per request, before falling back to ``status`` and the fault rate.
    status_sequence: deque[int] = field(default_factory=deque)
    status: int = 200
    fault_rate: float = 0.0
    faults: tuple[Fault, ...] = ("5xx",)
    # The Retry-After of a 429 (0: none sent).
    retry_after_seconds: int = 1
    # A limit the receiver keeps to itself: beyond this many requests per second (a token bucket
    # holding one second's worth) it answers 429.
    hidden_limit_per_second: float | None = None
    # A "timeout" fault holds the request this long before answering 200 (past any sane read timeout).
    hang_seconds: float = 30.0
    # This share of deliveries (chosen by their webhook-id, so the same ones every run) has its first
    # request held like a "timeout" fault; their retries are answered: a receiver that times out
    # now and then, whose records each need a known number of attempts.
    first_try_hang_rate: float = 0.0
    # While this event is clear, requests are held (at most hang_seconds) before being answered: a
    # receiver stuck for as long as a test wants, without a timing guess.
    gate: threading.Event | None = None
    # Down: every connection is dropped without an answer (a dead upstream).
    up: bool = True
    # Answer body instead of the default small JSON, and extra response headers (e.g. Location).
    response_body: bytes | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    # Answer this many signed-and-valid deliveries 200 and then lose them: they are not kept (not in
    # ``deliveries`` nor ``unique_delivery_ids``), only listed in ``lost``.
    lose: int = 0

    def __post_init__(self) -> None:
        self.status_sequence = deque(self.status_sequence)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._tried: set[str] = set()
        self._tokens = self.hidden_limit_per_second or 0.0
        self._refilled = time.monotonic()

    def take_loss(self) -> bool:
        """Whether to lose this (accepted) delivery: True for the next ``lose`` of them."""
        with self._lock:
            if self.lose <= 0:
                return False
            self.lose -= 1
            return True

    def next_action(self, webhook_id: str | None = None) -> tuple[str, int]:
        """("answer", status) or ("drop"|"hang", 0), decided for one request."""
        with self._lock:
            if not self.up:
                return "drop", 0
            if webhook_id is not None and self.first_try_hang_rate > 0 and webhook_id not in self._tried:
                self._tried.add(webhook_id)
                if hangs_first_try(webhook_id, self.first_try_hang_rate):
                    return "hang", 0
            if self.hidden_limit_per_second is not None and not self._within_hidden_limit():
                return "answer", 429
            if self.status_sequence:
                return "answer", self.status_sequence.popleft()
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                fault = self._rng.choice(self.faults)
                if fault == "drop":
                    return "drop", 0
                if fault == "timeout":
                    return "hang", 0
                if fault == "429":
                    return "answer", 429
                return "answer", self._rng.choice((500, 502, 503, 504))
            return "answer", self.status

    def _within_hidden_limit(self) -> bool:
        limit = self.hidden_limit_per_second or 0.0
        now = time.monotonic()
        self._tokens = min(max(1.0, limit), self._tokens + (now - self._refilled) * limit)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def hangs_first_try(webhook_id: str, rate: float) -> bool:
    """Whether ``Behaviour(first_try_hang_rate=rate)`` holds this delivery's first request."""
    digest = hashlib.sha256(webhook_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    received_at: float  # when it was answered (or dropped): after the receiver's own latency
    answered: int | None  # None: dropped or hung
    webhook_id: str | None
    signature_valid: bool | None  # None: no secrets known for this path
    envelope: dict[str, Any] | None
    event: dict[str, Any] | None  # sourceEvent, decrypted when the key is known
    encrypted: bool
    decryption_error: str | None
    duplicate: bool  # an earlier request with this webhook-id was already answered 2xx
    client_port: int  # tells connections apart: keep-alive reuses one
    # When the request arrived (its request line read), before the receiver's own time: what a
    # relay-added latency is measured to.
    arrived_at: float = 0.0
    lost: bool = False  # answered 2xx, then lost (Behaviour.lose): the receiver kept nothing of it

    def json(self) -> Any:
        return load_json(self.body)


class Receiver:
    def __init__(
        self,
        *,
        behaviour: Behaviour | None = None,
        signing_secrets: Mapping[str, Iterable[str]] | None = None,
        encryption_secrets: Mapping[str, Iterable[str]] | None = None,
        reject_invalid_signatures: bool = True,
        keep_requests: bool = True,
    ) -> None:
        """``signing_secrets`` / ``encryption_secrets`` map a request path (or "*" for any) to secrets.
        ``keep_requests=False``: a receiver nobody reads (``relay local serve``'s) keeps no request, only
        the webhook-ids it accepted; kept, each costs about 7 kB for as long as the receiver runs."""
        self.behaviour = behaviour or Behaviour()
        self.path_behaviours: dict[str, Behaviour] = {}
        self._signing = {path: list(values) for path, values in (signing_secrets or {}).items()}
        self._encryption = {path: list(values) for path, values in (encryption_secrets or {}).items()}
        self._reject_invalid = reject_invalid_signatures
        self._keep_requests = keep_requests
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        self._accepted_ids: set[str] = set()
        self._http: LoopbackServer | None = None
        self._stopping = threading.Event()
        self._in_flight: dict[str, int] = {}
        self._holding = 0
        self.max_in_flight: dict[str, int] = {}  # per path: the most requests it held at once
        self.url = ""

    # --- configuration at runtime ---------------------------------------------------------------------
    def set_secrets(self, path: str, *, signing: Iterable[str] = (), encryption: Iterable[str] = ()) -> None:
        with self._lock:
            if signing:
                self._signing[path] = list(signing)
            if encryption:
                self._encryption[path] = list(encryption)

    def behaviour_for(self, path: str) -> Behaviour:
        return self.path_behaviours.get(path, self.behaviour)

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        """Listen on 127.0.0.1 (``port`` 0: any free port); return the base URL."""
        self._stopping.clear()
        self._http = LoopbackServer(_make_handler(self), name="receiver", port=port)
        self.url = f"http://127.0.0.1:{self._http.start()}"
        return self.url

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging and slow requests
        if self._http is not None:
            self._http.stop()
            self._http = None

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what was received ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request, whatever it was answered."""
        with self._lock:
            return list(self._requests)

    @property
    def deliveries(self) -> list[ReceivedRequest]:
        """Requests answered 2xx and kept (duplicates included, flagged; lost ones left out)."""
        return [r for r in self.requests if r.answered is not None and 200 <= r.answered < 300 and not r.lost]

    @property
    def lost(self) -> list[ReceivedRequest]:
        """Requests answered 2xx and then lost (Behaviour.lose)."""
        return [r for r in self.requests if r.lost]

    @property
    def unique_delivery_ids(self) -> set[str]:
        with self._lock:
            return set(self._accepted_ids)

    @property
    def unique_delivery_count(self) -> int:
        """How many webhook-ids were answered 2xx (without copying them: a load generator asks often)."""
        with self._lock:
            return len(self._accepted_ids)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._accepted_ids.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Until ``count`` unique deliveries arrived (True) or the timeout passed (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.unique_delivery_ids) >= count:
                return True
            self._stopping.wait(0.02)
        return len(self.unique_delivery_ids) >= count

    # --- request handling (called by the handler threads) --------------------------------------------
    def _secrets(self, table: dict[str, list[str]], path: str) -> list[str] | None:
        # Keys are paths as a URL is written; the request line carries it percent-encoded, query and all.
        written = unquote(urlsplit(path).path)
        with self._lock:
            found = table.get(written, table.get("*"))
            return list(found) if found is not None else None

    def _inspect(self, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        signing = self._secrets(self._signing, path)
        valid: bool | None = None
        if signing is not None:
            try:
                verify_signature(headers, body, signing)
                valid = True
            except InvalidDelivery:
                valid = False
        envelope: dict[str, Any] | None = None
        event: dict[str, Any] | None = None
        error: str | None = None
        try:
            parsed = load_json(body)
            envelope = parsed if isinstance(parsed, dict) else None
        except ValueError:
            error = "body is not JSON"
        encrypted = bool(envelope and envelope.get("encryptionDirective"))
        if envelope is not None:
            keys = self._secrets(self._encryption, path)
            if not encrypted:
                source = envelope.get("sourceEvent")
                event = source if isinstance(source, dict) else None
            elif keys is not None:
                try:
                    event = decrypt_event(envelope, keys)
                except InvalidDelivery as exc:
                    error = str(exc)
        return {
            "signature_valid": valid,
            "envelope": envelope,
            "event": event,
            "encrypted": encrypted,
            "error": error,
        }

    @property
    def held(self) -> int:
        """Requests waiting at a closed ``Behaviour.gate`` right now."""
        with self._lock:
            return self._holding

    def _held(self, gate: threading.Event, at_most: float) -> None:
        with self._lock:
            self._holding += 1
        try:
            deadline = time.monotonic() + at_most
            while not gate.is_set() and not self._stopping.is_set() and time.monotonic() < deadline:
                gate.wait(0.05)  # wakes for the gate or, within 50 ms, for stop()
        finally:
            with self._lock:
                self._holding -= 1

    def _enter(self, path: str) -> None:
        with self._lock:
            self._in_flight[path] = self._in_flight.get(path, 0) + 1
            self.max_in_flight[path] = max(self.max_in_flight.get(path, 0), self._in_flight[path])

    def _leave(self, path: str) -> None:
        with self._lock:
            self._in_flight[path] -= 1

    def _record(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        answered: int | None,
        client_port: int,
        arrived_at: float,
        lost: bool = False,
    ) -> bool:
        info = self._inspect(path, headers, body)
        webhook_id = headers.get("webhook-id")
        with self._lock:
            duplicate = webhook_id is not None and webhook_id in self._accepted_ids
            if answered is not None and 200 <= answered < 300 and webhook_id and not lost:
                self._accepted_ids.add(webhook_id)
            if not self._keep_requests:
                return duplicate
            self._requests.append(
                ReceivedRequest(
                    method=method,
                    path=path,
                    headers=headers,
                    body=body,
                    received_at=time.time(),
                    answered=answered,
                    webhook_id=webhook_id,
                    signature_valid=info["signature_valid"],
                    envelope=info["envelope"],
                    event=info["event"],
                    encrypted=info["encrypted"],
                    decryption_error=info["error"],
                    duplicate=duplicate,
                    client_port=client_port,
                    arrived_at=arrived_at,
                    lost=lost,
                )
            )
        return duplicate

    def _signature_rejected(self, path: str, headers: dict[str, str], body: bytes) -> bool:
        if not self._reject_invalid:
            return False
        signing = self._secrets(self._signing, path)
        if signing is None:
            return False
        try:
            verify_signature(headers, body, signing)
        except InvalidDelivery:
            return True
        return False


class _CheckedHandler(BaseHTTPRequestHandler):
    receiver: Receiver

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        """`relay targets check`: the receiver's steady answer (a dropped connection while it is
        down), without a body and not recorded: a check is not a delivery, and must not use up a
        status sequence or a fault scripted for deliveries."""
        behaviour = self.receiver.behaviour_for(self.path.split("?", 1)[0])
        if not behaviour.up:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.send_response(behaviour.status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _make_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(_CheckedHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        server_version = "relay-local-receiver"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            return

        def _answer(self, status: int, payload: dict[str, Any], extra: Mapping[str, str] = {}) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            arrived_at = time.time()
            path = self.path.split("?", 1)[0]
            receiver._enter(path)
            try:
                self._respond(path, arrived_at)
            finally:
                receiver._leave(path)

        def _respond(self, path: str, arrived_at: float) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            port = int(self.client_address[1])
            behaviour = receiver.behaviour_for(path)
            action, status = behaviour.next_action(headers.get("webhook-id"))
            if behaviour.latency_seconds > 0:
                receiver._stopping.wait(behaviour.latency_seconds)
            if behaviour.gate is not None:
                receiver._held(behaviour.gate, behaviour.hang_seconds)
            if action == "drop":
                receiver._record(self.command, path, headers, body, None, port, arrived_at)
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if action == "hang":
                receiver._record(self.command, path, headers, body, None, port, arrived_at)
                receiver._stopping.wait(behaviour.hang_seconds)
                self.close_connection = True
                return
            if 200 <= status < 300 and receiver._signature_rejected(path, headers, body):
                status = 401
            lost = 200 <= status < 300 and behaviour.take_loss()
            duplicate = receiver._record(self.command, path, headers, body, status, port, arrived_at, lost)
            extra = dict(behaviour.response_headers)
            if status == 429 and behaviour.retry_after_seconds:
                extra.setdefault("Retry-After", str(behaviour.retry_after_seconds))
            if behaviour.response_body is not None:
                self._answer_raw(status, behaviour.response_body, extra)
            else:
                self._answer(status, {"status": status, "duplicate": duplicate}, extra)

        def _answer_raw(self, status: int, data: bytes, extra: Mapping[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_POST = _handle
        do_PUT = _handle

    Handler.receiver = receiver
    return Handler

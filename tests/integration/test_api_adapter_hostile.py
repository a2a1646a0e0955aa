"""The local HTTP API under hostile input, from raw sockets: every request gets API Gateway's JSON answer
(or the intake's), promptly, without a traceback, and a request the gateway refuses queues nothing.

The adapter runs the real IntakeFunction against moto with the fixtures' integration seeded, and the
refused requests carry a correctly signed event wherever a body fits: had the adapter passed one on, it
would be in the delivery queue (the control cases show it would be).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pytest
from support.events import EVENTS
from test_intake_handler import seed_fixture_integrations

from relay.local.api_adapter import MAX_HEAD_BYTES, MAX_PAYLOAD_BYTES, ApiAdapter
from relay.local.aws_stack import LocalResources
from relay.logic.signature import sign
from relay.wiring import aws_clients

pytestmark = pytest.mark.integration

INTEGRATION_ID = "6685901b-6d0e-43db-95ff-d64406e9dce2"
SIGNATURE_SECRET = "local-demo-signature-secret-0001"
PATH = f"/local/webhooks/{INTEGRATION_ID}"
IDLE_SECONDS = 1.0  # the test adapter's patience with a silent client mid-request
REQUEST_SECONDS = 3.0  # ... and with one request as a whole
ANSWER_BOUND = 15.0  # generous: proves an answer came instead of a hang, not how fast


def signed_body() -> bytes:
    return (EVENTS / "openmessaging_text.json").read_bytes()


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def webhook_head(body: bytes, *extra: str, length: str | None = None) -> bytes:
    """A signed webhook POST's request line and headers (Content-Length = the body's unless given)."""
    framing = [] if length == "" else [f"Content-Length: {len(body) if length is None else length}"]
    return head(
        f"POST {PATH} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"X-Hub-Signature-256: {sign(body, SIGNATURE_SECRET)}",
        *framing,
        *extra,
    )


@dataclass
class Answer:
    status: int
    content_type: str | None
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)


def _send(sock: socket.socket, data: bytes, pace: float | None) -> None:
    try:
        if pace is None:
            sock.sendall(data)
            return
        stop = threading.Event()
        for byte in data:  # a trickle: one byte at a time, ``pace`` seconds apart
            sock.sendall(bytes([byte]))
            if stop.wait(pace):
                return
    except OSError:
        pass  # the server answered and closed before we finished sending: expected for refusals


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off ``stream``: status, lower-cased headers, body (Content-Length or to EOF)."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), f"not an HTTP/1.1 status line: {status_line[:80]!r}"
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    body = stream.read(int(length)) if length is not None else stream.read()
    return int(status_line.split()[1]), headers, body


def ask(port: int, data: bytes, *, pace: float | None = None) -> Answer:
    """Send ``data`` on a new connection (from a thread: the server may answer before reading it all),
    then read one response."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_BOUND)
    sender = threading.Thread(target=_send, args=(sock, data, pace), daemon=True)
    started = time.monotonic()
    sender.start()
    try:
        with sock.makefile("rb") as stream:
            status, headers, body = read_response(stream)
        return Answer(status, headers.get("content-type"), body, time.monotonic() - started)
    finally:
        sock.close()
        sender.join(ANSWER_BOUND)


def queued(resources: LocalResources) -> int:
    attributes = (
        aws_clients()
        .client("sqs")
        .get_queue_attributes(
            QueueUrl=resources.delivery_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
    )
    return sum(int(value) for value in attributes.values())


@pytest.fixture
def api(aws_stack: LocalResources) -> Iterator[ApiAdapter]:
    seed_fixture_integrations()
    with ApiAdapter(
        aws_stack.template, client_idle_seconds=IDLE_SECONDS, request_seconds=REQUEST_SECONDS
    ) as adapter:
        yield adapter


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Client input never puts a traceback in the log: none logged, and none printed by socketserver for an
    exception that escaped a request handler."""
    yield
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "Exception occurred during processing of request" not in capsys.readouterr().err


def _over_the_quota_by(extra: int) -> bytes:
    """A signed POST whose request line and header values total MAX_HEAD_BYTES + ``extra``."""
    body = signed_body()
    base = webhook_head(body, "X-Pad: ")
    lines = base.decode("latin-1").split("\r\n")
    request_line, fields = lines[0], [line.split(":", 1)[1].strip() for line in lines[1:] if line]
    used = len(request_line) + sum(len(value) for value in fields)
    return webhook_head(body, "X-Pad: " + "p" * (MAX_HEAD_BYTES + extra - used)) + body


# --- the control: a well-formed request goes through, so "nothing queued" below means something ---------


def test_a_well_formed_signed_request_is_queued(api: ApiAdapter, aws_stack: LocalResources) -> None:
    body = signed_body()
    answer = ask(api.port, webhook_head(body) + body)
    assert answer.status == 202, answer.body
    assert queued(aws_stack) == 2  # one task per target of the fixtures' integration


def test_the_header_quota_is_inclusive(api: ApiAdapter, aws_stack: LocalResources) -> None:
    # Given request line + header values of exactly 10,240 bytes, the quota itself
    answer = ask(api.port, _over_the_quota_by(0))

    # Then the request reaches the intake and is queued
    assert answer.status == 202, answer.body
    assert queued(aws_stack) == 2


# --- refused by the gateway, answered in JSON, nothing queued ----------------------------------------------

BODY = signed_body()
HOSTILE = [
    pytest.param(head(f"TRACE {PATH} HTTP/1.1", "Host: x"), 404, "Not Found", id="trace"),
    pytest.param(head(f"FROB {PATH} HTTP/1.1", "Host: x"), 404, "Not Found", id="unknown-method"),
    pytest.param(webhook_head(BODY, length="abc") + BODY, 400, "Bad Request", id="content-length-abc"),
    pytest.param(webhook_head(BODY, length="-1") + BODY, 400, "Bad Request", id="content-length-negative"),
    pytest.param(
        webhook_head(BODY, f"Content-Length: {len(BODY) + 1}") + BODY, 400, "Bad Request", id="two-lengths"
    ),
    pytest.param(
        webhook_head(BODY, "Transfer-Encoding: chunked")
        + f"{len(BODY):x}\r\n".encode()
        + BODY
        + b"\r\n0\r\n\r\n",
        400,
        "Bad Request",
        id="content-length-and-chunked",
    ),
    pytest.param(
        webhook_head(BODY, "Transfer-Encoding: chunked", length="") + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n",
        400,
        "Bad Request",
        id="chunk-size-not-hex",
    ),
    pytest.param(
        webhook_head(BODY, "Transfer-Encoding: chunked", length="")
        + f"{len(BODY) - 1:x}\r\n".encode()
        + BODY
        + b"\r\n0\r\n\r\n",
        400,
        "Bad Request",
        id="chunk-longer-than-its-size",
    ),
    pytest.param(
        webhook_head(BODY, "Transfer-Encoding: gzip, chunked", length="") + b"0\r\n\r\n",
        400,
        "Bad Request",
        id="transfer-coding-other-than-chunked",
    ),
    pytest.param(f"POST {PATH}\r\n\r\n".encode(), 400, "Bad Request", id="request-line-without-version"),
    pytest.param(f"GET {PATH}\r\n".encode(), 400, "Bad Request", id="http-0.9-simple-request"),
    pytest.param(head(f"POST {PATH} HTTP/2.0", "Host: x"), 400, "Bad Request", id="unsupported-version"),
    pytest.param(
        head(f"POST http://127.0.0.1{PATH} HTTP/1.1", "Host: x"),
        400,
        "Bad Request",
        id="absolute-form-target",
    ),
    pytest.param(
        webhook_head(BODY, "this line has no colon") + BODY, 400, "Bad Request", id="header-without-colon"
    ),
    pytest.param(
        webhook_head(BODY, "X-Folded: a", " continued") + BODY, 400, "Bad Request", id="folded-header"
    ),
    pytest.param(webhook_head(BODY, "Bad Name: x") + BODY, 400, "Bad Request", id="space-in-header-name"),
    pytest.param(
        head("GET /local/" + "a" * 100_000 + " HTTP/1.1", "Host: x"),
        414,
        "Request-URI Too Long",
        id="url-100k",
    ),
    pytest.param(
        webhook_head(BODY, "X-Big: " + "a" * 65_536) + BODY,
        431,
        "Request Header Fields Too Large",
        id="header-64k",
    ),
    pytest.param(
        _over_the_quota_by(1), 431, "Request Header Fields Too Large", id="headers-one-byte-over-the-quota"
    ),
    pytest.param(
        # Names do not count towards the quota, but they are not read without end either (64 KiB).
        webhook_head(BODY, *[f"X-{'n' * 60}-{n}: v" for n in range(1000)]) + BODY,
        431,
        "Request Header Fields Too Large",
        id="many-long-header-names",
    ),
]


@pytest.mark.parametrize(("request_bytes", "status", "message"), HOSTILE)
def test_malformed_requests_get_api_gateway_json_and_queue_nothing(
    api: ApiAdapter, aws_stack: LocalResources, request_bytes: bytes, status: int, message: str
) -> None:
    # When the raw request is sent
    answer = ask(api.port, request_bytes)

    # Then API Gateway's JSON answer comes back promptly, and nothing reached the queue
    assert (answer.status, answer.json()) == (status, {"message": message})
    assert answer.content_type == "application/json"
    assert answer.elapsed < ANSWER_BOUND
    assert queued(aws_stack) == 0


def test_a_body_shorter_than_its_length_then_silence_gets_408_and_queues_nothing(
    api: ApiAdapter, aws_stack: LocalResources
) -> None:
    # Given a signed request that announces one byte more than it sends, then goes quiet
    body = signed_body()
    answer = ask(api.port, webhook_head(body, length=str(len(body) + 1)) + body)

    # Then the adapter stops waiting (IDLE_SECONDS), answers 408, and the event was not delivered
    assert (answer.status, answer.json()) == (408, {"message": "Request Timeout"})
    assert answer.content_type == "application/json"
    assert answer.elapsed < IDLE_SECONDS + ANSWER_BOUND
    assert queued(aws_stack) == 0


def test_a_client_trickling_its_request_is_cut_off_by_the_request_deadline(
    api: ApiAdapter, aws_stack: LocalResources
) -> None:
    # Given a signed request sent one byte every IDLE_SECONDS / 4: never idle for long, never finished
    body = signed_body()
    answer = ask(api.port, webhook_head(body) + body, pace=IDLE_SECONDS / 4)

    # Then the whole-request deadline ends it with 408, and nothing was queued
    assert (answer.status, answer.json()) == (408, {"message": "Request Timeout"})
    assert answer.elapsed < REQUEST_SECONDS + ANSWER_BOUND
    assert queued(aws_stack) == 0


def test_both_413s_say_the_same_thing_in_message(api: ApiAdapter, aws_stack: LocalResources) -> None:
    # Given a 20 MB body (over API Gateway's 10 MB quota) and a 1 MB one (over the intake's limit)
    huge, large = b"x" * (20 * 1024 * 1024), b"x" * (1024 * 1024)

    # When each is posted, signed
    gateway = ask(api.port, webhook_head(huge) + huge)
    intake = ask(api.port, webhook_head(large) + large)

    # Then both are 413 JSON whose message names the limit that refused it, in the same words
    assert gateway.status == intake.status == 413
    assert gateway.content_type == intake.content_type == "application/json"
    assert gateway.json() == {"message": f"the body is larger than {MAX_PAYLOAD_BYTES} bytes"}
    assert intake.json()["error"] == "payload_too_large"
    assert re.fullmatch(r"the body is larger than \d+ bytes", intake.json()["message"])
    assert queued(aws_stack) == 0


def test_a_pipelined_second_request_is_served_after_the_first(
    api: ApiAdapter, aws_stack: LocalResources
) -> None:
    # Given two requests written back to back on one connection (a 404, then a signed webhook)
    body = signed_body()
    first = head(f"GET {PATH} HTTP/1.1", "Host: x")
    with socket.create_connection(("127.0.0.1", api.port), timeout=ANSWER_BOUND) as sock:
        sock.sendall(first + webhook_head(body) + body)
        with sock.makefile("rb") as stream:
            answers = [read_response(stream) for _ in range(2)]

    # Then each gets its own answer, in order, and the second was queued
    assert [status for status, _, _ in answers] == [404, 202]
    assert queued(aws_stack) == 2

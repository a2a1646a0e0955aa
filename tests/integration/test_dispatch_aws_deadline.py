"""The dispatcher's AWS calls end inside its invocation: a Lambda that times out has its whole batch
delivered again, the records it had delivered included."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from support.aws_proxy import answer, forward
from support.handlers import LoadHandler
from support.lambda_context import lambda_context
from test_dispatch_support import PLAIN_TARGET, seed_target, task_record

from relay.local.aws_stack import LocalResources, forget_cached_configuration
from relay.local.loopback import LoopbackServer
from relay.local.receiver import Receiver

pytestmark = pytest.mark.integration


class S3ThatHangs:
    """A loopback endpoint in front of moto: every call goes through at once but S3's PUTs, which are
    read and then never answered (an S3 that accepts the connection and stalls)."""

    def __init__(self, upstream: str) -> None:
        endpoint = self
        self.puts = 0
        self._lock = threading.Lock()
        self._released = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                answer(self, forward(self, upstream, timeout=30))

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with endpoint._lock:
                    endpoint.puts += 1
                endpoint._released.wait()  # the stalled dependency under test, until the test ends

            def log_message(self, *args: Any) -> None:
                pass

        self._server = LoopbackServer(Handler, name="s3-that-hangs")
        self.url = f"http://127.0.0.1:{self._server.start()}"

    def close(self) -> None:
        self._released.set()
        self._server.stop()


def test_an_audit_write_that_hangs_ends_inside_the_timeout_and_the_delivery_is_not_sent_again(
    aws_stack: LocalResources,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    function_handler: LoadHandler,
) -> None:
    # Given the dispatcher's AWS bounds from template.yaml, a target that answers at once, and S3 (the
    # audit and archive objects) stalling on every PUT, in an invocation given 8 s: each PUT's tries
    # (3 of up to 3 s) would add up past it
    monkeypatch.setenv("CONNECT_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("READ_TIMEOUT_SECONDS", "1")
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    s3 = S3ThatHangs(aws_stack.endpoint_url)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
        forget_cached_configuration()
        context = lambda_context("dispatcher", timeout_seconds=8)

        # When the handler gets a batch of one task
        started = time.monotonic()
        response = function_handler("dispatcher")({"Records": [task_record(PLAIN_TARGET)]}, context)
        took = time.monotonic() - started
    finally:
        s3.close()

    # Then the handler answered before the function's timeout, with its delivery done: SQS will not
    # show the record again, so the receiver gets it once
    assert took < 8, took
    assert response == {"batchItemFailures": []}
    assert len(receiver.deliveries) == 1
    # and it did wait on S3, but not for every try a PUT has (3 for the audit object, 3 for the archive)
    assert 1 <= s3.puts < 6, s3.puts

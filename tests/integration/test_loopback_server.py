"""The local stack's HTTP servers (API, fake Genesys, demo receivers) under a burst of connections."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from relay.local.loopback import LoopbackServer

pytestmark = pytest.mark.integration

BURST = 100  # Genesys opens connections side by side; a listen backlog of 5 reset some of 20


class Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_burst_of_first_connections_is_served_not_reset() -> None:
    # Given a loopback server, and a burst of clients that all connect at the same moment
    server = LoopbackServer(Ok, name="burst")
    port = server.start()
    start = threading.Barrier(BURST)
    answers: list[int | str] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        try:
            connection.request("GET", "/")
            answer: int | str = connection.getresponse().status
        except OSError as exc:
            answer = type(exc).__name__
        finally:
            connection.close()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=client) for _ in range(BURST)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()

    # Then every one of them is answered
    assert sorted(map(str, answers)) == ["200"] * BURST


def test_a_port_in_use_is_named_with_the_server_that_wanted_it() -> None:
    taken = LoopbackServer(Ok, name="first")
    port = taken.start()
    try:
        with pytest.raises(OSError, match=rf"^\[Errno \d+\] .+: the API on 127\.0\.0\.1:{port}$"):
            LoopbackServer(Ok, name="the API", port=port).start()
    finally:
        taken.stop()

"""A threaded HTTP server on 127.0.0.1, served from a background thread: the one lifecycle shared by
the local API adapter, the fake Genesys API and the demo receivers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHUTDOWN_POLL_SECONDS = 0.05


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of first connections (Genesys opens them side
    # by side; a load test does) overflowed it, and some were reset or timed out before accept().
    request_queue_size = 1024


class LoopbackServer:
    """``start()`` binds 127.0.0.1 (never 0.0.0.0) and serves; ``stop()`` shuts down and joins.

    ``wait_for_requests``: stop() lets requests in flight finish (request threads are joined);
    otherwise they are daemon threads and stop() returns at once.
    """

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        *,
        name: str,
        port: int = 0,
        wait_for_requests: bool = False,
    ) -> None:
        self._handler = handler
        self._name = name
        self._wait = wait_for_requests
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> int:
        """Listen and serve; return the bound port."""
        try:
            server = _Server(("127.0.0.1", self.port), self._handler)
        except OSError as exc:  # "Address already in use" alone names neither the port nor the server
            raise OSError(exc.errno, f"{exc.strerror}: {self._name} on 127.0.0.1:{self.port}") from None
        server.daemon_threads = not self._wait
        server.block_on_close = self._wait
        self._server = server
        self.port = server.server_address[1]
        # The accept loop looks for shutdown() every SHUTDOWN_POLL_SECONDS (socketserver's default,
        # half a second, was most of the time a test's or the local stack's stop took).
        self._thread = threading.Thread(
            target=server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), name=self._name, daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self, *, before_close: Callable[[], None] | None = None) -> None:
        """Stop serving; ``before_close`` runs after the accept loop ends, before sockets close."""
        if self._server is not None:
            self._server.shutdown()
            if before_close is not None:
                before_close()
            self._server.server_close()  # joins request threads when wait_for_requests
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

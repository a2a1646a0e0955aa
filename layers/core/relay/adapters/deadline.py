"""A total deadline for one outbound request: connect, TLS handshake, request and response together.

Socket timeouts (requests', urllib3's, the SDK's) bound each socket operation, so a peer that trickles
one byte per read keeps a request alive indefinitely. Here::

    with request_deadline(seconds) as deadline:
        ...  # one request; the connection classes (relay.adapters.connections) watch its sockets

sets the calling thread's deadline; the connection classes register with it every socket the request
uses. One watchdog thread for the whole process (not one per request) keeps the armed deadlines in a
heap and, when one passes, shuts its sockets down (``shutdown(SHUT_RDWR)``): a blocked ``recv`` or
``send`` returns at once and the request fails. ``deadline.exceeded`` then tells the caller that it
was the deadline, so it reports a timeout rather than a broken connection.

Each socket is registered as a *duplicate* of its file descriptor, closed when the ``with`` block
ends: after urllib3 closes a socket its number may be reused by an unrelated connection, and the
watchdog must never shut that one down. Duplicating the descriptor works for TLS sockets as well
(an ``SSLSocket`` cannot be dup()ed, its descriptor can); shutting down the TCP connection under TLS
ends a blocked TLS read or handshake too.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Deadline:
    """When one request must be over, and the sockets to shut down if it is not."""

    __slots__ = ("at", "seconds", "fired", "_fds", "_queued", "_released")

    def __init__(self, at: float, seconds: float) -> None:
        self.at = at  # time.monotonic() value
        self.seconds = seconds  # the budget asked for, for messages
        self.fired = False  # the watchdog shut this request's sockets down
        # (the watched socket's descriptor, our duplicate of it), per watched socket
        self._fds: list[tuple[int, int]] = []
        self._queued = False
        self._released = False

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def exceeded(self) -> bool:
        """The deadline has passed (whether or not the watchdog has acted on it yet)."""
        return self.fired or time.monotonic() >= self.at

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once, if it already has)."""
        _watchdog.watch(self, sock)

    def unwatch(self, sock: socket.socket) -> bool:
        """Stop watching ``sock``, which outlives this request (a kept connection going back to its pool,
        where another request may take it at once); False when the deadline already shut it down."""
        return _watchdog.unwatch(self, sock)


_local = threading.local()


def current_deadline() -> Deadline | None:
    """The calling thread's deadline, if it is inside ``request_deadline``."""
    deadline: Deadline | None = getattr(_local, "deadline", None)
    return deadline


@contextmanager
def request_deadline(seconds: float) -> Iterator[Deadline]:
    """Bound everything the calling thread sends and receives inside the block to ``seconds`` in total.

    Nested blocks never extend an outer deadline.
    """
    outer = current_deadline()
    at = time.monotonic() + seconds
    deadline = Deadline(min(at, outer.at) if outer is not None else at, seconds)
    _local.deadline = deadline
    try:
        yield deadline
    finally:
        _local.deadline = outer
        _watchdog.release(deadline)


class _Watchdog:
    """One daemon thread, a heap of armed deadlines and a condition variable.

    Finished requests are not removed from the heap (that would be O(n)); the thread drops released
    entries whenever they reach the top, so it wakes only for deadlines that are still armed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline, sock: socket.socket) -> None:
        fd = os.dup(sock.fileno())
        with self._cond:
            if deadline._released:  # not expected: a socket used after its request ended
                os.close(fd)
                return
            deadline._fds.append((sock.fileno(), fd))
            if deadline.fired:
                _shut_down(fd)
                return
            if not deadline._queued:
                deadline._queued = True
                entry = (deadline.at, next(self._order), deadline)
                heapq.heappush(self._heap, entry)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="relay-request-deadlines", daemon=True
                    )
                    self._thread.start()
                elif self._heap[0] is entry:  # earlier than what the thread waits for
                    self._cond.notify()

    def unwatch(self, deadline: Deadline, sock: socket.socket) -> bool:
        original = sock.fileno()
        with self._cond:  # the thread shuts sockets down holding it: after this, never this one
            kept = [(watched, fd) for watched, fd in deadline._fds if watched != original]
            dropped = [fd for watched, fd in deadline._fds if watched == original]
            deadline._fds = kept
            fired = deadline.fired
        for fd in dropped:
            os.close(fd)
        return not fired

    def release(self, deadline: Deadline) -> None:
        if not deadline._queued and not deadline._fds:
            deadline._released = True  # nothing was watched: no lock, no syscall
            return
        with self._cond:
            deadline._released = True
            fds, deadline._fds = deadline._fds, []
        for _, fd in fds:
            os.close(fd)

    def _run(self) -> None:
        heap = self._heap
        with self._cond:
            while True:
                while heap and heap[0][2]._released:
                    heapq.heappop(heap)
                if not heap:
                    self._cond.wait()
                    continue
                wait = heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                deadline = heapq.heappop(heap)[2]
                deadline.fired = True
                for _, fd in deadline._fds:
                    _shut_down(fd)


def _shut_down(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected (yet), or already closed by the peer
    finally:
        sock.detach()  # the descriptor stays open until the request releases it


_watchdog = _Watchdog()

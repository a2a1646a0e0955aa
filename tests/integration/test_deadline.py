"""The request deadline's watchdog on real sockets (socket pairs): it cuts a blocked read at the
deadline, and never touches a socket once its request has ended, even one that reuses a number."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from relay.adapters.deadline import current_deadline, request_deadline

pytestmark = pytest.mark.integration


def test_a_blocked_read_returns_at_the_deadline() -> None:
    # Given a connection whose peer never sends anything
    ours, theirs = socket.socketpair()
    with ours, theirs:
        started = time.monotonic()
        # When a read blocks inside a 0.3 s deadline
        with request_deadline(0.3) as deadline:
            deadline.watch(ours)
            data = ours.recv(1)  # no socket timeout: only the watchdog can end this

        # Then the read ends (end of stream) soon after the deadline, and the deadline says why
        assert data == b""
        assert deadline.fired and deadline.exceeded
        assert time.monotonic() - started < 3.0


def test_a_finished_request_leaves_its_socket_alone() -> None:
    # Given a request that watched a connection and ended before its deadline
    kept, kept_peer = socket.socketpair()
    with request_deadline(0.2) as early:
        early.watch(kept)

    # When a later deadline has fired (so the watchdog has passed the early one's time)
    blocker, blocker_peer = socket.socketpair()
    with blocker, blocker_peer, request_deadline(0.5) as late:
        late.watch(blocker)
        assert blocker.recv(1) == b""
    assert late.fired and not early.fired

    # Then the connection, reused after that request, still works both ways
    _assert_works(kept, kept_peer)


def test_a_socket_unwatched_before_the_deadline_is_left_alone_when_it_fires() -> None:
    # Given a request that watched three connections and let one go before its end (a kept connection
    # going back to its pool, where another request may take it at once)
    kept, kept_peer = socket.socketpair()
    blocker, blocker_peer = socket.socketpair()
    late, late_peer = socket.socketpair()
    with kept, kept_peer, blocker, blocker_peer, late, late_peer:
        with request_deadline(0.3) as deadline:
            for sock in (kept, blocker, late):
                deadline.watch(sock)
            assert deadline.unwatch(kept) is True
            # When its deadline fires while the request is still open
            assert blocker.recv(1) == b""
            # Then one let go only now is said to have been shut down
            assert deadline.unwatch(late) is False

        # ... and the one let go in time still works both ways
        _assert_works(kept, kept_peer)


def test_a_descriptor_number_reused_during_a_request_is_not_shut_down() -> None:
    # Given a request that watched a socket which was then closed (as urllib3 closes a failed
    # connection), and an unrelated connection that got the very same descriptor number
    first, first_peer = socket.socketpair()
    blocker, blocker_peer = socket.socketpair()
    with blocker, blocker_peer, request_deadline(0.3) as deadline:
        deadline.watch(first)
        number = first.fileno()
        first.close()
        first_peer.close()
        unrelated, other_peer = socket.socketpair()
        if unrelated.fileno() != number:  # usually the kernel hands out the freed number anyway
            os.dup2(unrelated.fileno(), number)
            unrelated.close()
            unrelated = socket.socket(fileno=number)

        # When the deadline fires while the request goes on
        deadline.watch(blocker)
        assert blocker.recv(1) == b""
    assert deadline.fired

    # Then only the request's own sockets were shut down: the unrelated connection still works
    _assert_works(unrelated, other_peer)


def _assert_works(ours: socket.socket, theirs: socket.socket) -> None:
    with ours, theirs:
        ours.sendall(b"ping")
        assert theirs.recv(4) == b"ping"
        theirs.sendall(b"pong")
        assert ours.recv(4) == b"pong"


def test_deadlines_are_per_thread_and_nested_ones_never_extend_the_outer() -> None:
    seen: list[object] = []
    with request_deadline(5.0) as outer:
        thread = threading.Thread(target=lambda: seen.append(current_deadline()))
        thread.start()
        thread.join()
        with request_deadline(60.0) as inner:
            assert current_deadline() is inner and inner.at == outer.at
        assert current_deadline() is outer
    assert seen == [None] and current_deadline() is None


def test_many_concurrent_deadlines_each_fire_once_on_their_own_socket() -> None:
    # Given 20 threads, each blocked on its own silent connection under deadlines of 0.2 .. 0.6 s
    results: dict[int, tuple[bytes, bool]] = {}

    def blocked_read(index: int) -> None:
        ours, theirs = socket.socketpair()
        with ours, theirs, request_deadline(0.2 + (index % 5) * 0.1) as deadline:
            deadline.watch(ours)
            results[index] = (ours.recv(1), deadline.fired)

    threads = [threading.Thread(target=blocked_read, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    # Then every one of them was cut off by its own deadline
    assert results == dict.fromkeys(range(20), (b"", True))

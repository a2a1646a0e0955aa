"""The socket guard of tests/unit: no unit test reaches the network, even by accident.

Connecting, binding, listening or sending on any socket, and resolving a host name other than
``localhost``, raise SocketBlocked at once. Code under test may catch that, so every attempt is also
recorded for the fixture to fail the test with at teardown (tests/unit/conftest.py).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import pytest

SOCKET_METHODS = ("connect", "connect_ex", "bind", "listen", "sendto", "sendmsg")
RESOLVERS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr")


class SocketBlocked(RuntimeError):
    """A unit test tried to use the network."""


def _needs_no_lookup(host: Any) -> bool:
    """No host, an address literal, or localhost: resolving it asks no name server."""
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def block_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse the network until ``monkeypatch`` is undone; returns the list the attempts go to."""
    attempts: list[str] = []

    def refuse(attempt: str) -> None:
        attempts.append(attempt)
        raise SocketBlocked(f"{attempt}: tests/unit must not use the network (move it to tests/integration)")

    def blocked_method(name: str) -> Callable[..., Any]:
        def blocked(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
            refuse(f"socket.{name}{args!r}")

        return blocked

    def local_only(name: str, resolve: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _needs_no_lookup(host):
                refuse(f"socket.{name}({host!r})")
            return resolve(host, *args, **kwargs)

        return guarded

    for name in SOCKET_METHODS:
        monkeypatch.setattr(socket.socket, name, blocked_method(name))
    for name in RESOLVERS:
        monkeypatch.setattr(socket, name, local_only(name, getattr(socket, name)))
    return attempts

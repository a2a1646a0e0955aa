"""The socket guard of tests/unit (tests/unit/conftest.py) stops a unit test from using the network."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from support.sockets import SocketBlocked

UNIT_CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.mark.parametrize(
    ("attempt", "seen"),
    [
        pytest.param(
            lambda: socket.create_connection(("127.0.0.1", 9), timeout=1), "socket.connect", id="connect"
        ),
        pytest.param(
            lambda: socket.socket().connect_ex(("127.0.0.1", 9)), "socket.connect_ex", id="connect_ex"
        ),
        pytest.param(lambda: socket.socket().bind(("127.0.0.1", 0)), "socket.bind", id="bind"),
        pytest.param(lambda: socket.socket().listen(), "socket.listen", id="listen"),
        pytest.param(
            lambda: socket.socket(type=socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9)),
            "socket.sendto",
            id="udp",
        ),
        pytest.param(lambda: socket.getaddrinfo("example.com", 443), "socket.getaddrinfo", id="dns"),
        pytest.param(lambda: socket.gethostbyname("example.com"), "socket.gethostbyname", id="dns-v4"),
    ],
)
def test_every_way_onto_the_network_is_refused_and_recorded(
    socket_guard: list[str], attempt: Callable[[], object], seen: str
) -> None:
    with pytest.raises(SocketBlocked, match="tests/unit must not use the network"):
        attempt()
    assert [a.split("(")[0] for a in socket_guard] == [seen]
    socket_guard.clear()  # expected here: do not fail this test at teardown


def test_local_names_and_address_literals_still_resolve(socket_guard: list[str]) -> None:
    # Resolving these reads no network (url_policy's own tests inject their resolver anyway)
    assert socket.getaddrinfo("127.0.0.1", 443)[0][4][0] == "127.0.0.1"
    assert socket.getaddrinfo("::1", 443, socket.AF_INET6)[0][4][0] == "::1"
    assert socket.getaddrinfo("localhost", 443)
    assert socket_guard == []


def test_a_unit_test_that_swallows_the_refusal_still_fails(pytester: pytest.Pytester) -> None:
    # Given the guard, and a unit test whose code under test catches every error on its way out
    pytester.makeconftest(UNIT_CONFTEST.read_text())
    pytester.makepyfile(
        test_swallows="""
        import urllib.request

        def test_fetches_quietly():
            try:
                urllib.request.urlopen("http://example.com/", timeout=1)
            except Exception:
                pass
        """
    )

    # When it runs, then it fails, naming the attempt
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*tried to use the network*getaddrinfo('example.com'*"])

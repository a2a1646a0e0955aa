"""tests/unit is pure logic: the socket guard (support.sockets) fails any unit test that tries to use
the network. A test that needs a socket belongs in tests/integration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.sockets import block_network


@pytest.fixture(autouse=True)
def socket_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The network attempts this test made; any left at teardown fail it (even if the code under test
    caught the refusal). A test proving the guard reads and clears them."""
    attempts = block_network(monkeypatch)
    yield attempts
    if attempts:
        pytest.fail(f"the test tried to use the network (tests/unit must not): {attempts}", pytrace=False)

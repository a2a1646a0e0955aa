"""Fixtures shared by the integration tests: a loopback receiver that knows the seeded targets'
secrets, a clock moved by hand, and the fake Genesys API with the sync's settings pointing at it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from test_dispatch_support import ENCRYPTION_SECRET, SIGNING_SECRET, ManualClock

from relay.local.aws_stack import LocalResources, forget_cached_configuration
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures
from relay.local.receiver import Receiver

FIXTURES = Fixtures.load()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver verifying the seeded signing secret and decrypting with the seeded encryption key."""
    with Receiver(
        signing_secrets={"*": [SIGNING_SECRET]}, encryption_secrets={"*": [ENCRYPTION_SECRET]}
    ) as running:
        yield running


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def fake_genesys() -> Iterator[FakeGenesys]:
    with FakeGenesys(FIXTURES) as fake:
        yield fake


@pytest.fixture
def genesys(
    fake_genesys: FakeGenesys, aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeGenesys]:
    """The fake, reset to the fixtures, with the sync's settings pointing at it and a fresh secrets prefix."""
    fake_genesys.reset(FIXTURES)
    for name, value in fake_genesys.settings_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RELAY_ALLOW_LOOPBACK_TARGETS", "true")
    monkeypatch.setenv("SECRETS_PREFIX", f"relay/test-{secrets.token_hex(4)}")
    forget_cached_configuration()
    yield fake_genesys
    fake_genesys.clear_faults()

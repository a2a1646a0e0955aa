"""Fixtures shared by the integration tests: a loopback receiver that knows the seeded targets'
secrets, and a clock moved by hand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_dispatch_support import ENCRYPTION_SECRET, SIGNING_SECRET, ManualClock

from relay.local.receiver import Receiver


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

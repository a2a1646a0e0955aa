"""The intake's idempotency claim: who queues an event that may arrive more than once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Claim:
    """The outcome of ``IdempotencyStore.claim`` (relay.ports).

    ``state`` is ``acquired`` (this attempt must queue; after a failure it releases with ``token``)
    or ``in_progress`` (another attempt holds a live lease on the event right now).
    """

    key: str
    state: Literal["acquired", "in_progress"]
    token: str | None = None

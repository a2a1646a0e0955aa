"""The intake's idempotency claim: who queues an event that may arrive more than once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Claim:
    """The outcome of ``IdempotencyStore.claim`` (relay.ports).

    ``state`` is ``acquired`` (this attempt must queue, then complete or release with ``token``),
    ``completed`` (a previous attempt queued; ``response`` is its answer), or ``in_progress``
    (another attempt holds the claim right now).
    """

    key: str
    state: Literal["acquired", "completed", "in_progress"]
    token: str | None = None
    response: str | None = None

"""The per-target circuit breaker as a pure transition function (stores: relay.ports.BreakerStore).

    closed ──N consecutive failures──▶ open ──reset timeout elapsed, probe claimed──▶ half-open
      ▲                                 ▲                                               │
      └──────────── probe succeeded ────┼───────────────────────────────────────────────┤
                                        └──────────── probe failed ─────────────────────┘

- The reset timeout grows with consecutive trips: reset * 2^(trips-1), capped at max_reset.
- Half-open admits exactly one probe across every dispatcher: the open → half-open transition is a
  conditional, versioned write, and only the writer that wins it sends the probe. The probe holds a
  lease; if its dispatcher dies, another may claim a new probe after the lease.
- Every state change bumps ``version``; stores write only if the stored version is still the one read.

``admit``, ``record`` and ``reset`` (the operator's forced close) are pure (no I/O, no clock: callers
pass ``now`` in epoch seconds);
``open_gate`` and ``report`` run them against a store with conditional writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from relay.models.breaker import BreakerState, Phase
from relay.ports import BreakerStore

__all__ = [
    "Admission",
    "BreakerPolicy",
    "BreakerState",
    "Gate",
    "Phase",
    "admit",
    "closed",
    "open_gate",
    "record",
    "report",
    "reset",
    "seconds_until_probe",
]


class Admission(StrEnum):
    DELIVER = "deliver"  # closed: go ahead
    PROBE = "probe"  # write the returned half-open state; if the write wins, send exactly one probe
    DEFER = "defer"  # open, or someone else's probe is in flight


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    reset_seconds: float = 30.0
    max_reset_seconds: float = 600.0
    probe_lease_seconds: float = 60.0

    def reset_after(self, trips: int) -> float:
        exponent = min(max(0, trips - 1), 32)
        return float(min(self.max_reset_seconds, self.reset_seconds * 2**exponent))


def admit(state: BreakerState, now: float, policy: BreakerPolicy) -> tuple[Admission, BreakerState | None]:
    """Whether records for this target may go now; for PROBE, the half-open state to claim."""
    if state.phase is Phase.CLOSED:
        return Admission.DELIVER, None
    if now < state.until:
        return Admission.DEFER, None
    # OPEN past its reset timeout, or HALF_OPEN whose probe lease lapsed: claim the (single) probe.
    claimed = replace(
        state, phase=Phase.HALF_OPEN, until=now + policy.probe_lease_seconds, version=state.version + 1
    )
    return Admission.PROBE, claimed


def closed(version: int, endpoint: str | None = None) -> BreakerState:
    """A closed breaker with no failures and no trips: what a successful probe and a reset leave."""
    return BreakerState(Phase.CLOSED, 0, 0, 0.0, version, endpoint)


def reset(state: BreakerState) -> BreakerState | None:
    """The operator's forced close (``relay breaker reset``); None when the breaker is closed and clean.

    Written like any transition (version + 1, conditional), so it never hides a concurrent one; a probe
    still in flight then folds its result into the closed state as a plain result."""
    if state == closed(state.version, state.endpoint):
        return None
    return closed(state.version + 1, state.endpoint)


def _opened(state: BreakerState, now: float, policy: BreakerPolicy) -> BreakerState:
    trips = state.trips + 1
    return replace(
        state, phase=Phase.OPEN, trips=trips, until=now + policy.reset_after(trips), version=state.version + 1
    )


def record(
    state: BreakerState,
    healthy: Sequence[bool],
    now: float,
    policy: BreakerPolicy,
    *,
    holds_probe: bool = False,
) -> BreakerState | None:
    """Fold a batch's results for one target, in order, into the state; None when nothing changes.

    ``healthy[i]`` is False when attempt i found the endpoint failing (timeouts, connection errors,
    408/425/5xx; a throttle, 429 or 503 with Retry-After, is healthy: the rate limit answers it).
    With ``holds_probe`` the first result is this dispatcher's half-open probe. Results that arrive
    while the breaker is open or another dispatcher probes change nothing.
    """
    if not healthy:
        return None
    if state.phase is Phase.HALF_OPEN:
        if not holds_probe:
            return None
        if not healthy[0]:
            return _opened(replace(state, consecutive_failures=state.consecutive_failures + 1), now, policy)
        after_probe = closed(state.version, state.endpoint)
        folded = record(after_probe, healthy[1:], now, policy) or after_probe
        return replace(folded, version=state.version + 1)  # one write, one version
    if state.phase is Phase.OPEN:
        return None
    failures = state.consecutive_failures
    for ok in healthy:
        failures = 0 if ok else failures + 1
        if failures >= policy.failure_threshold:
            return _opened(replace(state, consecutive_failures=failures), now, policy)
    if failures == state.consecutive_failures:
        return None  # a healthy closed breaker is never written: no hot item
    return replace(state, consecutive_failures=failures, version=state.version + 1)


def seconds_until_probe(state: BreakerState, now: float) -> float:
    return max(0.0, state.until - now)


# --- against a store (relay.ports.BreakerStore): what every dispatcher runs ---------------------------


@dataclass(frozen=True)
class Gate:
    """What one dispatcher may do with one target's records in this batch."""

    admission: Admission
    state: BreakerState  # as read, or the half-open state this dispatcher claimed (PROBE)
    defer_until: float = 0.0  # DEFER: when to come back (epoch seconds)


def open_gate(
    store: BreakerStore, key: str, now: float, policy: BreakerPolicy, *, state: BreakerState | None = None
) -> Gate:
    """One read (none when the caller passes the ``state`` it just read); for an expired open breaker,
    one conditional write that at most one dispatcher wins.

    Raises BreakerStoreUnavailable when DynamoDB fails (the caller fails open)."""
    state = store.load(key) if state is None else state
    admission, claim = admit(state, now, policy)
    if admission is Admission.DELIVER:
        return Gate(admission, state)
    if admission is Admission.DEFER or claim is None:
        return Gate(Admission.DEFER, state, defer_until=state.until)
    if store.save(key, claim, expected_version=state.version):
        return Gate(Admission.PROBE, claim)
    # Another dispatcher claimed the probe first: come back when its lease ends.
    return Gate(Admission.DEFER, state, defer_until=claim.until)


def report(
    store: BreakerStore,
    key: str,
    gate: Gate,
    healthy: Sequence[bool],
    now: float,
    policy: BreakerPolicy,
    *,
    attempts: int = 3,
) -> tuple[BreakerState, BreakerState] | None:
    """Fold this batch's results into the stored state with a conditional write; (old, new) if written.

    On a lost race the stored state is read again and the results folded into it (as plain results:
    a probe whose half-open state was replaced no longer decides anything)."""
    state, holds_probe = gate.state, gate.admission is Admission.PROBE
    for _ in range(attempts):
        new = record(state, healthy, now, policy, holds_probe=holds_probe)
        if new is None:
            return None
        if store.save(key, new, expected_version=state.version):
            return state, new
        state, holds_probe = store.load(key), False
    return None

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
- Results are folded in the order their requests were sent, not the order the endpoint answered
  them or dispatchers report them: each carries its send time (``Result``), and a closed breaker keeps
  the times of the failures it counts since its last success (``record``). Sent together, a timeout
  always answers after the successes sent with it: by answer time, an endpoint timing out one request
  in five lined its timeouts up at the tail of each wave and opened the breaker while it was up.

``admit``, ``record`` and ``reset`` (the operator's forced close) are pure (no I/O, no clock: callers
pass ``now`` in epoch seconds);
``open_gate`` and ``report`` run them against a store with conditional writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import chain
from operator import attrgetter

from relay.models.breaker import BreakerState, Phase
from relay.ports import BreakerStore

__all__ = [
    "Admission",
    "BreakerPolicy",
    "BreakerState",
    "Gate",
    "Phase",
    "Result",
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


@dataclass(frozen=True)
class Result:
    """One attempt's verdict on the endpoint and when the endpoint gave it (epoch seconds, the clock the
    dispatcher passes as ``now``)."""

    at: float
    healthy: bool


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


def closed(version: int, endpoint: str | None = None, *, last_success_at: float = 0.0) -> BreakerState:
    """A closed breaker with no failures and no trips: what a successful probe and a reset leave."""
    return BreakerState(Phase.CLOSED, 0, 0, 0.0, version, endpoint, last_success_at=last_success_at)


def reset(state: BreakerState) -> BreakerState | None:
    """The operator's forced close (``relay breaker reset``); None when the breaker is closed and clean.

    Written like any transition (version + 1, conditional), so it never hides a concurrent one; a probe
    still in flight then folds its result into the closed state as a plain result. The last success
    stays: results answered before it are history still."""
    clean = closed(state.version, state.endpoint, last_success_at=state.last_success_at)
    if state == clean:
        return None
    return replace(clean, version=state.version + 1)


def _opened(state: BreakerState, now: float, policy: BreakerPolicy) -> BreakerState:
    trips = state.trips + 1
    return replace(
        state, phase=Phase.OPEN, trips=trips, until=now + policy.reset_after(trips), version=state.version + 1
    )


def record(
    state: BreakerState,
    results: Sequence[Result],
    now: float,
    policy: BreakerPolicy,
    *,
    holds_probe: bool = False,
) -> BreakerState | None:
    """Fold a batch's results for one target into the state, in answer order; None when nothing changes.

    A result is unhealthy when the attempt found the endpoint failing (timeouts, connection errors,
    408/425/5xx; a throttle, 429 or 503 with Retry-After, is healthy: the rate limit answers it).
    With ``holds_probe`` the first result is this dispatcher's half-open probe. Results that arrive
    while the breaker is open or another dispatcher probes change nothing.
    """
    if not results:
        return None
    if state.phase is Phase.HALF_OPEN:
        if not holds_probe:
            return None
        probe, rest = results[0], results[1:]
        if not probe.healthy:
            return _opened(replace(state, consecutive_failures=state.consecutive_failures + 1), now, policy)
        after_probe = closed(state.version, state.endpoint, last_success_at=probe.at)
        folded = record(after_probe, rest, now, policy) or after_probe
        return replace(folded, version=state.version + 1)  # one write, one version
    if state.phase is Phase.OPEN:
        return None
    return _fold_closed(state, results, now, policy)


def _fold_closed(
    state: BreakerState, results: Sequence[Result], now: float, policy: BreakerPolicy
) -> BreakerState | None:
    """Merge the stored run of failures with the results sent after the last success, by send time.
    Another dispatcher's report may be older or newer than this one: a failure sent at or before the
    last success is history, an older success does not erase newer failures. Opens when the run of
    failures after the newest success reaches the threshold: a run that a success sent after it ends
    is over (the endpoint answered since), whichever report brought that success."""
    stored, since = state.failure_run, state.last_success_at
    newer = (result for result in results if result.at > since)
    # By send time; at the same time a failure goes first: an order not known does not count against
    # the endpoint, and a failure at the time of the last success is history, whichever batch brings it.
    timeline = sorted(chain((Result(at, False) for at in stored), newer), key=attrgetter("at", "healthy"))
    run: list[float] = []
    last_success_at = since
    for result in timeline:
        if result.healthy:
            run, last_success_at = [], result.at
            continue
        run.append(result.at)
    if len(run) >= policy.failure_threshold:
        counted = replace(
            state,
            consecutive_failures=policy.failure_threshold,
            failure_times=(),
            last_success_at=last_success_at,
        )
        return _opened(counted, now, policy)
    failure_times = tuple(run)
    if failure_times == stored and (not run or last_success_at == since):
        # A healthy closed breaker is never written, not even as its last success moves: no hot item.
        return None
    return replace(
        state,
        consecutive_failures=len(run),
        failure_times=failure_times,
        last_success_at=last_success_at,
        version=state.version + 1,
    )


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
    results: Sequence[Result],
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
        new = record(state, results, now, policy, holds_probe=holds_probe)
        if new is None:
            return None
        if store.save(key, new, expected_version=state.version):
            return state, new
        state, holds_probe = store.load(key), False
    return None

"""The operator's side of the circuit breakers: read every target's state, and force one closed,
lifting a quiet its receiver asked for with a Retry-After.

Reads and writes go through the dispatcher's own store (relay.ports.BreakerStore) and transitions
(relay.logic.breaker), so there is one encoding of the record and one definition of "closed". A reset
is a conditional, versioned write like any dispatcher transition: if a dispatcher changed the breaker
between our read and our write, the write loses, we read again and reset what is there now.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from relay.errors import AmbiguousTarget, ResetConflict, UnknownTarget, UnreadableRecord
from relay.logic import breaker
from relay.models.breaker import BreakerState, LaneState, Phase, endpoint_digest, target_key
from relay.models.rate_limit import BucketState, rate_key
from relay.models.targets import IntegrationEntry, Ordering, Target, UnreadableTarget
from relay.models.timestamps import iso_utc_from_epoch
from relay.ports import BreakerStore, RateLimitStore, TargetRecords
from relay.settings import Settings

RESET_ATTEMPTS = 5


def policy_from(settings: Settings) -> breaker.BreakerPolicy:
    """The reset timings the dispatcher uses (the probe lease, per target, plays no part here)."""
    return breaker.BreakerPolicy(
        failure_threshold=settings.breaker_failure_threshold,
        reset_seconds=settings.breaker_reset_seconds,
        max_reset_seconds=settings.breaker_max_reset_seconds,
    )


# --- which targets -----------------------------------------------------------------------------------
def known_targets(
    targets: TargetRecords, integration_id: str | None = None
) -> tuple[list[Target], list[UnreadableTarget]]:
    """Every target in the TargetsTable (or one integration's), ordered by integration and target, and
    every record there this release cannot read (one read of each integration)."""
    entries = list(_entries(targets, integration_id))
    readable = [target for entry in entries for target in entry.targets]
    return readable, [bad for entry in entries for _, bad in sorted(entry.unreadable.items())]


def _entries(
    targets: TargetRecords, integration_id: str | None, passed_over: list[UnreadableRecord] | None = None
) -> Iterator[IntegrationEntry]:
    """Every integration's entry (or the one named), in integration order. With ``passed_over``, an
    integration record this release cannot read is collected there instead of raised, when every
    integration is read (the one named is always raised)."""
    for ident in [integration_id] if integration_id else targets.list_integration_ids():
        try:
            entry = targets.get(ident)
        except UnreadableRecord as exc:
            if integration_id or passed_over is None:
                raise
            passed_over.append(exc)
            continue
        if entry is not None:
            yield entry


def find_target(targets: TargetRecords, target_id: str, integration_id: str | None = None) -> Target:
    """The one target with this id; raises UnknownTarget, AmbiguousTarget if several integrations
    hold it and none was chosen, or UnreadableRecord (saying why, never a value) when the id names a
    record this release cannot read: it is there, so "no target" would send the operator astray.

    Searched for in every integration, an integration record this release cannot read is passed over
    while the target is found under another: one stale record (a newer release's, before a rollback)
    must not stop an operator disabling or resetting a target of a healthy integration. Found under
    none, that record's UnreadableRecord is raised: the target may be one of its own."""
    matches: list[Target] = []
    unreadable = []
    passed_over: list[UnreadableRecord] = []
    for entry in _entries(targets, integration_id, passed_over):
        matches.extend(t for t in entry.targets if t.target_id == target_id)
        if target_id in entry.unreadable:
            unreadable.append(entry.unreadable[target_id])
    held_by = [t.integration_id for t in matches] + [bad.integration_id for bad in unreadable]
    if len(held_by) > 1:
        raise AmbiguousTarget(target_id, sorted(held_by))
    if unreadable:
        raise unreadable[0].error()
    if not matches and passed_over:
        raise passed_over[0]
    if not matches:
        under = f" under integration {integration_id}" if integration_id else ""
        raise UnknownTarget(f"no target {target_id}{under} in the TargetsTable")
    return matches[0]


# A target whose lane was never written: the fast lane.
NEVER_MOVED = LaneState()


# --- status ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BreakerView:
    """One target's breaker as an operator reads it, at ``now`` (epoch seconds)."""

    integration_id: str
    target_id: str
    name: str
    enabled: bool
    state: BreakerState
    now: float
    policy: breaker.BreakerPolicy
    lane: LaneState = NEVER_MOVED  # which dispatcher delivers its records (stored beside the breaker)
    ordered: bool = False  # ordering: conversation, delivered by the ordered lane's dispatcher
    # Until when its receiver asked for quiet (a Retry-After; epoch seconds, 0.0: never): nothing is
    # sent to it before then, whatever the breaker's phase.
    quiet_until: float = 0.0

    @property
    def opened_at(self) -> float | None:
        """When an open breaker opened. Not stored: derived from ``until`` and the reset timings."""
        if self.state.phase is not Phase.OPEN:
            return None
        return self.state.until - self.policy.reset_after(self.state.trips)

    @property
    def probe_claimed(self) -> bool:
        """A dispatcher holds the half-open probe and its lease has not lapsed."""
        return self.state.phase is Phase.HALF_OPEN and self.now < self.state.until

    @property
    def seconds_until_probe(self) -> float | None:
        """Open: until a dispatcher may claim the probe. Half-open: until the probe's lease lapses."""
        if self.state.phase is Phase.CLOSED:
            return None
        return round(breaker.seconds_until_probe(self.state, self.now), 1)

    def to_json(self) -> dict[str, Any]:
        state = self.state
        return {
            "integrationId": self.integration_id,
            "targetId": self.target_id,
            "name": self.name,
            "enabled": self.enabled,
            "phase": state.phase.value,
            "consecutiveFailures": state.consecutive_failures,
            "trips": state.trips,
            "openedAt": _iso(self.opened_at),
            "openUntil": _iso(state.until) if state.phase is Phase.OPEN else None,
            "probeLeaseUntil": _iso(state.until) if state.phase is Phase.HALF_OPEN else None,
            "secondsUntilProbe": self.seconds_until_probe,
            "probeClaimed": self.probe_claimed,
            "stored": state.version > 0,  # no record: a fresh closed breaker
            "version": state.version,
            "lane": "ordered" if self.ordered else self.lane.lane.value,
            "laneChangedAt": _iso(self.lane.changed_at) if self.lane.version else None,
            "retryAfterUntil": _iso(self.quiet_until) if self.quiet_until > self.now else None,
        }


def unreadable_view(bad: UnreadableTarget) -> dict[str, Any]:
    """The status of a target record this release cannot read: its ids and why, no breaker fields (a
    breaker is judged against the target's URL, which cannot be read either)."""
    return {"integrationId": bad.integration_id, "targetId": bad.target_id, "error": bad.why}


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc_from_epoch(epoch, "seconds")


def view(
    target: Target,
    state: BreakerState,
    now: float,
    policy: breaker.BreakerPolicy,
    lane: LaneState = NEVER_MOVED,
    quiet_until: float = 0.0,
) -> BreakerView:
    return BreakerView(
        target.integration_id,
        target.target_id,
        target.name,
        target.enabled,
        state,
        now,
        policy,
        lane,
        ordered=target.ordering is Ordering.CONVERSATION,
        quiet_until=quiet_until,
    )


def breaker_views(
    breakers: BreakerStore,
    buckets: RateLimitStore,
    targets: Iterable[Target],
    now: float,
    policy: breaker.BreakerPolicy,
) -> list[BreakerView]:
    """Each target's stored breaker and lane (one consistent read each) and its Retry-After quiet; a
    target without a record is closed, in the fast lane."""
    views = []
    for t in targets:
        state, lane = breakers.load_with_lane(target_key(t.integration_id, t.target_id))
        bucket = buckets.load(rate_key(t.integration_id, t.target_id)) or BucketState()
        quiet = max(lane.retry_after_until, bucket.floor_until)
        # As the dispatchers see it: failures counted at an earlier URL of the target do not count.
        views.append(view(t, state.for_endpoint(endpoint_digest(t.url)), now, policy, lane, quiet))
    return views


# --- reset -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResetResult:
    before: BreakerState  # as read by the attempt that decided (after any concurrent change)
    after: BreakerState
    written: bool  # False: it was closed and clean already
    attempts: int  # reads made; more than 1 means a dispatcher wrote in between and we re-read
    lane: LaneState = NEVER_MOVED  # read with the breaker; a reset leaves it as it is

    @property
    def concurrent_changes(self) -> int:
        return self.attempts - 1


def reset_breaker(
    store: BreakerStore, key: str, *, endpoint: str | None = None, attempts: int = RESET_ATTEMPTS
) -> ResetResult:
    """Force the breaker closed with a conditional write; re-read and retry when a dispatcher wins.
    ``endpoint``: the target's URL digest, to judge the breaker as the dispatchers (and ``status``) do:
    failures counted at an earlier URL leave nothing to reset.

    Raises ResetConflict if every attempt lost its race, BreakerStoreUnavailable if DynamoDB fails."""
    for attempt in range(1, attempts + 1):
        stored, lane = store.load_with_lane(key)
        before = stored.for_endpoint(endpoint) if endpoint is not None else stored
        after = breaker.reset(before)
        if after is None:
            return ResetResult(before, before, written=False, attempts=attempt, lane=lane)
        if store.save(key, after, expected_version=before.version):
            return ResetResult(before, after, written=True, attempts=attempt, lane=lane)
    raise ResetConflict(f"breaker {key} changed under each of {attempts} reset attempts; nothing written")


# --- lifting a Retry-After ---------------------------------------------------------------------------
@dataclass(frozen=True)
class QuietLift:
    """What lifting a target's Retry-After quiet did (epoch seconds; 0.0: none)."""

    lifted_until: float  # the quiet that was ahead and is lifted
    kept_until: float  # a quiet the receiver asked for again while it was lifted: kept, it is news
    seen_until: float = 0.0  # the quiet in force when read, before the lift (status's retryAfterUntil)

    def to_json(self) -> dict[str, str | None]:
        return {
            "retryAfterLifted": _iso(self.lifted_until or None),
            "retryAfterUntil": _iso(self.kept_until or None),
        }


def lift_quiet(breakers: BreakerStore, buckets: RateLimitStore, target: Target, now: float) -> QuietLift:
    """Lift the Retry-After quiet stored for ``target``: the breaker item's mark (what dispatchers not
    metering it read) and its bucket's floor (what metered ones read). Each is removed only if it is
    still the one read: a dispatcher told to keep quiet again meanwhile wins, and that is reported.

    Raises BreakerStoreUnavailable or RateLimitStoreUnavailable if DynamoDB fails."""
    breaker_key, bucket_key = (
        target_key(target.integration_id, target.target_id),
        rate_key(target.integration_id, target.target_id),
    )
    lifted = kept = 0.0
    mark = breakers.load_with_lane(breaker_key)[1].retry_after_until
    if mark > now:
        if breakers.lift_retry_after(breaker_key, seen=mark):
            lifted = mark
        else:
            kept = breakers.load_with_lane(breaker_key)[1].retry_after_until
    floor = (buckets.load(bucket_key) or BucketState()).floor_until
    if floor > now:
        answer = buckets.lift_floor(bucket_key, seen=floor)
        if answer.written:
            lifted = max(lifted, floor)
        else:
            kept = max(kept, answer.state.floor_until if answer.state else 0.0)
    seen = max(mark, floor)
    return QuietLift(lifted, kept if kept > now else 0.0, seen if seen > now else 0.0)

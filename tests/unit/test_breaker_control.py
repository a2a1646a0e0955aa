"""The operator's reset and status view of a breaker, against the in-memory store (no sockets)."""

from __future__ import annotations

import pytest

from relay.errors import ResetConflict
from relay.logic import breaker
from relay.logic.breaker_control import BreakerView, QuietLift, lift_quiet, reset_breaker
from relay.models.breaker import BreakerState, Phase, endpoint_digest, target_key
from relay.models.rate_limit import BucketAnswer, BucketState, rate_key
from relay.models.targets import Target
from relay.testing.fakes import InMemoryBreakerStore, InMemoryRateLimitStore

POLICY = breaker.BreakerPolicy(
    failure_threshold=5, reset_seconds=30, max_reset_seconds=600, probe_lease_seconds=20
)
NOW = 1_000_000.0
KEY = "integration#target"


class DispatcherRacingStore(InMemoryBreakerStore):
    """Before each of the first ``races`` saves, a dispatcher's transition lands first (a failure folded
    into a closed breaker, or the probe claimed on an open one): the interleaving a reset must survive."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.raced: list[BreakerState] = []

    def save(self, key: str, state: BreakerState, *, expected_version: int) -> bool:
        if (
            self.races
            and state.phase is Phase.CLOSED
            and state.trips == 0
            and state.consecutive_failures == 0
        ):
            self.races -= 1
            current = self.load(key)
            admission, claim = breaker.admit(current, current.until, POLICY)
            moved = (
                claim
                if admission is breaker.Admission.PROBE
                else breaker.record(current, [breaker.Result(NOW, healthy=False)], NOW, POLICY)
            )
            assert moved is not None and super().save(key, moved, expected_version=current.version)
            self.raced.append(moved)
        return super().save(key, state, expected_version=expected_version)


def test_reset_is_a_versioned_transition_to_the_same_closed_state_a_probe_leaves() -> None:
    opened = BreakerState(Phase.OPEN, 5, 2, NOW + 60, 7)
    assert breaker.reset(opened) == breaker.closed(8) == BreakerState(Phase.CLOSED, 0, 0, 0.0, 8)
    probing = BreakerState(Phase.HALF_OPEN, 5, 2, NOW, 8)
    after_probe = breaker.record(probing, [breaker.Result(NOW, healthy=True)], NOW, POLICY, holds_probe=True)
    assert after_probe == breaker.closed(9, last_success_at=NOW)
    assert breaker.reset(BreakerState(consecutive_failures=3, version=4)) == breaker.closed(5)
    assert breaker.reset(BreakerState(version=4)) is None  # closed and clean: nothing to write
    # The last success stays: what the endpoint answered before it is history still
    counted = BreakerState(consecutive_failures=3, failure_times=(NOW, NOW, NOW), last_success_at=NOW - 1)
    assert breaker.reset(counted) == breaker.closed(1, last_success_at=NOW - 1)
    assert breaker.reset(BreakerState(last_success_at=NOW, version=4)) is None
    assert breaker.reset(BreakerState()) is None  # no record at all


def test_reset_closes_an_open_breaker_and_reports_before_and_after() -> None:
    store = InMemoryBreakerStore()
    assert store.save(KEY, BreakerState(Phase.OPEN, 5, 1, NOW + 30, 3), expected_version=0)
    result = reset_breaker(store, KEY)
    assert (result.before.phase, result.before.version) == (Phase.OPEN, 3)
    assert result.after == breaker.closed(4) and result.written and result.attempts == 1
    assert store.load(KEY) == breaker.closed(4)


def test_reset_of_a_clean_closed_breaker_writes_nothing() -> None:
    store = InMemoryBreakerStore()
    result = reset_breaker(store, KEY)
    assert not result.written and result.after == BreakerState() and store.writes == 0


def test_a_dispatcher_transition_between_read_and_write_is_re_read_not_overwritten() -> None:
    store = DispatcherRacingStore(races=1)
    assert InMemoryBreakerStore.save(
        store, KEY, BreakerState(Phase.OPEN, 5, 1, NOW - 1, 3), expected_version=0
    )
    result = reset_breaker(store, KEY)
    (claimed,) = store.raced
    assert claimed.phase is Phase.HALF_OPEN and claimed.version == 4
    # the reset's first write lost; it re-read the claimed state and closed that one
    assert result.attempts == 2 and result.concurrent_changes == 1
    assert result.before == claimed and result.after == breaker.closed(5) == store.load(KEY)


def test_a_breaker_that_keeps_changing_is_left_alone_with_an_error() -> None:
    store = DispatcherRacingStore(races=10)
    InMemoryBreakerStore.save(store, KEY, BreakerState(consecutive_failures=1, version=1), expected_version=0)
    with pytest.raises(ResetConflict):
        reset_breaker(store, KEY, attempts=3)
    assert store.load(KEY) == store.raced[-1]  # the dispatchers' last transition stands


def _view(state: BreakerState, now: float) -> BreakerView:
    return BreakerView("i", "t", "name", True, state, now, POLICY)


def test_status_view_of_an_open_breaker_derives_when_it_opened_and_when_a_probe_may_go() -> None:
    doc = _view(BreakerState(Phase.OPEN, 6, 2, NOW + 60, 9), NOW + 10).to_json()
    assert doc["phase"] == "open" and (doc["consecutiveFailures"], doc["trips"], doc["version"]) == (6, 2, 9)
    assert doc["secondsUntilProbe"] == 50.0 and doc["probeClaimed"] is False
    assert doc["openedAt"] == "1970-01-12T13:46:40Z"  # until - 30 s * 2^(2-1) = NOW
    assert doc["openUntil"] == "1970-01-12T13:47:40Z" and doc["probeLeaseUntil"] is None


def test_status_view_of_half_open_shows_the_probe_claimed_until_its_lease_lapses() -> None:
    half = BreakerState(Phase.HALF_OPEN, 5, 1, NOW + 20, 8)
    assert _view(half, NOW).to_json()["probeClaimed"] is True
    lapsed = _view(half, NOW + 21).to_json()
    assert lapsed["probeClaimed"] is False and lapsed["secondsUntilProbe"] == 0.0
    assert lapsed["openedAt"] is None and lapsed["probeLeaseUntil"] is not None


def test_status_view_of_a_target_without_a_record_is_closed_and_not_stored() -> None:
    doc = _view(BreakerState(), NOW).to_json()
    assert (doc["phase"], doc["stored"], doc["secondsUntilProbe"], doc["openedAt"]) == (
        "closed",
        False,
        None,
        None,
    )


def test_a_breaker_opened_at_an_earlier_url_is_judged_as_the_current_url_sees_it() -> None:
    # Given a breaker opened by failures at the target's old URL
    old, new = endpoint_digest("https://old.example.com/h"), endpoint_digest("https://new.example.com/h")
    store = InMemoryBreakerStore()
    assert store.save(KEY, BreakerState(Phase.OPEN, 5, 1, NOW + 30, 3, endpoint=old), expected_version=0)

    # When an operator resets it for the target as it is now (its new URL)
    result = reset_breaker(store, KEY, endpoint=new)

    # Then there is nothing to reset: the dispatchers (and status) already see it closed, as `status` shows
    assert (result.before.phase, result.written, store.writes) == (Phase.CLOSED, False, 1)
    # And for the old URL it is the open breaker it was, reset as usual
    assert reset_breaker(store, KEY, endpoint=old).after == breaker.closed(4, old)


# --- lifting a Retry-After quiet ------------------------------------------------------------------------
TARGET = Target(integration_id="int-1", target_id="crm", name="crm", url="https://crm.example.com/hook")


class ThrottledAgainStore(InMemoryRateLimitStore):
    """A dispatcher is answered another Retry-After, and raises the floor, just before the lift."""

    def lift_floor(self, key: str, *, seen: float) -> BucketAnswer:
        self.raise_floor(key, floor_until=seen + 600)
        return super().lift_floor(key, seen=seen)


def test_lifting_removes_the_mark_and_the_floor_and_reports_the_latest() -> None:
    breakers, buckets = InMemoryBreakerStore(), InMemoryRateLimitStore()
    breakers.mark_retry_after(target_key("int-1", "crm"), NOW + 30)
    buckets.raise_floor(rate_key("int-1", "crm"), floor_until=NOW + 3600)

    lifted = lift_quiet(breakers, buckets, TARGET, NOW)

    assert lifted == QuietLift(lifted_until=NOW + 3600, kept_until=0.0, seen_until=NOW + 3600)
    assert breakers.load_with_lane(target_key("int-1", "crm"))[1].retry_after_until == 0.0
    assert (buckets.load(rate_key("int-1", "crm")) or BucketState()).floor_until == 0.0
    # A quiet already over is not one to lift: nothing written
    writes = (breakers.writes, buckets.writes)
    breakers.mark_retry_after(target_key("int-1", "crm"), NOW - 1)
    assert lift_quiet(breakers, buckets, TARGET, NOW) == QuietLift(0.0, 0.0)
    assert (breakers.writes, buckets.writes) == (writes[0] + 1, writes[1])


def test_a_retry_after_answered_while_lifting_is_kept_and_reported() -> None:
    breakers, buckets = InMemoryBreakerStore(), ThrottledAgainStore()
    buckets.raise_floor(rate_key("int-1", "crm"), floor_until=NOW + 60)

    lifted = lift_quiet(breakers, buckets, TARGET, NOW)

    assert lifted == QuietLift(lifted_until=0.0, kept_until=NOW + 660, seen_until=NOW + 60)
    assert (buckets.load(rate_key("int-1", "crm")) or BucketState()).floor_until == NOW + 660

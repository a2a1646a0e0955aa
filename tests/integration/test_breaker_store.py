"""The shared breaker against its stores: an in-memory store and DynamoDB on a moto server.

A Hypothesis state machine plays several dispatchers opening gates, reporting results (answered up
to a few seconds before they are reported, so reports reach the store out of answer order), dying
mid-probe, moving the target between delivery lanes (stored in the same item on a version of its own)
and letting time pass, and checks after every step that the stored state is coherent, that a
half-open breaker has exactly one live probe, and that lane moves and breaker transitions never undo
each other. Then 8 threads race for one probe.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from relay.local.aws_stack import LocalResources
from relay.logic.breaker import (
    Admission,
    BreakerPolicy,
    BreakerState,
    Gate,
    Phase,
    Result,
    open_gate,
    report,
)
from relay.models.breaker import DeliveryLane, LaneState, endpoint_digest
from relay.ports import BreakerStore
from relay.settings import get_settings
from relay.testing.fakes import InMemoryBreakerStore
from relay.wiring import aws_client, breaker_store

pytestmark = pytest.mark.integration

POLICY = BreakerPolicy(failure_threshold=3, reset_seconds=10, max_reset_seconds=40, probe_lease_seconds=5)
DISPATCHERS = st.integers(min_value=0, max_value=3)
# (seconds before the report the endpoint answered, healthy)
RESULTS = st.lists(st.tuples(st.sampled_from([0.0, 0.3, 1.0, 4.0]), st.booleans()), min_size=1, max_size=4)


class LaneMoves(RuleBasedStateMachine):
    """Dispatchers moving the target between lanes, interleaved with the breaker machine's steps."""

    store: BreakerStore
    key: str
    now: float
    lane: LaneState

    @rule(stale=st.booleans())
    def a_dispatcher_moves_the_lane(self, stale: bool) -> None:
        self.lane = _move_lane(self.store, self.key, self.now, stale=stale) or self.lane


def machine_for(make_store: Callable[[], BreakerStore]) -> type[RuleBasedStateMachine]:
    class BreakerMachine(LaneMoves):
        def __init__(self) -> None:
            super().__init__()
            self.store = make_store()
            self.key = f"integration#{uuid.uuid4()}"
            self.now = 1_000_000.0
            self.gates: dict[int, Gate] = {}
            self.probe_versions: set[int] = set()
            self.abandoned_versions: set[int] = set()
            self.last_version = 0
            self.lane = LaneState()

        @rule(dispatcher=DISPATCHERS)
        def open_a_gate(self, dispatcher: int) -> None:
            if dispatcher in self.gates:
                return
            gate = open_gate(self.store, self.key, self.now, POLICY)
            if gate.admission is Admission.PROBE:
                # exactly one winner per half-open claim
                assert gate.state.version not in self.probe_versions
                self.probe_versions.add(gate.state.version)
            if gate.admission is not Admission.DEFER:
                self.gates[dispatcher] = gate

        @rule(dispatcher=DISPATCHERS, answered=RESULTS)
        def report_results(self, dispatcher: int, answered: list[tuple[float, bool]]) -> None:
            gate = self.gates.pop(dispatcher, None)
            if gate is None:
                return
            results = [Result(self.now - before, healthy) for before, healthy in answered]
            written = report(self.store, self.key, gate, results, self.now, POLICY)
            if written is not None:
                old, new = written
                if new.phase is Phase.OPEN and old.phase is not Phase.OPEN:
                    # the open period grows with consecutive trips and is capped
                    assert new.until - self.now == POLICY.reset_after(new.trips) <= POLICY.max_reset_seconds

        @precondition(lambda self: any(g.admission is Admission.PROBE for g in self.gates.values()))
        @rule(data=st.data())
        def a_probing_dispatcher_dies(self, data: st.DataObject) -> None:
            probing = sorted(d for d, g in self.gates.items() if g.admission is Admission.PROBE)
            dispatcher = data.draw(st.sampled_from(probing))
            self.abandoned_versions.add(self.gates.pop(dispatcher).state.version)

        @rule(seconds=st.sampled_from([0.5, 2.0, 6.0, 11.0, 45.0]))
        def time_passes(self, seconds: float) -> None:
            self.now += seconds

        @invariant()
        def the_stored_state_is_coherent(self) -> None:
            state, lane = self.store.load_with_lane(self.key)
            assert lane == self.lane, "a breaker write changed the lane"
            assert state == self.store.load(self.key)
            assert state.version >= self.last_version
            self.last_version = state.version
            if state.phase is Phase.CLOSED:
                assert state.consecutive_failures < POLICY.failure_threshold and state.trips == 0
                # the failures counted, in answer order, all since the last success
                assert state.failure_times == state.failure_run == tuple(sorted(state.failure_times))
                assert all(at > state.last_success_at for at in state.failure_times)
            else:
                assert state.trips >= 1
            live_probes = [
                g for g in self.gates.values() if g.admission is Admission.PROBE and g.state.until > self.now
            ]
            assert len(live_probes) <= 1
            if state.phase is Phase.HALF_OPEN:
                holders = [g for g in self.gates.values() if g.state.version == state.version]
                assert len(holders) == 1 or state.version in self.abandoned_versions

    return BreakerMachine


def _move_lane(store: BreakerStore, key: str, now: float, *, stale: bool) -> LaneState | None:
    """A dispatcher moves the target to the other lane: the lane written, or None when its read was
    ``stale`` (made before the last move), so its conditional write must lose."""
    _, lane = store.load_with_lane(key)
    other = DeliveryLane.SLOW if lane.lane is DeliveryLane.FAST else DeliveryLane.FAST
    moved = LaneState(other, lane.version + 1, now)
    if stale and lane.version > 0:
        assert not store.save_lane(key, moved, expected_version=lane.version - 1)
        return None
    assert store.save_lane(key, moved, expected_version=lane.version)
    return moved


def test_breaker_transitions_hold_against_the_in_memory_store() -> None:
    run_state_machine_as_test(
        machine_for(InMemoryBreakerStore),
        settings=settings(max_examples=150, stateful_step_count=40, deadline=None),
    )


def test_breaker_transitions_hold_against_dynamodb_on_moto(aws_stack: LocalResources) -> None:
    run_state_machine_as_test(
        machine_for(lambda: breaker_store(get_settings())),
        settings=settings(
            max_examples=12,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def _one_round(store: BreakerStore, racers: int) -> list[Gate]:
    """An open breaker whose reset timeout is over, and ``racers`` dispatchers opening its gate at once."""
    key = f"integration#{uuid.uuid4()}"
    assert store.save(key, BreakerState(Phase.OPEN, 3, 1, 100.0, 1), expected_version=0)
    barrier = threading.Barrier(racers)
    gates: list[Gate] = []
    lock = threading.Lock()

    def dispatcher() -> None:
        barrier.wait()
        gate = open_gate(store, key, 200.0, POLICY)
        with lock:
            gates.append(gate)

    threads = [threading.Thread(target=dispatcher) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return gates


def _race(store: BreakerStore, rounds: int, racers: int = 8) -> list[int]:
    winners_per_round = []
    for _ in range(rounds):
        gates = _one_round(store, racers)
        assert len(gates) == racers
        assert all(g.admission in (Admission.PROBE, Admission.DEFER) for g in gates)
        winners_per_round.append(sum(g.admission is Admission.PROBE for g in gates))
    return winners_per_round


def test_eight_dispatchers_racing_in_memory_exactly_one_probes() -> None:
    assert _race(InMemoryBreakerStore(), rounds=50) == [1] * 50


def test_eight_dispatchers_racing_on_dynamodb_exactly_one_probes(aws_stack: LocalResources) -> None:
    assert _race(breaker_store(get_settings()), rounds=10) == [1] * 10


def test_the_endpoint_a_breaker_counted_at_is_stored_with_it(aws_stack: LocalResources) -> None:
    store = breaker_store(get_settings())
    counted = BreakerState(Phase.OPEN, 5, 1, 100.0, 1, endpoint=endpoint_digest("https://old.example.com/h"))
    key = f"integration#{uuid.uuid4()}"

    assert store.save(key, counted, expected_version=0)

    # Read back whole; as the breaker of another URL, a fresh closed one on the stored version
    assert store.load(key) == counted
    moved = store.load(key).for_endpoint(endpoint_digest("https://new.example.com/h"))
    assert (moved.phase, moved.consecutive_failures, moved.version) == (Phase.CLOSED, 0, 1)
    assert store.save(key, replace(moved, consecutive_failures=1, version=2), expected_version=1)


def _store_on(backend: str, request: pytest.FixtureRequest) -> BreakerStore:
    if backend == "in-memory":
        return InMemoryBreakerStore()
    request.getfixturevalue("aws_stack")
    return breaker_store(get_settings())


@pytest.mark.parametrize("backend", ["in-memory", "dynamodb"])
def test_a_metered_mark_only_moves_later_and_lives_beside_breaker_and_lane(
    backend: str, request: pytest.FixtureRequest
) -> None:
    store = _store_on(backend, request)
    key = f"integration#{uuid.uuid4()}"

    # Marked on an item that holds nothing yet, then a lane move and a breaker transition are saved
    store.mark_retry_after(key, 500.0)
    assert store.save_lane(key, LaneState(DeliveryLane.SLOW, 1, 10.0), expected_version=0)
    assert store.save(key, BreakerState(Phase.OPEN, 3, 1, 60.0, 1), expected_version=0)
    # An earlier mark (a dispatcher that saw the throttle before) changes nothing; a later one moves it
    store.mark_retry_after(key, 400.0)
    breaker, lane = store.load_with_lane(key)
    assert lane == LaneState(DeliveryLane.SLOW, 1, 10.0, retry_after_until=500.0) and breaker.version == 1
    store.mark_retry_after(key, 900.0)
    assert store.load_with_lane(key)[1].retry_after_until == 900.0


@pytest.mark.parametrize("backend", ["in-memory", "dynamodb"])
def test_a_mark_is_lifted_only_while_it_is_the_one_read(backend: str, request: pytest.FixtureRequest) -> None:
    store = _store_on(backend, request)
    key = f"integration#{uuid.uuid4()}"
    assert not store.lift_retry_after(key, seen=500.0)  # nothing marked
    store.mark_retry_after(key, 500.0)
    assert store.save(key, BreakerState(Phase.OPEN, 3, 1, 60.0, 1), expected_version=0)

    # Marked later since it was read: kept
    store.mark_retry_after(key, 900.0)
    assert not store.lift_retry_after(key, seen=500.0)
    assert store.load_with_lane(key)[1].retry_after_until == 900.0

    # Lifted as read: gone, the breaker beside it untouched, and a shorter mark is taken again
    assert store.lift_retry_after(key, seen=900.0)
    breaker, lane = store.load_with_lane(key)
    assert lane.retry_after_until == 0.0 and breaker.version == 1
    store.mark_retry_after(key, 100.0)
    assert store.load_with_lane(key)[1].retry_after_until == 100.0


# --- the failures' answer times, and items written by the release before -------------------------------


def _item(aws_stack: LocalResources, key: str) -> dict[str, Any]:
    item: dict[str, Any] = aws_client("dynamodb").get_item(
        TableName=aws_stack.breaker_table, Key={"targetKey": {"S": key}}, ConsistentRead=True
    )["Item"]
    return item


def _write_as_the_release_before(aws_stack: LocalResources, key: str, failures: int, version: int) -> None:
    """The release before's breaker write: it SETs only the attributes it knows."""
    aws_client("dynamodb").update_item(
        TableName=aws_stack.breaker_table,
        Key={"targetKey": {"S": key}},
        UpdateExpression="SET phase = :phase, consecutiveFailures = :failures, trips = :trips, "
        "#until = :until, version = :version",
        ExpressionAttributeNames={"#until": "until"},
        ExpressionAttributeValues={
            ":phase": {"S": "closed"},
            ":failures": {"N": str(failures)},
            ":trips": {"N": "0"},
            ":until": {"N": "0.0"},
            ":version": {"N": str(version)},
        },
    )


def test_the_failures_answer_times_and_the_last_success_round_trip(aws_stack: LocalResources) -> None:
    store = breaker_store(get_settings())
    key = f"integration#{uuid.uuid4()}"
    times = (1_000_010.25, 1_000_011.5)
    counted = BreakerState(consecutive_failures=2, version=1, failure_times=times, last_success_at=1e6 + 9)

    assert store.save(key, counted, expected_version=0)

    assert store.load(key) == counted
    item = _item(aws_stack, key)
    assert item["failureTimes"] == {"L": [{"N": "1000010.25"}, {"N": "1000011.5"}]}
    assert item["lastSuccessAt"] == {"N": "1000009.0"}


def test_an_item_of_the_release_before_reads_its_count_with_no_times(aws_stack: LocalResources) -> None:
    # Given an item only the release before ever wrote: three failures counted
    store = breaker_store(get_settings())
    key = f"integration#{uuid.uuid4()}"
    _write_as_the_release_before(aws_stack, key, failures=3, version=1)

    # Then the count is kept, its failures read as answered at the last success (none: 0)
    state = store.load(key)
    assert (state.consecutive_failures, state.failure_times, state.last_success_at) == (3, (), 0.0)
    assert state.failure_run == (0.0, 0.0, 0.0)


def test_a_count_the_release_before_wrote_over_stale_times_is_trusted(aws_stack: LocalResources) -> None:
    # Given failures answered at 10, 11, 12 after a success at 9, written by this release
    store = breaker_store(get_settings())
    key = f"integration#{uuid.uuid4()}"
    counted = BreakerState(consecutive_failures=2, version=1, failure_times=(10.0, 11.0), last_success_at=9.0)
    assert store.save(key, counted, expected_version=0)

    # When the release before folds a success, then a failure: its count is 1, the times are stale
    _write_as_the_release_before(aws_stack, key, failures=0, version=2)
    _write_as_the_release_before(aws_stack, key, failures=1, version=3)

    # Then the count is what is read; of the stored times, only the last one stands for it
    state = store.load(key)
    assert (state.consecutive_failures, state.failure_run, state.version) == (1, (11.0,), 3)
    # and when the release before counted more than were stored, the rest read as at the last success
    _write_as_the_release_before(aws_stack, key, failures=4, version=4)
    assert store.load(key).failure_run == (9.0, 9.0, 10.0, 11.0)

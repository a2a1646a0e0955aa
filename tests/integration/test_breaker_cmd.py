"""``relay breaker status | reset`` against the dispatcher's own breaker state in moto's DynamoDB.

The breaker is opened the way production opens it: the dispatcher delivers to a loopback receiver that
answers 503. The commands run through ``relay.cli.main``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from test_dispatch_support import (
    INTEGRATION_ID,
    PLAIN_TARGET,
    ManualClock,
    secret_name,
    seed_target,
    task_record,
)

from relay.adapters.aws import AwsClients
from relay.adapters.breaker_store import DynamoBreakerStore
from relay.cli import main
from relay.local.aws_stack import LocalResources
from relay.local.receiver import Behaviour, Receiver
from relay.logic.dispatch import Dispatcher
from relay.models.breaker import DeliveryLane, LaneState, Phase, target_key
from relay.models.secrets import SecretKind
from relay.models.targets import Integration, Ordering
from relay.settings import get_settings
from relay.wiring import aws_client, breaker_store, target_store
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration
KEY = target_key(INTEGRATION_ID, PLAIN_TARGET)
OTHER_TARGET = "5c4b3a29-1807-4f6e-9d5c-4b3a29180706"
ORDERED_TARGET = "0d0e0f10-1807-4f6e-9d5c-4b3a29180706"
OTHER_INTEGRATION = "0f1e2d3c-4b5a-4697-8877-665544332211"


@pytest.fixture
def dispatcher(aws_stack: LocalResources, clock: ManualClock) -> Dispatcher:
    """A dispatcher with its own DynamoDB client for the breaker, so hooks on the shared client (the one
    the CLI uses) see only the CLI's calls. Default reset timeout (30 s): an open breaker stays open."""
    own_client = AwsClients(get_settings()).client("dynamodb")
    return build_dispatcher(
        get_settings(), clock=clock, breakers=DynamoBreakerStore(own_client, aws_stack.breaker_table)
    )


def _open_breaker(resources: LocalResources, receiver: Receiver, dispatcher: Dispatcher) -> None:
    receiver.behaviour = Behaviour(status=503)
    seed_target(resources, f"{receiver.url}/hooks/crm", attempts=10)
    dispatcher.handle_batch([task_record() for _ in range(5)])
    receiver.behaviour = Behaviour(status=200)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the dispatcher logged before the command
    code = main(["breaker", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_status_shows_the_breaker_the_dispatcher_opened(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    _open_breaker(aws_stack, receiver, dispatcher)
    stored = breaker_store(get_settings()).load(KEY)

    code, out, _ = _run(capsys, "status", PLAIN_TARGET, "--format", "json")

    assert code == 0
    (doc,) = _json_lines(out)
    assert (doc["integrationId"], doc["targetId"], doc["phase"]) == (INTEGRATION_ID, PLAIN_TARGET, "open")
    assert (doc["consecutiveFailures"], doc["trips"], doc["version"]) == (5, 1, stored.version)
    assert doc["probeClaimed"] is False and doc["stored"] is True
    assert 0 < doc["secondsUntilProbe"] <= 30  # default BREAKER_RESET_SECONDS on the first trip
    assert doc["openedAt"] is not None and doc["openUntil"] is not None

    code, out, _ = _run(capsys, "status", PLAIN_TARGET)
    header, row = out.splitlines()
    assert header.split()[:6] == ["INTEGRATION", "TARGET", "NAME", "PHASE", "FAILS", "TRIPS"]
    assert row.split()[1:6] == [PLAIN_TARGET, f"target-{PLAIN_TARGET[:8]}", "open", "5", "1"]


def test_status_without_a_target_lists_every_target_and_one_without_a_record_is_closed(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    _open_breaker(aws_stack, receiver, dispatcher)
    seed_target(aws_stack, f"{receiver.url}/hooks/other", target_id=OTHER_TARGET)

    code, out, _ = _run(capsys, "status", "--format", "json")

    assert code == 0
    phases = {doc["targetId"]: (doc["phase"], doc["stored"]) for doc in _json_lines(out)}
    assert phases == {PLAIN_TARGET: ("open", True), OTHER_TARGET: ("closed", False)}


def test_status_shows_which_lane_each_target_is_in(
    aws_stack: LocalResources, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three targets: one ordered per conversation, one moved to the slow lane by a dispatcher (its
    # lane, beside a breaker that never opened), one as it started
    seed_target(aws_stack, f"{receiver.url}/hooks/plain")
    seed_target(aws_stack, f"{receiver.url}/hooks/other", target_id=OTHER_TARGET)
    ordered = seed_target(aws_stack, f"{receiver.url}/hooks/ordered", target_id=ORDERED_TARGET)
    target_store(get_settings()).put_target(ordered.model_copy(update={"ordering": Ordering.CONVERSATION}))
    moved = LaneState(DeliveryLane.SLOW, version=1, changed_at=1_796_000_000.0)
    assert breaker_store(get_settings()).save_lane(
        target_key(INTEGRATION_ID, OTHER_TARGET), moved, expected_version=0
    )

    # When an operator reads the breakers
    code, out, _ = _run(capsys, "status", "--format", "json")
    _, table, _ = _run(capsys, "status")

    # Then each says its lane (and when it moved), in JSON and in the table
    assert code == 0
    lanes = {doc["targetId"]: (doc["lane"], doc["laneChangedAt"], doc["stored"]) for doc in _json_lines(out)}
    assert lanes == {
        PLAIN_TARGET: ("fast", None, False),
        OTHER_TARGET: ("slow", "2026-11-30T00:53:20Z", False),
        ORDERED_TARGET: ("ordered", None, False),
    }
    assert "LANE" in table.splitlines()[0] and "slow" in table


def test_reset_closes_the_breaker_and_the_next_batch_is_delivered(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    _open_breaker(aws_stack, receiver, dispatcher)
    opened = breaker_store(get_settings()).load(KEY)
    assert opened.phase is Phase.OPEN

    code, out, _ = _run(capsys, "reset", PLAIN_TARGET, "--format", "json")

    assert code == 0
    doc = json.loads(out)
    assert doc["written"] is True and doc["attempts"] == 1
    before, after = doc["before"], doc["after"]
    assert (before["phase"], before["consecutiveFailures"], before["trips"]) == ("open", 5, 1)
    assert (after["phase"], after["consecutiveFailures"], after["trips"]) == ("closed", 0, 0)
    assert after["version"] == opened.version + 1
    state = breaker_store(get_settings()).load(KEY)
    assert (state.phase, state.consecutive_failures, state.trips, state.version) == (
        Phase.CLOSED,
        0,
        0,
        opened.version + 1,
    )

    # The dispatcher reads the same record: the next record goes straight to the (healthy) target.
    delivery_id = str(uuid.uuid4())
    result = dispatcher.handle_batch([task_record(delivery_id=delivery_id)])
    assert result == {"batchItemFailures": []}
    assert delivery_id in receiver.unique_delivery_ids

    # A second reset finds nothing to do and writes nothing.
    code, out, _ = _run(capsys, "reset", PLAIN_TARGET)
    assert code == 0 and "nothing written" in out
    assert breaker_store(get_settings()).load(KEY).version == opened.version + 1


def test_status_shows_a_retry_after_quiet_and_reset_lifts_it_for_the_dispatcher_that_saw_it(
    aws_stack: LocalResources,
    receiver: Receiver,
    dispatcher: Dispatcher,
    clock: ManualClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a target that answered 429 asking for an hour of quiet: its breaker stays closed, but the
    # dispatcher holds its next record back
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=10)
    receiver.behaviour = Behaviour(status=429, retry_after_seconds=3600)
    dispatcher.handle_batch([task_record()])
    receiver.behaviour = Behaviour(status=200)
    held_id = str(uuid.uuid4())
    assert dispatcher.handle_batch([task_record(delivery_id=held_id)]) == {"batchItemFailures": []}
    assert held_id not in receiver.unique_delivery_ids

    # When an operator reads the breaker, the quiet shows beside its closed phase
    code, out, _ = _run(capsys, "status", PLAIN_TARGET, "--format", "json")
    (doc,) = _json_lines(out)
    assert code == 0 and doc["phase"] == "closed" and doc["retryAfterUntil"] is not None
    quiet_until = doc["retryAfterUntil"]
    code, out, _ = _run(capsys, "status", PLAIN_TARGET)
    header, row = out.splitlines()
    assert header.split()[-2:] == ["QUIET", "UNTIL"] and row.split()[-1] == quiet_until

    # And the reset lifts it, and says so
    code, out, _ = _run(capsys, "reset", PLAIN_TARGET, "--format", "json")
    doc = json.loads(out)
    assert code == 0 and (doc["retryAfterLifted"], doc["retryAfterUntil"]) == (quiet_until, None)
    # its before and after are status's objects: the quiet in force before, none after
    assert (doc["before"]["retryAfterUntil"], doc["after"]["retryAfterUntil"]) == (quiet_until, None)
    code, out, _ = _run(capsys, "status", PLAIN_TARGET, "--format", "json")
    assert _json_lines(out)[0]["retryAfterUntil"] is None

    # Then the dispatcher that saw the quiet delivers the target's next record at once
    delivery_id = str(uuid.uuid4())
    assert dispatcher.handle_batch([task_record(delivery_id=delivery_id)]) == {"batchItemFailures": []}
    assert delivery_id in receiver.unique_delivery_ids

    # And a reset with no quiet to lift says nothing of one; one with a quiet names it
    code, out, _ = _run(capsys, "reset", PLAIN_TARGET)
    assert code == 0 and "Retry-After" not in out
    receiver.behaviour = Behaviour(status=429, retry_after_seconds=600)
    clock.now += 10  # past the bookings of the implicit limit the first 429 started
    dispatcher.handle_batch([task_record()])
    code, out, _ = _run(capsys, "reset", PLAIN_TARGET)
    assert code == 0 and re.search(rf"Retry-After quiet of {PLAIN_TARGET} until \S+ lifted", out)


def test_a_dispatcher_transition_between_the_resets_read_and_write_is_not_lost(
    aws_stack: LocalResources,
    receiver: Receiver,
    dispatcher: Dispatcher,
    clock: ManualClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _open_breaker(aws_stack, receiver, dispatcher)
    opened = breaker_store(get_settings()).load(KEY)
    receiver.behaviour = Behaviour(status=503)
    raced: list[int] = []

    def dispatcher_runs_first(**_: Any) -> None:
        # Between the reset's read and its first write, the reset timeout has passed for a dispatcher:
        # it claims the probe, the probe fails, the breaker re-opens for longer (trips 2).
        if raced:
            return
        raced.append(len(receiver.requests))
        clock.now = opened.until + 1
        dispatcher.handle_batch([task_record()])

    aws_client("dynamodb").meta.events.register("before-call.dynamodb.UpdateItem", dispatcher_runs_first)

    code, out, _ = _run(capsys, "reset", PLAIN_TARGET, "--format", "json")

    assert code == 0
    assert len(receiver.requests) == raced[0] + 1  # the dispatcher's probe really went out
    doc = json.loads(out.splitlines()[-1])  # after the dispatcher's log lines
    # The reset's first conditional write lost; it re-read the re-opened breaker and closed that one.
    assert doc["attempts"] == 2 and doc["written"] is True
    assert (doc["before"]["phase"], doc["before"]["trips"]) == ("open", 2)
    assert doc["before"]["version"] == opened.version + 2  # probe claimed, probe failed
    assert doc["after"]["version"] == opened.version + 3
    state = breaker_store(get_settings()).load(KEY)
    assert (state.phase, state.trips, state.version) == (Phase.CLOSED, 0, opened.version + 3)


def test_a_target_id_under_two_integrations_needs_integration_to_choose(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    _open_breaker(aws_stack, receiver, dispatcher)
    store = target_store(get_settings())
    store.put_integration(
        Integration(
            integration_id=OTHER_INTEGRATION,
            name="Second integration",
            signature_secret_name=secret_name(SecretKind.SIGNATURE, OTHER_INTEGRATION),
        )
    )
    target = store.get_target(INTEGRATION_ID, PLAIN_TARGET)
    assert target is not None
    store.put_target(target.model_copy(update={"integration_id": OTHER_INTEGRATION}))

    code, _, err = _run(capsys, "reset", PLAIN_TARGET)
    assert code == 2
    assert INTEGRATION_ID in err and OTHER_INTEGRATION in err and "--integration" in err
    assert breaker_store(get_settings()).load(KEY).phase is Phase.OPEN  # nothing reset

    code, out, _ = _run(
        capsys, "status", PLAIN_TARGET, "--integration", OTHER_INTEGRATION, "--format", "json"
    )
    assert code == 0
    (doc,) = _json_lines(out)
    assert (doc["integrationId"], doc["phase"]) == (OTHER_INTEGRATION, "closed")

    code, out, _ = _run(capsys, "reset", PLAIN_TARGET, "--integration", INTEGRATION_ID, "--format", "json")
    assert code == 0 and json.loads(out)["after"]["phase"] == "closed"
    assert breaker_store(get_settings()).load(KEY).phase is Phase.CLOSED


def test_an_unknown_target_fails_with_a_message(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "reset", "no-such-target")
    # A target id that names nothing in the table: the command could not run (3); several would be usage (2)
    assert code == 3 and out == ""
    assert err == "relay breaker reset: no target no-such-target in the TargetsTable\n"

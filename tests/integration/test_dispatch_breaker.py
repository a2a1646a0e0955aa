"""The shared circuit breaker inside the dispatcher, against DynamoDB and SQS on moto."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support.queues import drain
from support.waiting import wait_until
from test_dispatch_support import (
    ENCRYPTED_TARGET,
    INTEGRATION_ID,
    PLAIN_TARGET,
    ManualClock,
    attr,
    seed_target,
    task_record,
)

from relay.adapters.breaker_store import DynamoBreakerStore
from relay.local.aws_stack import LocalResources
from relay.local.receiver import Behaviour, Receiver
from relay.logic.dispatch import Dispatcher
from relay.models.breaker import BreakerState, Phase, target_key
from relay.settings import get_settings
from relay.wiring import aws_client, breaker_store
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration
KEY = target_key(INTEGRATION_ID, PLAIN_TARGET)


@pytest.fixture
def dispatcher(aws_stack: LocalResources, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Dispatcher:
    monkeypatch.setenv("BREAKER_RESET_SECONDS", "1")
    get_settings.cache_clear()
    return build_dispatcher(get_settings(), clock=clock)


def _store(resources: LocalResources) -> DynamoBreakerStore:
    return breaker_store(get_settings())


def _sent(calls: list[dict[str, Any]]) -> Any:
    def capture(params: dict[str, Any], **_: Any) -> None:
        calls.append(params)

    return capture


def test_consecutive_failures_open_the_breaker_and_later_records_are_deferred_not_attempted(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given a failing endpoint: five failures open the breaker
    receiver.behaviour = Behaviour(status=503)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=10)
    dispatcher.handle_batch([task_record() for _ in range(5)])
    assert _store(aws_stack).load(KEY).phase is Phase.OPEN
    requests_so_far = len(receiver.requests)

    # When the next batch arrives while it is open (one record already on its 2nd receive)
    sends: list[dict[str, Any]] = []
    aws_client("sqs").meta.events.register("provide-client-params.sqs.SendMessage", _sent(sends))
    later = [task_record(receive_count=2), task_record()]
    result = dispatcher.handle_batch(later)

    # Then nothing is sent to the endpoint, the records are re-queued with a delay, carrying their
    # attempts unchanged and one more deferral, and they count as done (nothing for the DLQ)
    assert len(receiver.requests) == requests_so_far
    assert result == {"batchItemFailures": []}
    assert sorted(s["MessageAttributes"]["relay-attempts"]["StringValue"] for s in sends) == ["0", "1"]
    assert {s["MessageAttributes"]["relay-deferrals"]["StringValue"] for s in sends} == {"1"}
    assert all(1 <= s["DelaySeconds"] <= 900 and s["QueueUrl"] == aws_stack.delivery_queue_url for s in sends)
    assert drain(aws_stack.dead_letter_queue_url) == []


def test_a_targets_failure_reaches_its_breaker_while_a_slow_neighbour_still_holds_the_batch(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    # Given one batch for two targets: crm fails at once, archive's answer is held until released
    released = threading.Event()
    receiver.behaviour = Behaviour(status=500)
    receiver.path_behaviours["/hooks/archive"] = Behaviour(gate=released)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=10)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET)
    records = [task_record(), task_record(ENCRYPTED_TARGET)]
    batch = threading.Thread(target=dispatcher.handle_batch, args=(records,))
    batch.start()
    try:
        # Then crm's failure is in its breaker while archive's request is still held
        wait_until(
            lambda: receiver.held == 1 and _store(aws_stack).load(KEY).consecutive_failures == 1,
            what="crm's failure folded while archive is held",
            timeout=10,
        )
    finally:
        released.set()
        batch.join(timeout=30)

    # And folded once: the batch's end adds nothing
    assert not batch.is_alive()
    assert _store(aws_stack).load(KEY).consecutive_failures == 1


def test_deferred_records_come_back_to_the_queue(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    receiver.behaviour = Behaviour(status=503)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=10)
    dispatcher.handle_batch([task_record() for _ in range(5)])
    deferred = task_record(deferrals=2)
    dispatcher.handle_batch([deferred])
    # DelaySeconds is the breaker's 1 s reset plus jitter
    (message,) = wait_until(
        lambda: drain(aws_stack.delivery_queue_url), timeout=10, what="the deferred record back in the queue"
    )
    assert message["body"] == deferred["body"]
    assert (attr(message, "relay-deferrals"), attr(message, "relay-attempts")) == ("3", "0")


def test_after_the_reset_timeout_one_probe_goes_first_and_its_success_closes_the_breaker(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, clock: ManualClock
) -> None:
    # Given an open breaker whose reset timeout has passed, and a healthy endpoint again
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    assert _store(aws_stack).save(KEY, BreakerState(Phase.OPEN, 5, 1, clock.now - 1, 3), expected_version=0)

    # When a batch of three arrives
    result = dispatcher.handle_batch([task_record() for _ in range(3)])

    # Then the probe and then the rest were delivered, and the breaker is closed
    assert result == {"batchItemFailures": []}
    assert len(receiver.unique_delivery_ids) == 3
    state = _store(aws_stack).load(KEY)
    assert (state.phase, state.trips, state.consecutive_failures) == (Phase.CLOSED, 0, 0)
    assert state.version == 5  # claimed (4), closed (5)


def test_a_failed_probe_reopens_for_longer_and_defers_the_rest(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, clock: ManualClock
) -> None:
    receiver.behaviour = Behaviour(status=502)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", attempts=10)
    assert _store(aws_stack).save(KEY, BreakerState(Phase.OPEN, 5, 1, clock.now - 1, 3), expected_version=0)
    records = [task_record() for _ in range(3)]
    result = dispatcher.handle_batch(records)
    assert len(receiver.requests) == 1  # the probe only
    assert result == {"batchItemFailures": [{"itemIdentifier": records[0]["messageId"]}]}  # its retry
    state = _store(aws_stack).load(KEY)
    assert (state.phase, state.trips) == (Phase.OPEN, 2)
    assert state.until == pytest.approx(clock.now + 2.0)  # reset 1 s doubled on the second trip


def test_while_another_dispatcher_probes_records_are_deferred(
    aws_stack: LocalResources, receiver: Receiver, dispatcher: Dispatcher, clock: ManualClock
) -> None:
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    half_open = BreakerState(Phase.HALF_OPEN, 5, 1, clock.now + 15, 4)
    assert _store(aws_stack).save(KEY, half_open, expected_version=0)
    result = dispatcher.handle_batch([task_record()])
    assert result == {"batchItemFailures": []}
    assert receiver.requests == []
    assert _store(aws_stack).load(KEY) == half_open


def test_a_failing_breaker_table_fails_open_and_is_counted(
    aws_stack: LocalResources, receiver: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given a breaker store whose table does not exist
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    dispatcher = build_dispatcher(
        get_settings(), breakers=DynamoBreakerStore(aws_client("dynamodb"), "no-such-table")
    )

    # When a batch arrives
    result = dispatcher.handle_batch([task_record(), task_record()])

    # Then it was delivered anyway, and BreakerStoreUnavailable was emitted (service dimension only)
    assert result == {"batchItemFailures": []}
    assert len(receiver.unique_delivery_ids) == 2
    blobs = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    unavailable = [b for b in blobs if "BreakerStoreUnavailable" in b]
    assert len(unavailable) == 1 and unavailable[0]["BreakerStoreUnavailable"] == [1.0]
    assert unavailable[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]


def test_a_closed_breaker_costs_one_read_per_target_per_batch_and_no_write(
    aws_stack: LocalResources, receiver: Receiver
) -> None:
    # Given two healthy targets and a DynamoDB client that counts its calls
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET)
    calls: list[str] = []
    ddb = aws_client("dynamodb")
    ddb.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    dispatcher = build_dispatcher(get_settings(), breakers=DynamoBreakerStore(ddb, aws_stack.breaker_table))

    # When a batch of ten spread over both targets is delivered
    dispatcher.handle_batch([task_record(PLAIN_TARGET if i % 2 else ENCRYPTED_TARGET) for i in range(10)])

    # Then the breaker table saw exactly one GetItem per target and no write
    assert len(receiver.unique_delivery_ids) == 10
    breaker_calls = [c for c in calls if c in ("GetItem", "PutItem", "UpdateItem")]
    assert breaker_calls == ["GetItem", "GetItem"]


class _FailsAfterTheSuccess(BaseHTTPRequestHandler):
    """The delivery ``late`` is answered 500 only once a third request has arrived; of the other two,
    the first to arrive gets 200, the second 500. With two slots per target, a third request starts
    only after an attempt ended, and ``late`` holds its slot until then: so the dispatcher has read the
    200 before either 500, whichever records take the slots first."""

    protocol_version = "HTTP/1.1"
    late: str
    lock: threading.Lock
    third: threading.Event
    arrived: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        delivery = self.headers["webhook-id"]
        with self.lock:
            self.arrived.append(delivery)
            others = [seen for seen in self.arrived if seen != self.late]
            if len(self.arrived) == 3:
                self.third.set()
        if delivery == self.late:
            self.third.wait(timeout=10)
        status = 200 if delivery != self.late and others == [delivery] else 500
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_run_of_failures_a_success_sent_after_it_ends_does_not_open_the_breaker(
    aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a breaker one failure short of opening, and a batch of three whose first record is
    # answered 500 after another, sent with it, was answered 200 (and the third 500)
    records = [task_record() for _ in range(3)]
    late = json.loads(records[0]["body"])["deliveryId"]
    attributes = {"late": late, "lock": threading.Lock(), "third": threading.Event(), "arrived": []}
    handler = type("Handler", (_FailsAfterTheSuccess,), attributes)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PER_TARGET_CONCURRENCY", "2")
        get_settings.cache_clear()
        seed_target(aws_stack, f"http://127.0.0.1:{server.server_address[1]}/hooks/crm", attempts=10)
        assert _store(aws_stack).save(KEY, BreakerState(Phase.CLOSED, 4, 0, 0.0, 1), expected_version=0)

        # When the batch is delivered (the real clock: the requests' send times are what is compared)
        build_dispatcher(get_settings()).handle_batch(records)
    finally:
        server.shutdown()
        server.server_close()

    # Then the 200 ended the run, whichever of the two sent together went first: still closed, 1 or 2
    # failures counted after it (folded in the records' order at the batch's end, the first record's
    # 500 made five in a row and opened it)
    assert handler.third.is_set()
    state = _store(aws_stack).load(KEY)
    assert (state.phase, state.trips) == (Phase.CLOSED, 0)
    assert state.consecutive_failures in (1, 2)  # 2 unless the 200's slot went to the late record

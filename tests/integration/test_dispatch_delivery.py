"""What goes on the wire and how: Standard Webhooks signatures (checked with the `standardwebhooks`
package), HTTP behaviour (timeouts, no redirects, bounded bodies, connect-time address check, one
session) and concurrency (bounded pool, per-target cap), against a real loopback receiver."""

from __future__ import annotations

import json
import time

import pytest
from misbehaving_peer import Answer, misbehaving_peer
from standardwebhooks.webhooks import Webhook
from support.queues import drain
from test_dispatch_support import (
    BEARER,
    ENCRYPTED_TARGET,
    INTEGRATION_ID,
    OLD_SIGNING_SECRET,
    PLAIN_TARGET,
    SIGNING_SECRET,
    attr,
    audit_lines,
    seed_target,
    task_record,
)

from relay.local.aws_stack import LocalResources
from relay.local.receiver import Behaviour, Receiver
from relay.logic.dispatch import Dispatcher
from relay.models.breaker import Phase, target_key
from relay.settings import get_settings
from relay.wiring import aws_client, breaker_store
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration


def _dispatcher(monkeypatch: pytest.MonkeyPatch, **env: str) -> Dispatcher:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return build_dispatcher(get_settings())


def test_deliveries_verify_with_the_standardwebhooks_package_even_while_rotating(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a target whose signing secret is being rotated (current + previous)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", previous_signing_secret=OLD_SIGNING_SECRET)
    dispatcher = _dispatcher(monkeypatch)

    # When two records are delivered
    result = dispatcher.handle_batch([task_record(), task_record()])

    # Then every request verifies with standardwebhooks under either secret, and carries our headers
    assert result == {"batchItemFailures": []}
    assert len(receiver.deliveries) == 2
    for request in receiver.deliveries:
        for secret in (SIGNING_SECRET, OLD_SIGNING_SECRET):
            Webhook(secret).verify(request.body, request.headers)
        assert len(request.headers["webhook-signature"].split()) == 2
        envelope = request.json()
        assert request.headers["webhook-id"] == request.headers["x-delivery-id"] == envelope["deliveryId"]
        assert request.headers["x-format-version"] == "2.1"
        assert request.headers["x-integration-id"] == PLAIN_TARGET
        assert request.headers["authorization"] == f"Bearer {BEARER}"
        assert request.headers["user-agent"].startswith("genesys-relay/")
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-team"] == "crm"


def test_an_encrypted_delivery_decrypts_at_the_receiver_and_hides_the_event(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    record = task_record(ENCRYPTED_TARGET, event={"id": "e-9", "text": "top secret words"})
    _dispatcher(monkeypatch).handle_batch([record])
    (request,) = receiver.deliveries
    assert request.encrypted and request.event == {"id": "e-9", "text": "top secret words"}
    assert b"top secret words" not in request.body


def test_redirects_are_not_followed_and_dead_letter_at_once(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a receiver that redirects elsewhere on the same host
    receiver.behaviour = Behaviour(status=302, response_headers={"Location": "/hooks/elsewhere"})
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")

    # When a record is delivered (first attempt of three)
    result = _dispatcher(monkeypatch).handle_batch([task_record()])

    # Then the redirect was not followed, and the record went to the DLQ as permanent
    assert result == {"batchItemFailures": []}
    assert [r.path for r in receiver.requests] == ["/hooks/crm"]
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert (attr(dead, "relay-dlq-reason"), attr(dead, "relay-last-status")) == ("permanent-status", "302")


def test_a_slow_endpoint_times_out_by_the_targets_read_timeout_and_is_retried(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a receiver that hangs and a target with a 0.5 s read timeout
    receiver.behaviour = Behaviour(fault_rate=1.0, faults=("timeout",), hang_seconds=5)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", read_timeout_seconds=0.5)

    # When a record is delivered
    record = task_record()
    result = _dispatcher(monkeypatch).handle_batch([record])

    # Then it is reported failed for a retry, and the audit says why
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    (line,) = audit_lines(aws_stack)
    assert (line["errorCode"], line["outcome"], line["status"]) == ("read-timeout", "retry-scheduled", None)


def test_a_trickling_endpoint_is_cut_off_at_connect_plus_read_timeout(
    aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an endpoint answering one byte every 0.2 s (about 20 s), never idle for a read timeout, and
    # a target whose connect + read timeouts (0.5 s + 1 s) make its request's total budget
    slow = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"p" * 60 + b"\r\n\r\n"
    with misbehaving_peer(lambda *_: Answer(trickle=slow)) as peer:
        seed_target(aws_stack, f"{peer.url}/hooks/crm", read_timeout_seconds=1.0)
        dispatcher = _dispatcher(monkeypatch, CONNECT_TIMEOUT_SECONDS="0.5")
        record = task_record()
        started = time.monotonic()

        # When a record is delivered
        result = dispatcher.handle_batch([record])
        took = time.monotonic() - started

    # Then the attempt ended at the deadline as a timeout and the record waits for a retry
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    (line,) = audit_lines(aws_stack)
    assert (line["errorCode"], line["outcome"], line["status"]) == (
        "deadline-exceeded",
        "retry-scheduled",
        None,
    )
    assert took < 3 * 1.5


def test_a_2xx_cut_off_is_retried_and_counts_against_the_breaker(
    aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an endpoint that answers 200 with 10 of the 50 bytes it announces, then closes; and a
    # breaker that opens on the first failure
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n0123456789"
    with misbehaving_peer(lambda *_: Answer(head=cut)) as peer:
        seed_target(aws_stack, f"{peer.url}/hooks/crm")
        record = task_record()
        result = _dispatcher(monkeypatch, BREAKER_FAILURE_THRESHOLD="1").handle_batch([record])

    # Then it was not delivered: a retry is scheduled, the audit keeps the status and says why
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    (line,) = audit_lines(aws_stack)
    assert (line["status"], line["errorCode"], line["outcome"]) == (
        200,
        "incomplete-response",
        "retry-scheduled",
    )
    # And the breaker counted it as the endpoint failing
    breaker = breaker_store(get_settings()).load(target_key(INTEGRATION_ID, PLAIN_TARGET))
    assert breaker.phase is Phase.OPEN


def test_a_dropped_connection_is_a_retryable_connection_error(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.behaviour = Behaviour(up=False)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    record = task_record()
    result = _dispatcher(monkeypatch).handle_batch([record])
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    assert audit_lines(aws_stack)[0]["errorCode"] == "connection-error"


def test_the_response_body_is_read_only_up_to_the_bound(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.behaviour = Behaviour(response_body=b"x" * 300_000)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    _dispatcher(monkeypatch).handle_batch([task_record()])
    (line,) = audit_lines(aws_stack)
    assert (line["responseBytes"], line["responseTruncated"], line["outcome"]) == (65_536, True, "delivered")
    assert len(line["responseBody"]) == 65_536


def test_the_address_actually_connected_to_is_checked(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given loopback targets NOT allowed, and a target named by host name (resolves to 127.0.0.1)
    url = receiver.url.replace("127.0.0.1", "localhost")
    seed_target(aws_stack, f"{url}/hooks/crm")
    dispatcher = _dispatcher(monkeypatch, RELAY_ALLOW_LOOPBACK_TARGETS="false")

    # When a record is delivered
    result = dispatcher.handle_batch([task_record()])

    # Then no byte reached the receiver, and the record is dead-lettered as unsafe
    assert result == {"batchItemFailures": []}
    assert receiver.requests == []
    (dead,) = drain(aws_stack.dead_letter_queue_url)
    assert attr(dead, "relay-dlq-reason") == "permanent-status"
    assert attr(dead, "relay-last-error") == "unsafe-address"


def test_one_session_reuses_its_connection_across_batches(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    dispatcher = _dispatcher(monkeypatch)
    for _ in range(3):
        dispatcher.handle_batch([task_record()])
    assert len(receiver.deliveries) == 3
    assert len({r.client_port for r in receiver.deliveries}) == 1


def test_a_batch_is_delivered_concurrently_up_to_the_pool_size(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a slow endpoint, a pool of 4 and no per-target limit below it
    receiver.behaviour = Behaviour(latency_seconds=0.3)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    dispatcher = _dispatcher(monkeypatch, DELIVERY_CONCURRENCY="4", PER_TARGET_CONCURRENCY="10")

    # When a batch of 10 is delivered
    result = dispatcher.handle_batch([task_record() for _ in range(10)])

    # Then the endpoint held exactly 4 requests at once (not 1: not sequential; not 10: bounded)
    assert result == {"batchItemFailures": []}
    assert receiver.max_in_flight["/hooks/crm"] == 4
    assert len(receiver.unique_delivery_ids) == 10


def test_the_per_target_cap_holds_while_other_targets_use_the_pool(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two slow targets, a pool of 10 and a per-target cap of 3
    receiver.behaviour = Behaviour(latency_seconds=0.3)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET)
    dispatcher = _dispatcher(monkeypatch, DELIVERY_CONCURRENCY="10", PER_TARGET_CONCURRENCY="3")

    # When a batch of 6 + 6 records is delivered
    records = [task_record(PLAIN_TARGET) for _ in range(6)] + [
        task_record(ENCRYPTED_TARGET) for _ in range(6)
    ]
    dispatcher.handle_batch(records)

    # Then neither target ever held more than 3, and both got to 3
    assert receiver.max_in_flight == {"/hooks/crm": 3, "/hooks/archive": 3}
    assert len(receiver.unique_delivery_ids) == 12


def test_the_dispatcher_never_calls_sqs_for_a_clean_batch(
    aws_stack: LocalResources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Successes are deleted by the event source: nothing to send, change or delete ourselves.
    seed_target(aws_stack, f"{receiver.url}/hooks/crm")
    calls: list[str] = []
    sqs = aws_client("sqs")
    sqs.meta.events.register("before-call.sqs.*", lambda model, **_: calls.append(model.name))
    _dispatcher(monkeypatch).handle_batch([task_record() for _ in range(3)])
    assert calls == []
    assert json.loads(receiver.deliveries[0].body)["formatVersion"] == "2.1"

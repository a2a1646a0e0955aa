"""The intake's idempotency claims against DynamoDB (moto server over HTTP): conditional writes decide."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from support.aws_proxy import answer, forward
from support.events import api_gateway_event, sample
from support.handlers import LoadHandler
from support.lambda_context import lambda_context
from support.queues import drain
from test_dispatch_support import ManualClock
from test_intake_handler import seed_fixture_integrations

from relay.adapters.aws import new_client
from relay.adapters.idempotency import DynamoDBIdempotencyStore
from relay.adapters.target_store import TargetStore
from relay.errors import DependencyUnavailable
from relay.local.aws_stack import LocalResources
from relay.local.loopback import LoopbackServer
from relay.settings import get_settings
from relay.testing.fakes import CountingMetrics
from relay.wiring import aws_client, aws_clients
from relay.wiring.intake import build_intake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


@pytest.fixture
def store(aws_stack: LocalResources, clock: ManualClock) -> DynamoDBIdempotencyStore:
    return DynamoDBIdempotencyStore(
        aws_client("dynamodb"), aws_stack.idempotency_table, ttl_seconds=3_600, lease_seconds=10, clock=clock
    )


def test_first_claim_wins_and_a_repeat_sees_it_in_progress(store: DynamoDBIdempotencyStore) -> None:
    first = store.claim("intake#a")
    repeat = store.claim("intake#a")
    assert first.state == "acquired" and first.token
    assert repeat.state == "in_progress" and repeat.token is None


def test_a_completed_claim_replays_its_answer(
    store: DynamoDBIdempotencyStore, aws_stack: LocalResources
) -> None:
    claim = store.claim("intake#b")
    store.complete(claim, '{"status":"accepted"}')
    repeat = store.claim("intake#b")
    assert (repeat.state, repeat.response) == ("completed", '{"status":"accepted"}')
    item = (
        aws_clients()
        .client("dynamodb")
        .get_item(TableName=aws_stack.idempotency_table, Key={"id": {"S": "intake#b"}})["Item"]
    )
    assert item["status"]["S"] == "COMPLETED" and "in_progress_expiration" not in item
    assert int(item["expiration"]["N"]) == 1_800_000_000 + 3_600  # the table's TTL attribute


def test_a_released_claim_can_be_claimed_again(store: DynamoDBIdempotencyStore) -> None:
    claim = store.claim("intake#c")
    store.release(claim)
    assert store.claim("intake#c").state == "acquired"


def test_a_crashed_attempt_blocks_only_until_its_lease_ends(
    store: DynamoDBIdempotencyStore, clock: ManualClock
) -> None:
    store.claim("intake#d")  # never completed nor released: the Lambda died
    clock.now += 5
    assert store.claim("intake#d").state == "in_progress"
    clock.now += 6
    assert store.claim("intake#d").state == "acquired"


def test_a_stale_attempt_cannot_complete_or_release_a_newer_claim(
    store: DynamoDBIdempotencyStore, clock: ManualClock
) -> None:
    stale = store.claim("intake#e")
    clock.now += 11
    current = store.claim("intake#e")
    store.complete(stale, '{"stale":true}')
    store.release(stale)
    assert store.claim("intake#e").state == "in_progress"
    store.complete(current, '{"current":true}')
    assert store.claim("intake#e").response == '{"current":true}'


def test_records_past_their_expiration_count_as_gone_before_ttl_deletes_them(
    store: DynamoDBIdempotencyStore, clock: ManualClock
) -> None:
    store.complete(store.claim("intake#f"), "{}")
    clock.now += 3_601
    assert store.claim("intake#f").state == "acquired"


def test_concurrent_claims_have_exactly_one_winner(store: DynamoDBIdempotencyStore) -> None:
    barrier = threading.Barrier(8)
    states: list[str] = []

    def race() -> None:
        barrier.wait()
        states.append(store.claim("intake#g").state)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(states) == ["acquired"] + ["in_progress"] * 7


class LosesFirstAnswer:
    """A loopback proxy in front of moto that forwards every request, but closes the connection instead
    of answering the first one for ``target`` (an ``X-Amz-Target``): the write happened, its answer was
    lost on the way, and the client's SDK retries it."""

    def __init__(self, upstream: str, target: str) -> None:
        self.lost: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                response = forward(self, upstream, timeout=10)
                if self.headers.get("X-Amz-Target") == target and not proxy.lost:
                    proxy.lost.append(target)
                    self.close_connection = True  # the write is done; its answer never arrives
                    return
                answer(self, response)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = LoopbackServer(Handler, name="loses-first-answer")
        self.url = f"http://127.0.0.1:{self.server.start()}"

    def close(self) -> None:
        self.server.stop()


def test_a_claim_whose_answer_was_lost_and_retried_is_still_ours(
    aws_stack: LocalResources, clock: ManualClock
) -> None:
    # Given a claim write that DynamoDB applied but whose answer was lost, so the SDK wrote it again
    # and that second write failed its condition on the first one
    proxy = LosesFirstAnswer(aws_stack.endpoint_url, "DynamoDB_20120810.PutItem")
    try:
        client = new_client(
            "dynamodb",
            endpoint_url=proxy.url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        store = DynamoDBIdempotencyStore(
            client, aws_stack.idempotency_table, ttl_seconds=3_600, lease_seconds=10, clock=clock
        )

        claim = store.claim("intake#lost-answer")
    finally:
        proxy.close()

    # Then the claim is ours (acquired), not someone else's in progress: a caller that took it for a
    # duplicate would drop the event (the EventBridge path answers a duplicate with success)
    assert proxy.lost == ["DynamoDB_20120810.PutItem"]
    assert claim.state == "acquired" and claim.token is not None
    store.complete(claim, '{"status": "accepted"}')
    assert store.claim("intake#lost-answer").state == "completed"


def test_an_unreachable_table_is_dependency_unavailable(
    store: DynamoDBIdempotencyStore, aws_stack: LocalResources
) -> None:
    aws_client("dynamodb").delete_table(TableName=aws_stack.idempotency_table)
    with pytest.raises(DependencyUnavailable) as caught:
        store.claim("intake#h")
    assert "ResourceNotFoundException" in str(caught.value)


def test_one_instant_spelled_three_ways_is_queued_once_through_dynamodb(
    aws_stack: LocalResources, function_handler: LoadHandler
) -> None:
    # Given the intake handler with the fixtures' integration, and a message accepted once
    seed_fixture_integrations()
    handler = function_handler("intake")
    message = sample("openmessaging_text.json")
    message["channel"]["time"] = "2026-03-25T10:00:00Z"
    first = handler(api_gateway_event(message), lambda_context("intake"))
    assert first["statusCode"] == 202, first

    # When Genesys' retries spell channel.time differently but name the same instant
    repeats = []
    for spelling in ("2026-03-25T10:00:00.000Z", "2026-03-25T12:00:00+02:00"):
        message["channel"]["time"] = spelling
        repeats.append(handler(api_gateway_event(message), lambda_context("intake")))

    # Then they get the first answer, one claim exists, and only the first attempt's tasks are queued
    assert [r["body"] for r in repeats] == [first["body"], first["body"]]
    items = aws_client("dynamodb").scan(TableName=aws_stack.idempotency_table)["Items"]
    assert [item["status"]["S"] for item in items] == ["COMPLETED"]
    assert len(drain(aws_stack.delivery_queue_url)) == 2


class CountingDynamoDB:
    """The boto3 DynamoDB client, counting the calls made through it by operation name."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


WRITES = {"put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items"}


def test_an_accepted_event_costs_two_dynamodb_writes_and_a_repeat_one(aws_stack: LocalResources) -> None:
    # Given the intake wired to DynamoDB (targets and idempotency) through one counting client
    seed_fixture_integrations()
    settings = get_settings()
    dynamodb = CountingDynamoDB(aws_client("dynamodb"))
    # (its own recorder: the process-wide powertools metrics are flushed only by a handler, and what
    # this test counted there would reach the next test in the worker that flushes)
    metrics = CountingMetrics()
    intake = build_intake(
        settings,
        integrations=TargetStore(dynamodb, aws_stack.targets_table, cache_ttl_seconds=60),
        idempotency=DynamoDBIdempotencyStore(dynamodb, aws_stack.idempotency_table, ttl_seconds=3_600),
        metrics=metrics,
    )

    # When ten distinct events are accepted, and each is then sent again
    messages = []
    for number in range(10):
        message = sample("openmessaging_text.json")
        message["id"] = f"write-count-{number}"
        messages.append(message)
        assert intake.handle(api_gateway_event(message))["statusCode"] == 202
    accepted = {name: count for name, count in dynamodb.calls.items() if name in WRITES}
    for message in messages:
        assert intake.handle(api_gateway_event(message))["statusCode"] == 202

    # Then each accepted event cost its claim and its answer, each repeat one refused claim, and only
    # the first attempts' tasks were queued
    assert accepted == {"put_item": 10, "update_item": 10}
    writes = {name: count for name, count in dynamodb.calls.items() if name in WRITES}
    assert writes == {"put_item": 20, "update_item": 10}
    assert len(drain(aws_stack.delivery_queue_url)) == 20
    assert metrics.counts == {
        ("EventsAccepted", None): 10,
        ("EventsDuplicate", None): 10,
        ("TasksQueued", None): 20,
    }

"""Targets' token buckets against their stores: the same conditional semantics in memory and in
DynamoDB on a moto server (relay.ports.RateLimitStore)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from relay.local.aws_stack import LocalResources
from relay.models.rate_limit import BucketState
from relay.ports import RateLimitStore
from relay.settings import get_settings
from relay.testing.fakes import InMemoryRateLimitStore
from relay.wiring import aws_client, rate_limit_store

pytestmark = pytest.mark.integration

NOW = 1_750_000_000.0


@pytest.fixture(params=["in-memory", "dynamodb"])
def store(request: pytest.FixtureRequest) -> Iterator[RateLimitStore]:
    if request.param == "in-memory":
        yield InMemoryRateLimitStore()
    else:
        request.getfixturevalue("aws_stack")
        yield rate_limit_store(get_settings())


def key() -> str:
    return f"rate#int-1#{uuid.uuid4()}"


def test_an_idle_bucket_books_from_now_and_a_busy_one_books_on(store: RateLimitStore) -> None:
    bucket = key()

    # An idle (absent) bucket: the booking starts now
    first = store.take(bucket, now=NOW, count=3, cost=0.5, idle=True, latest=0.0)
    assert first.written and first.state == BucketState(booked_until=NOW + 1.5)

    # Busy: booked on from where it stands, while the booking is within the latest allowed
    second = store.take(bucket, now=NOW + 1, count=2, cost=0.5, idle=False, latest=NOW + 2)
    assert second.written and second.state == BucketState(booked_until=NOW + 2.5)
    assert store.load(bucket) == BucketState(booked_until=NOW + 2.5)


def test_a_take_whose_condition_fails_answers_the_stored_state(store: RateLimitStore) -> None:
    bucket = key()
    store.take(bucket, now=NOW, count=4, cost=1.0, idle=True, latest=0.0)  # booked until NOW + 4

    # Taken as if idle, but the bucket is busy; then as if busy, but beyond what still fits
    as_idle = store.take(bucket, now=NOW + 1, count=1, cost=1.0, idle=True, latest=0.0)
    too_many = store.take(bucket, now=NOW + 1, count=3, cost=1.0, idle=False, latest=NOW + 3)

    assert (as_idle.written, as_idle.state) == (False, BucketState(booked_until=NOW + 4))
    assert (too_many.written, too_many.state) == (False, BucketState(booked_until=NOW + 4))
    # And a busy take of a bucket that has gone idle is refused too (it would book in the past)
    stale = store.take(bucket, now=NOW + 10, count=1, cost=1.0, idle=False, latest=NOW + 11)
    assert not stale.written and store.load(bucket) == BucketState(booked_until=NOW + 4)


def test_a_retry_after_floor_holds_every_take_until_it_passes(store: RateLimitStore) -> None:
    bucket = key()
    assert store.raise_floor(bucket, floor_until=NOW + 5).written

    held = store.take(bucket, now=NOW + 4, count=1, cost=1.0, idle=True, latest=0.0)
    after = store.take(bucket, now=NOW + 5, count=1, cost=1.0, idle=True, latest=0.0)

    assert not held.written and held.state == BucketState(floor_until=NOW + 5)
    assert after.written and after.state == BucketState(booked_until=NOW + 6, floor_until=NOW + 5)


def test_a_floor_is_only_ever_raised(store: RateLimitStore) -> None:
    bucket = key()
    store.raise_floor(bucket, floor_until=NOW + 30)

    lower = store.raise_floor(bucket, floor_until=NOW + 10)

    assert not lower.written and store.load(bucket) == BucketState(floor_until=NOW + 30)


def test_a_floor_is_lifted_only_while_it_is_the_one_read(store: RateLimitStore) -> None:
    bucket = key()
    store.take(bucket, now=NOW, count=2, cost=1.0, idle=True, latest=0.0)
    store.raise_floor(bucket, floor_until=NOW + 30)

    # A dispatcher raised it since it was read: kept, and the lift answers the stored state
    store.raise_floor(bucket, floor_until=NOW + 60)
    stale = store.lift_floor(bucket, seen=NOW + 30)
    assert not stale.written and stale.state == BucketState(booked_until=NOW + 2, floor_until=NOW + 60)

    # Lifted as read: takes go at once, bookings untouched, and a later Retry-After is stored again
    lifted = store.lift_floor(bucket, seen=NOW + 60)
    assert lifted.written and lifted.state == BucketState(booked_until=NOW + 2)
    assert store.take(bucket, now=NOW + 1, count=1, cost=1.0, idle=False, latest=NOW + 3).written
    assert store.raise_floor(bucket, floor_until=NOW + 5).written

    # No floor stored (or an absent bucket): nothing to lift, nothing written
    assert not store.lift_floor(key(), seen=NOW + 60).written


def test_a_cut_is_stored_only_over_the_cut_it_saw(store: RateLimitStore) -> None:
    bucket = key()
    first = store.cut(bucket, now=NOW, rate=6.0, floor_until=NOW + 1, seen_cut_at=None)
    assert first.written and first.state == BucketState(cut_rate=6.0, cut_at=NOW, floor_until=NOW + 1)

    # A second dispatcher that saw no cut loses, and learns the stored one
    late = store.cut(bucket, now=NOW + 0.1, rate=5.0, floor_until=0.0, seen_cut_at=None)
    assert not late.written and late.state == first.state

    # One that saw it may cut again
    again = store.cut(bucket, now=NOW + 3, rate=4.5, floor_until=NOW + 1, seen_cut_at=NOW)
    assert again.written and again.state == BucketState(cut_rate=4.5, cut_at=NOW + 3, floor_until=NOW + 1)


def test_joining_adds_to_a_fresh_implicit_limit_and_not_to_a_released_one(store: RateLimitStore) -> None:
    bucket = key()

    # The first dispatcher starts the implicit limit, the second adds its share
    started = store.join(bucket, now=NOW, contribution=30.0, floor_until=NOW + 1, fresh_since=NOW - 300)
    added = store.join(bucket, now=NOW + 1, contribution=12.0, floor_until=NOW + 2, fresh_since=NOW - 299)

    assert started.written and added.written
    assert store.load(bucket) == BucketState(cut_rate=42.0, cut_at=NOW, floor_until=NOW + 2)

    # Long after the last cut the limit is released: a join is refused, answering the stale state
    stale = store.join(bucket, now=NOW + 400, contribution=5.0, floor_until=0.0, fresh_since=NOW + 100)
    assert not stale.written and stale.state == BucketState(cut_rate=42.0, cut_at=NOW, floor_until=NOW + 2)


def test_a_bucket_item_is_kept_apart_from_the_breaker_and_expires(aws_stack: LocalResources) -> None:
    # Given a bucket written through the wiring's store
    bucket = key()
    rate_limit_store(get_settings()).take(bucket, now=NOW, count=1, cost=1.0, idle=True, latest=0.0)

    # Then it is an item of its own in the BreakerTable, with a TTL a day out
    item = aws_client("dynamodb").get_item(
        TableName=aws_stack.breaker_table, Key={"targetKey": {"S": bucket}}
    )["Item"]
    assert set(item) == {"targetKey", "bookedUntil", "updatedAt", "expiresAt"}
    assert int(item["expiresAt"]["N"]) - int(item["updatedAt"]["N"]) == 24 * 3600


def test_an_unavailable_table_is_rate_limit_store_unavailable(aws_stack: LocalResources) -> None:
    from relay.adapters.rate_limit_store import DynamoRateLimitStore
    from relay.errors import RateLimitStoreUnavailable

    store = DynamoRateLimitStore(aws_client("dynamodb"), "no-such-table")
    calls: list[Callable[[], object]] = [
        lambda: store.load(key()),
        lambda: store.take(key(), now=NOW, count=1, cost=1.0, idle=True, latest=0.0),
    ]
    for call in calls:
        with pytest.raises(RateLimitStoreUnavailable, match="ResourceNotFoundException|ClientError"):
            call()

"""The target store: one Query per integration, cached with a TTL, negative answers included, bounded."""

from __future__ import annotations

from typing import Any

import pytest
from test_dispatch_support import ManualClock

from relay.adapters.target_store import TargetStore
from relay.local.aws_stack import LocalResources
from relay.models.targets import Integration, RetryMatrix, Target
from relay.wiring import aws_client

pytestmark = pytest.mark.integration


def _counting_dynamodb() -> tuple[Any, list[str]]:
    """The real DynamoDB client (moto), with a hook that records each Query it sends."""
    ddb = aws_client("dynamodb")
    queries: list[str] = []
    ddb.meta.events.register("before-call.dynamodb.Query", lambda **kw: queries.append("Query"))
    return ddb, queries


def _seed(store: TargetStore, integration_id: str, targets: int = 2) -> None:
    store.put_integration(
        Integration(
            integration_id=integration_id, name="acme", signature_secret_name="relay/local/signature/x"
        )
    )
    for n in range(targets):
        store.put_target(
            Target(
                integration_id=integration_id, target_id=f"t{n}", name=f"t{n}", url="https://example.com/h"
            )
        )


def test_one_query_returns_the_integration_and_its_targets_and_is_cached(aws_stack: LocalResources) -> None:
    # Given an integration with two targets
    ddb, queries = _counting_dynamodb()
    clock = ManualClock(1000.0)
    store = TargetStore(ddb, aws_stack.targets_table, cache_ttl_seconds=60, clock=clock)
    _seed(store, "int-1")

    # When it is read three times within the TTL, then once after it
    first = store.get("int-1")
    store.get("int-1")
    assert store.get_target("int-1", "t1") is not None
    reads_within_ttl = len(queries)
    clock.now += 61
    store.get("int-1")

    # Then one Query served the first three reads, and the expired entry was read again
    assert first is not None and [t.target_id for t in first.targets] == ["t0", "t1"]
    assert reads_within_ttl == 1
    assert len(queries) == 2


def test_a_disabled_target_is_read_again_after_a_second_so_enabling_it_takes_effect_at_once(
    aws_stack: LocalResources,
) -> None:
    # Given a dispatcher's store that has cached a disabled target (TTL a minute)
    ddb, queries = _counting_dynamodb()
    clock = ManualClock(1000.0)
    store = TargetStore(ddb, aws_stack.targets_table, cache_ttl_seconds=60, clock=clock)
    _seed(store, "int-1")
    operator = TargetStore(aws_client("dynamodb"), aws_stack.targets_table, cache_ttl_seconds=0)
    operator.set_target_enabled("int-1", "t1", False)
    cached = store.get_target("int-1", "t1")
    assert cached is not None and not cached.enabled

    # When records for it keep coming within the second, then an operator enables it
    for _ in range(5):
        store.get_target("int-1", "t1")
    reads_within_the_second = len(queries)
    operator.set_target_enabled("int-1", "t1", True)
    clock.now += 1.5

    # Then the store read the table once in that second, and sees the target enabled a second later,
    # long before the TTL (an enabled target's entry is kept the whole TTL)
    assert reads_within_the_second == 1
    again = store.get_target("int-1", "t1")
    assert again is not None and again.enabled
    assert len(queries) == 2
    store.get_target("int-1", "t0")
    clock.now += 30
    store.get_target("int-1", "t1")
    assert len(queries) == 2


def test_unknown_integrations_are_cached_too(aws_stack: LocalResources) -> None:
    ddb, queries = _counting_dynamodb()
    store = TargetStore(ddb, aws_stack.targets_table, cache_ttl_seconds=60, clock=ManualClock(1000.0))
    assert store.get("nope") is None
    assert store.get("nope") is None
    assert len(queries) == 1


def test_the_cache_is_bounded_least_recently_used_first(aws_stack: LocalResources) -> None:
    # Given a cache of two entries
    ddb, queries = _counting_dynamodb()
    store = TargetStore(ddb, aws_stack.targets_table, clock=ManualClock(1000.0), max_cache_entries=2)

    # When three different ids are read, the first one touched again before the third
    store.get("a")
    store.get("b")
    store.get("a")
    store.get("c")  # evicts "b", the least recently used
    before = len(queries)
    store.get("a")
    store.get("c")
    assert len(queries) == before  # still cached
    store.get("b")
    assert len(queries) == before + 1  # evicted, read again


def test_a_record_stored_with_a_matrix_configs_may_no_longer_set_still_loads(
    aws_stack: LocalResources,
) -> None:
    # Given a target a former version stored with a multiplier and a base configs are now refused
    store = TargetStore(aws_client("dynamodb"), aws_stack.targets_table, cache_ttl_seconds=0)
    _seed(store, "int-old", targets=0)
    matrix = RetryMatrix(base_interval_ms=5000, max_interval_ms=200, multiplier=1e200)
    store.put_target(
        Target(
            integration_id="int-old",
            target_id="t0",
            name="t0",
            url="https://example.com/h",
            retry_matrix=matrix,
        )
    )

    # Then it loads as stored: the last good config stays in force
    stored = store.get_target("int-old", "t0")
    assert stored is not None and stored.retry_matrix == matrix

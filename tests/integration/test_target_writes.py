"""Writes to the TargetsTable are conditional on the version the writer read: two racing config syncs,
a sync racing the dispatcher's disable on 410, and the disable's own read-modify-write, on moto.

A run is held at a known point by the fake Genesys API (``slow_down(..., until=event)`` answers the
held request once the test sets the event), so every race runs in the order the test names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from support.waiting import wait_until

from relay.adapters.target_store import WRITE_ATTEMPTS, TargetStore
from relay.errors import TargetWriteConflict
from relay.local.aws_stack import LocalResources, local_client
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures
from relay.logic.config_sync import Conflict, SyncReport
from relay.logic.deliveries.operator import switch_target
from relay.models.targets import Integration, Target
from relay.settings import Settings, get_settings
from relay.testing.fakes import InMemoryAuditSink
from relay.wiring import target_store
from relay.wiring.config_sync import run_config_sync

pytestmark = pytest.mark.integration

FIXTURES = Fixtures.load()
INTEGRATION = FIXTURES.integrations[0]
CRM, ARCHIVE = INTEGRATION.targets
NEW_URL = "http://127.0.0.1:9/hooks/crm-v2"
WAIT = 30.0  # bound on a held run; generous, not a performance claim
CRM_READ = rf"^/api/v2/integrations/{CRM.id}$"


def stored_crm() -> Target:
    target = target_store(get_settings(), cache_ttl_seconds=0).get_target(INTEGRATION.id, CRM.id)
    assert target is not None
    return target


def settings_for(fake: FakeGenesys) -> Settings:
    """The sync's settings in force, pointed at ``fake`` instead."""
    return get_settings().model_copy(
        update={
            "genesys_api_host": fake.base_url,
            "genesys_client_id": fake.client_id,
            "genesys_client_secret": SecretStr(fake.client_secret),
        }
    )


@pytest.fixture
def newer_genesys() -> Iterator[FakeGenesys]:
    """A second Genesys API, where an admin has since moved the CRM target to a new URL."""
    with FakeGenesys(FIXTURES) as fake:
        fake.update_config_properties(CRM.id, url=NEW_URL)
        yield fake


def held_sync(genesys: FakeGenesys, meanwhile: Callable[[], Any]) -> SyncReport:
    """A sync against ``genesys`` that has read its snapshot of the table and is waiting for Genesys to
    answer its read of the CRM target while ``meanwhile`` runs; its report once it has finished."""
    released = threading.Event()
    genesys.slow_down(WAIT, path=CRM_READ, until=released)
    settings = get_settings()
    reads_before = genesys.count(CRM_READ)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_config_sync, settings)
        try:
            wait_until(
                lambda: genesys.count(CRM_READ) > reads_before,
                what="the held sync asking Genesys for the CRM target",
            )
            meanwhile()
            assert not run.done(), "the held sync finished before the other writer wrote"
        finally:
            released.set()
        return run.result(timeout=WAIT)


# --- config sync ----------------------------------------------------------------------------------------


def test_an_older_sync_never_overwrites_a_newer_one(genesys: FakeGenesys, newer_genesys: FakeGenesys) -> None:
    # Given the table synced once (CRM at version 1, its fixture URL)
    run_config_sync(get_settings())
    reports: list[SyncReport] = []

    # When a sync of the old config reads the table, a sync of the new config runs to its end, and then
    # the older one writes
    older = held_sync(genesys, lambda: reports.append(run_config_sync(settings_for(newer_genesys))))

    # Then the table holds the newer record, and the older run says it left CRM alone
    (newer,) = reports
    assert newer.conflicts == [] and CRM.id in newer.changed
    crm = stored_crm()
    assert (crm.url, crm.version, crm.enabled) == (NEW_URL, 2, True)
    assert older.conflicts == [Conflict("target", CRM.id)]
    assert older.conflicts[0].reason == "changed concurrently; the next run syncs it"
    assert CRM.id not in older.targets and ARCHIVE.id in older.targets
    assert older.rejected == []
    assert older.to_dict()["conflicts"] == [
        {"kind": "target", "id": CRM.id, "reason": "changed concurrently; the next run syncs it"}
    ]

    # And the next run of the old config's side would sync it: nothing is stuck
    settled = run_config_sync(settings_for(newer_genesys))
    assert settled.conflicts == [] and CRM.id in settled.targets


def test_a_sync_that_read_before_the_dispatcher_disabled_a_target_does_not_enable_it_again(
    genesys: FakeGenesys,
) -> None:
    # Given a synced table
    run_config_sync(get_settings())

    # When the dispatcher disables CRM (it answered 410) while a sync that read it enabled is held
    report = held_sync(
        genesys,
        lambda: target_store(get_settings(), cache_ttl_seconds=0).set_target_enabled(
            INTEGRATION.id, CRM.id, False
        ),
    )

    # Then CRM stays disabled: the sync's write of the unchanged config (enabled, as it read it) lost
    crm = stored_crm()
    assert (crm.enabled, crm.version) == (False, 2)
    assert report.conflicts == [Conflict("target", CRM.id)]


# --- the adapter's condition --------------------------------------------------------------------------


def target(version: int, **changes: Any) -> Target:
    base = Target(
        integration_id="int-1", target_id="t-1", name="t", url="https://example.com/h", version=version
    )
    return base.model_copy(update=changes)


def seed(store: TargetStore, record: Target) -> None:
    """``record`` with its integration (a target is read through its integration's Query)."""
    store.put_integration(Integration(integration_id=record.integration_id, name="i"))
    store.put_target(record)


def fresh_store(aws_stack: LocalResources) -> TargetStore:
    """A store on a client of its own, so a test can hook that client's calls alone."""
    return TargetStore(
        local_client("dynamodb", aws_stack.endpoint_url), aws_stack.targets_table, cache_ttl_seconds=0
    )


def test_save_writes_only_over_the_version_it_read(aws_stack: LocalResources) -> None:
    store = fresh_store(aws_stack)

    # A new record: written only where there is none
    assert store.save(target(1), expected_version=None) is True
    assert store.save(target(1, name="again"), expected_version=None) is False
    # Over version 1: written only when 1 is still what is stored
    assert store.save(target(2, name="second"), expected_version=1) is True
    assert store.save(target(2, name="stale"), expected_version=1) is False
    # The integration's own record takes the same condition
    assert store.save(Integration(integration_id="int-1", name="i"), expected_version=None) is True
    assert store.save(Integration(integration_id="int-1", name="j"), expected_version=None) is False

    stored = store.get_target("int-1", "t-1")
    assert stored is not None and (stored.name, stored.version) == ("second", 2)
    entry = store.get("int-1")
    assert entry is not None and entry.integration.name == "i"


class ConcurrentWriter:
    """Before each conditional PutItem ``client`` sends, another writer (an operator, config sync)
    changes the target first, ``times`` times: a hook on the boundary client, nothing of the relay's
    patched."""

    def __init__(self, aws_stack: LocalResources, client: Any, times: int) -> None:
        self.times = times
        self.writes = 0
        self._other = fresh_store(aws_stack)
        client.meta.events.register("before-parameter-build.dynamodb.PutItem", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        if "ConditionExpression" not in params or self.writes >= self.times:
            return
        self.writes += 1
        current = self._other.get_target("int-1", "t-1")
        assert current is not None
        edited = {"headers": {"X-Edit": str(self.writes)}, "version": current.version + 1}
        self._other.put_target(current.model_copy(update=edited))


def hooked_store(aws_stack: LocalResources, *, races: int) -> tuple[TargetStore, ConcurrentWriter]:
    """A store holding target t-1 at version 1, whose conditional writes each meet a concurrent write
    first, ``races`` times."""
    client = local_client("dynamodb", aws_stack.endpoint_url)
    store = TargetStore(client, aws_stack.targets_table, cache_ttl_seconds=0)
    seed(store, target(1))
    return store, ConcurrentWriter(aws_stack, client, races)


def test_disable_after_a_lost_race_reads_again_and_keeps_the_other_writers_change(
    aws_stack: LocalResources,
) -> None:
    # Given a target, and another writer that changes it once between the dispatcher's read and write
    store, writer = hooked_store(aws_stack, races=1)

    # When the dispatcher disables it (410)
    store.set_target_enabled("int-1", "t-1", False)

    # Then the first write lost, the second (on a fresh read) won: disabled, the other change kept
    stored = store.get_target("int-1", "t-1")
    assert writer.writes == 1
    assert stored is not None
    assert (stored.enabled, stored.headers, stored.version) == (False, {"X-Edit": "1"}, 3)


def test_disable_that_loses_every_race_writes_nothing_and_says_so(aws_stack: LocalResources) -> None:
    store, writer = hooked_store(aws_stack, races=WRITE_ATTEMPTS)

    with pytest.raises(TargetWriteConflict, match="nothing written"):
        store.set_target_enabled("int-1", "t-1", False)

    stored = store.get_target("int-1", "t-1")
    assert writer.writes == WRITE_ATTEMPTS
    assert stored is not None
    assert (stored.enabled, stored.version) == (True, 1 + WRITE_ATTEMPTS)


class ConcurrentDisable:
    """Before the first conditional PutItem ``client`` sends, another operator (or the dispatcher, on a
    410) disables target t-1 first: a hook on the boundary client, nothing of the relay's patched."""

    def __init__(self, aws_stack: LocalResources, client: Any) -> None:
        self.done = False
        self._other = fresh_store(aws_stack)
        client.meta.events.register("before-parameter-build.dynamodb.PutItem", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        if "ConditionExpression" not in params or self.done:
            return
        self.done = True
        self._other.set_target_enabled("int-1", "t-1", False)


def test_a_switch_another_writer_made_first_is_not_audited_as_this_operators(
    aws_stack: LocalResources,
) -> None:
    # Given an enabled target the operator's command has read, and another writer that disables it
    # between that read and the command's write (two `relay targets disable` at once)
    client = local_client("dynamodb", aws_stack.endpoint_url)
    store = TargetStore(client, aws_stack.targets_table, cache_ttl_seconds=0)
    seed(store, target(1))
    read = store.get_target("int-1", "t-1")
    other = ConcurrentDisable(aws_stack, client)
    audit = InMemoryAuditSink()

    # When the operator's switch runs on its read
    assert read is not None
    audited = switch_target(
        store, audit, read, enabled=False, actor="me", now=datetime.now(UTC), operation_id="op"
    )

    # Then it changed nothing and audits nothing: the change is the other writer's
    stored = store.get_target("int-1", "t-1")
    assert other.done and audited is None and audit.objects == {}
    assert stored is not None and (stored.enabled, stored.version) == (False, 2)


def test_disabling_a_disabled_target_writes_nothing(aws_stack: LocalResources) -> None:
    store = fresh_store(aws_stack)
    seed(store, target(4, enabled=False))

    store.set_target_enabled("int-1", "t-1", False)

    stored = store.get_target("int-1", "t-1")
    assert stored is not None and (stored.enabled, stored.version) == (False, 4)

"""Integrations and targets in DynamoDB, behind an in-memory TTL cache (the hot path never calls Genesys).

Table layout (TargetsTable): partition key ``integrationId``, sort key ``targetId``. The integration's
own record sits under the sort key ``#integration``, so one Query per integration returns it together
with all its targets. Each item keeps the model as JSON in ``doc`` (no float/Decimal juggling) plus a
few top-level attributes for operators and conditions: ``version``, ``enabled``, ``syncedAt``.

Writers that read a record first write it back only if it is still the version they read (``save``:
``attribute_not_exists`` for a record that was not there, else ``version = <read>``): config sync, and
the dispatcher disabling a target that answered 410. A writer that read an older state can never
overwrite a newer one; it learns that it lost (``save`` answers False) and leaves the record alone.

A record this release cannot validate (written by a newer release before a rollback, or by hand) never
takes its neighbours down: each target is validated on its own, and one that fails is kept apart in
``IntegrationEntry.unreadable`` with the fields at fault (never a value: a record may hold a secret)
and its item's version, logged at error level once per load. The intake still queues its tasks, the
dispatcher retries them until the record is fixed (``get_target`` raises ``UnreadableRecord``), and
config sync can overwrite it. An unreadable integration record raises ``UnreadableRecord``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from relay.adapters.aws_errors import AWS_ERRORS
from relay.adapters.dynamodb import lost_race, version_condition
from relay.errors import DependencyUnavailable, TargetWriteConflict, UnreadableRecord
from relay.models.targets import Integration, IntegrationEntry, Target, UnreadableTarget
from relay.models.webhook_config import safe_errors
from relay.observability import logger

INTEGRATION_SORT_KEY = "#integration"
# Bounded so that requests naming random integration ids (negative answers are cached too) cannot
# grow a warm container's memory; the least recently used entry goes first.
DEFAULT_CACHE_ENTRIES = 1024
# How many times a read-modify-write (set_target_enabled) reads again after losing a race.
WRITE_ATTEMPTS = 3
# A disabled target's record is read again once it is this old, whatever the TTL: its tasks are being
# dead-lettered, so `relay targets enable` (then a redrive) must take effect at once, not a TTL later.
DISABLED_RECHECK_SECONDS = 1.0


class TargetStore:
    """The TargetsTable through a boto3 DynamoDB client. Every DynamoDB failure, read or write,
    becomes DependencyUnavailable."""

    def __init__(
        self,
        dynamodb: Any,
        table_name: str,
        *,
        cache_ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_cache_entries: int = DEFAULT_CACHE_ENTRIES,
        consistent_reads: bool = False,
    ) -> None:
        """``consistent_reads``: Query with ConsistentRead (config sync, whose conditional writes need
        the version as it is, not as a replica last saw it)."""
        self._table = table_name
        self._consistent = consistent_reads
        self._ttl = cache_ttl_seconds
        self._ddb = dynamodb
        self._clock = clock
        self._max_entries = max(1, max_cache_entries)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, IntegrationEntry | None]] = OrderedDict()

    # --- reads (cached) ---------------------------------------------------------------------------
    def get(self, integration_id: str) -> IntegrationEntry | None:
        """The integration and its targets, or None if unknown. Cached, negative answers included."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(integration_id)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(integration_id)
                return hit[1]
        entry = self._load(integration_id)
        with self._lock:
            self._cache[integration_id] = (now + self._ttl, entry)
            self._cache.move_to_end(integration_id)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return entry

    def get_target(self, integration_id: str, target_id: str) -> Target | None:
        """The target, or None if there is none; ``UnreadableRecord`` when its record (or its
        integration's) cannot be validated."""
        entry = self.get(integration_id)
        target = entry.target(target_id) if entry else None
        if (
            target is not None
            and not target.enabled
            and self._age(integration_id) >= DISABLED_RECHECK_SECONDS
        ):
            self.invalidate(integration_id)
            entry = self.get(integration_id)
            target = entry.target(target_id) if entry else None
        if target is None and entry is not None and target_id in entry.unreadable:
            raise entry.unreadable[target_id].error()
        return target

    def _age(self, integration_id: str) -> float:
        """Seconds since the cached entry was read (0 when there is none)."""
        with self._lock:
            hit = self._cache.get(integration_id)
        return self._clock() - (hit[0] - self._ttl) if hit is not None else 0.0

    def invalidate(self, integration_id: str | None = None) -> None:
        with self._lock:
            if integration_id is None:
                self._cache.clear()
            else:
                self._cache.pop(integration_id, None)

    def _load(self, integration_id: str) -> IntegrationEntry | None:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "integrationId = :id",
            "ExpressionAttributeValues": {":id": {"S": integration_id}},
            "ConsistentRead": self._consistent,
        }
        while True:
            page = self._call("query", **kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        integration: Integration | None = None
        targets: list[Target] = []
        unreadable: dict[str, UnreadableTarget] = {}
        for item in items:
            sort_key = item["targetId"]["S"]
            if sort_key == INTEGRATION_SORT_KEY:
                integration = _integration(integration_id, item)
                continue
            try:
                targets.append(_validated(Target, item))
            except _Unreadable as exc:
                unreadable[sort_key] = UnreadableTarget(integration_id, sort_key, exc.reason, _version(item))
                logger.error(
                    "target record unreadable: its tasks are retried until the record is fixed",
                    extra={"integrationId": integration_id, "targetId": sort_key, "reason": exc.reason},
                )
        if integration is None:
            return None
        return IntegrationEntry(
            integration, tuple(sorted(targets, key=lambda t: t.target_id)), unreadable=unreadable
        )

    def list_integration_ids(self) -> list[str]:
        """Every integration id in the table (operator commands only: this scans)."""
        ids: set[str] = set()
        kwargs: dict[str, Any] = {"TableName": self._table, "ProjectionExpression": "integrationId"}
        while True:
            page = self._call("scan", **kwargs)
            ids.update(item["integrationId"]["S"] for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(ids)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # --- writes (config sync, the dispatcher, operator commands) ----------------------------------------
    def save(
        self, record: Integration | Target, *, expected_version: int | None, unreadable: bool = False
    ) -> bool:
        """Store ``record`` if the stored one is still at ``expected_version`` (None: there is none;
        with ``unreadable``: an unreadable item whose version could not be read either); False, with
        nothing written, when another writer got there first."""
        condition = version_condition("targetId", expected_version, unversioned=unreadable)
        try:
            self._ddb.put_item(TableName=self._table, Item=_item(record), **condition)
        except AWS_ERRORS as exc:
            if lost_race(exc):
                return False
            raise DependencyUnavailable(f"targets table unavailable ({type(exc).__name__})") from None
        finally:
            self.invalidate(record.integration_id)  # the cached entry is older than what is stored now
        return True

    def put_integration(self, integration: Integration) -> None:
        """Unconditional: for seeding a table (tests). Writers that read first use ``save``."""
        self._put(integration)

    def put_target(self, target: Target) -> None:
        """Unconditional: for seeding a table (tests). Writers that read first use ``save``."""
        self._put(target)

    def delete(self, target: Target | UnreadableTarget) -> bool:
        """Delete the target's record if it is still the version ``target`` holds; False, with nothing
        deleted, when another writer changed it since (config sync then leaves it for the next run).
        An unreadable record is deleted at the version its item holds."""
        try:
            self._ddb.delete_item(
                TableName=self._table,
                Key={"integrationId": {"S": target.integration_id}, "targetId": {"S": target.target_id}},
                **version_condition(
                    "targetId", target.version, unversioned=isinstance(target, UnreadableTarget)
                ),
            )
        except AWS_ERRORS as exc:
            if lost_race(exc):
                return False
            raise DependencyUnavailable(f"targets table unavailable ({type(exc).__name__})") from None
        finally:
            self.invalidate(target.integration_id)
        return True

    def set_target_enabled(self, integration_id: str, target_id: str, enabled: bool) -> bool:
        """Enable or disable a target in place (the dispatcher disables a target that answers 410).

        A conditional read-modify-write: a change made since the read (config sync, an operator) is
        never overwritten; the write is tried again on a fresh read, and after WRITE_ATTEMPTS lost races
        ``TargetWriteConflict`` says nothing was written. A target already in that state is left as it is
        (False: this call changed nothing, so an operator's switch is not audited as theirs).
        """
        for _ in range(WRITE_ATTEMPTS):
            target = self._read_target(integration_id, target_id)
            if target is None or target.enabled is enabled:
                return False
            changed = target.model_copy(update={"enabled": enabled, "version": target.version + 1})
            if self.save(changed, expected_version=target.version):
                return True
        raise TargetWriteConflict(
            f"target {target_id} of integration {integration_id} changed under each of "
            f"{WRITE_ATTEMPTS} tries to set enabled={enabled}; nothing written"
        )

    def _read_target(self, integration_id: str, target_id: str) -> Target | None:
        """The stored target as it is now (a consistent read: the version a conditional write needs)."""
        item = self._call(
            "get_item",
            TableName=self._table,
            Key={"integrationId": {"S": integration_id}, "targetId": {"S": target_id}},
            ConsistentRead=True,
        ).get("Item")
        if not item:
            return None
        try:
            return _validated(Target, item)
        except _Unreadable as exc:
            bad = UnreadableTarget(integration_id, target_id, exc.reason, _version(item))
            raise bad.error() from None

    def _put(self, record: Integration | Target) -> None:
        self._call("put_item", TableName=self._table, Item=_item(record))
        self.invalidate(record.integration_id)

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._ddb, operation)(**kwargs)
        except AWS_ERRORS as exc:
            raise DependencyUnavailable(f"targets table unavailable ({type(exc).__name__})") from None


class _Unreadable(Exception):
    """An item whose ``doc`` is not a valid record; ``reason`` is safe to show (no value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _validated[R: (Integration, Target)](model: type[R], item: dict[str, Any]) -> R:
    """The item's record, or _Unreadable saying which fields are at fault (pydantic's locations and
    messages, never the input: a record may hold a secret)."""
    try:
        doc = json.loads(item["doc"]["S"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise _Unreadable("doc: not a JSON document") from None
    try:
        record = model.model_validate(doc)
    except ValidationError as exc:
        raise _Unreadable(safe_errors(exc, whole="record", most=5, quoting=False)) from None
    # A doc naming another record (a hand edit, a copied item) is not read as that one: it would
    # shadow it and its own target would get no task.
    keys = {"integrationId": record.integration_id}
    if isinstance(record, Target):
        keys["targetId"] = record.target_id
    for key, named in keys.items():
        if item.get(key, {}).get("S") != named:
            raise _Unreadable(f"{key}: does not match the record's key")
    return record


def _integration(integration_id: str, item: dict[str, Any]) -> Integration:
    """The integration's own record; UnreadableRecord if it cannot be validated (logged)."""
    try:
        return _validated(Integration, item)
    except _Unreadable as exc:
        logger.error(
            "integration record unreadable: its events are refused (503) until the record is fixed",
            extra={"integrationId": integration_id, "reason": exc.reason},
        )
        why = f"integration record unreadable: {exc.reason}"
        raise UnreadableRecord(f"integration {integration_id}", why, version=_version(item)) from None


def _version(item: dict[str, Any]) -> int | None:
    """The item's ``version`` attribute (what a conditional write compares), None if unreadable."""
    try:
        return int(item["version"]["N"])
    except (KeyError, TypeError, ValueError):
        return None


def _item(record: Integration | Target) -> dict[str, Any]:
    """A record as its TargetsTable item (see the module docstring)."""
    item: dict[str, Any] = {
        "integrationId": {"S": record.integration_id},
        "targetId": {"S": INTEGRATION_SORT_KEY if isinstance(record, Integration) else record.target_id},
        "doc": {"S": record.model_dump_json(by_alias=True)},
        "version": {"N": str(record.version)},
        "enabled": {"BOOL": record.enabled},
    }
    if record.synced_at:
        item["syncedAt"] = {"S": record.synced_at}
    return item

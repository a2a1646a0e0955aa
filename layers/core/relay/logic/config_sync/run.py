"""Config sync: read the integrations named in settings from Genesys Cloud, validate, store.

For each Open Messaging integration (GENESYS_OPEN_MESSAGING_INTEGRATION_IDS) an ``Integration`` record,
with its signature secret in Secrets Manager; for each webhook integration
(GENESYS_WEBHOOK_INTEGRATION_IDS) a ``Target`` under the Open Messaging integration its config names,
with its secret values (auth, signing, encryption, mTLS client certificate) in Secrets Manager.
DynamoDB holds only secret names.

A config that is invalid, disabled, points at an unsafe URL, names a rejected integration, is missing
in Genesys, or fails to read or check in any other way is reported (log + ``TargetsRejected``) and
skipped: the record stored by the last good sync stays in force, so a bad edit in Genesys never stops
deliveries, and the items after it are still synced. Each record is written only if it is still the
version this run read; one that changed meanwhile is left as the other writer stored it and listed
under the report's ``conflicts`` (logged; the next run syncs it). Failures that concern the whole run
(login, 401, 403, 429 past the bound, 5xx, timeouts, the run's deadline, AWS, settings) end the run with a
``GenesysRunError`` (or the AWS/settings error); nothing written so far is undone, and the next
scheduled run starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from relay.errors import (
    ConfigRejected,
    ConfigurationError,
    DependencyUnavailable,
    GenesysError,
    GenesysItemError,
    UnreadableRecord,
)
from relay.logic.config_sync.reading import ConfigReader
from relay.logic.config_sync.report import Conflict, ItemKind, Moved, Rejection, SyncReport
from relay.logic.config_sync.storage import RecordWriter, Written, previous_target
from relay.logic.url_policy import Resolver, UrlPolicy, system_resolver
from relay.models.secrets import SecretKind
from relay.models.targets import Integration, SecurityType, Target, TargetSecurity, UnreadableTarget
from relay.models.timestamps import iso_utc
from relay.models.webhook_config import WebhookSecurity
from relay.observability import logger
from relay.ports import GenesysReader, SecretStore, TargetRecords
from relay.settings import Settings

# Failures that end the whole run: Genesys (any GenesysError but a GenesysItemError), AWS, settings.
_RUN_FAILURES = (GenesysError, ConfigurationError, DependencyUnavailable)
# What odd data in one item can make a library raise (a UnicodeError from IDNA, a KeyError, ...).
_ODD_DATA = (LookupError, TypeError, ValueError, AttributeError, ArithmeticError)

_Checked = TypeVar("_Checked")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def sync_targets(
    settings: Settings,
    *,
    genesys: GenesysReader,
    store: TargetRecords,
    secrets: SecretStore,
    resolve: Resolver = system_resolver,
    now: Callable[[], datetime] = _utc_now,
    metrics: Metrics | None = None,
) -> SyncReport:
    """One sync run (relay.wiring.run_config_sync builds the real collaborators from ``settings``).

    ``metrics`` (the handler passes its powertools Metrics, flushed per invocation) receives
    TargetsSynced and TargetsRejected; callers outside Lambda (the CLI) pass none.
    """
    run = _SyncRun(settings, genesys, store, secrets, resolve, iso_utc(now(), "microseconds"))
    if not settings.genesys_open_messaging_integration_ids and not settings.genesys_webhook_integration_ids:
        logger.warning("config sync has nothing to read: no integration ids in settings")
    try:
        for integration_id in _each_once(
            settings.genesys_open_messaging_integration_ids, "GENESYS_OPEN_MESSAGING_INTEGRATION_IDS"
        ):
            run.sync_integration(integration_id)
        run.sync_eventbridge_integration()
        for target_id in _each_once(
            settings.genesys_webhook_integration_ids, "GENESYS_WEBHOOK_INTEGRATION_IDS"
        ):
            run.sync_target(target_id)
    finally:
        report = run.finished()
        if metrics is not None:
            synced = len(report.integrations) + len(report.targets)
            metrics.add_metric(name="TargetsSynced", unit=MetricUnit.Count, value=synced)
            metrics.add_metric(name="TargetsRejected", unit=MetricUnit.Count, value=len(report.rejected))
    logger.info("config sync done", extra={"report": report.to_dict()})
    return report


def _each_once(ids: list[str], setting: str) -> list[str]:
    """The ids in their order, each once: a second pass over the same item would find the record its
    first pass wrote and report it as changed concurrently."""
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        repeated = sorted({ident for ident in ids if ids.count(ident) > 1})
        logger.warning(
            "a setting lists an id more than once; it is synced once",
            extra={"setting": setting, "ids": repeated},
        )
    return unique


class _SyncRun:
    def __init__(
        self,
        settings: Settings,
        genesys: GenesysReader,
        store: TargetRecords,
        secrets: SecretStore,
        resolve: Resolver,
        synced_at: str,
    ) -> None:
        self._settings = settings
        self.report = SyncReport(synced_at=synced_at)
        self._writer = RecordWriter(store, secrets, prefix=settings.secrets_prefix, synced_at=synced_at)
        open_messaging = set(settings.genesys_open_messaging_integration_ids)
        known = set(open_messaging)
        # Targets are stored only under these: the Open Messaging integrations this run accepted (added
        # as they sync, before any target) and the EventBridge integration, unless it is one of them.
        self._accepted: set[str] = set()
        eventbridge = settings.eventbridge_integration_id
        if eventbridge:
            known.add(eventbridge)
            if eventbridge not in open_messaging:
                self._accepted.add(eventbridge)
        self._reader = ConfigReader(
            genesys,
            policy=UrlPolicy.from_settings(settings),
            resolve=resolve,
            existing_secret=self._writer.current_secret,
            known=known,
            accepted=self._accepted,
        )

    def finished(self) -> SyncReport:
        self.report.secrets_written = self._writer.secrets_written
        return self.report

    def _reject(self, kind: ItemKind, ident: str, reason: str) -> None:
        self.report.rejected.append(Rejection(kind, ident, reason))
        logger.warning(
            "config rejected; the last good config stays in force",
            extra={"kind": kind, "id": ident, "reason": reason},
        )

    def _store(
        self,
        kind: ItemKind,
        record: Integration | Target,
        previous: Integration | Target | UnreadableTarget | UnreadableRecord | None,
        *,
        secrets_changed: bool = False,
    ) -> bool:
        """Write ``record`` and report it: accepted (and changed), or a conflict when it changed since
        this run read it (False)."""
        ident = record.integration_id if isinstance(record, Integration) else record.target_id
        written = self._writer.write(record, previous)
        if secrets_changed or written is Written.CHANGED:
            self.report.changed.append(ident)
        if written is Written.CONFLICT:
            self.report.conflicts.append(Conflict(kind, ident))
            logger.warning(
                "record changed since this run read it; left as it is, the next run syncs it",
                extra={"kind": kind, "id": ident},
            )
            return False
        (self.report.integrations if kind == "integration" else self.report.targets).append(ident)
        return True

    def _checked(self, kind: ItemKind, ident: str, read: Callable[[str], _Checked]) -> _Checked | None:
        """``read(ident)`` (Genesys reads and validation of one item), or None when the item is rejected.

        Run-level failures propagate and end the run. What concerns this item only rejects it with a
        reason, and the run goes on with the next item. Our own errors carry messages safe to log; odd
        data tripping a library is named by the exception's type only, as its message might quote a
        secret value.
        """
        try:
            return read(ident)
        except (ConfigRejected, GenesysItemError) as exc:
            reason = str(exc)
        except _RUN_FAILURES:
            raise
        except _ODD_DATA as exc:  # one item's bad data never ends the run
            reason = f"unexpected {type(exc).__name__} while reading or checking its config"
        self._reject(kind, ident, reason)
        return None

    # --- Open Messaging integrations ---------------------------------------------------------------
    def sync_integration(self, integration_id: str) -> None:
        checked = self._checked("integration", integration_id, self._reader.open_integration)
        if checked is None:
            return
        name, secret = checked
        writer = self._writer
        secret_ref = writer.secret_name(SecretKind.SIGNATURE, integration_id)
        secret_changed = (
            writer.store_secret(SecretKind.SIGNATURE, integration_id, secret) if secret else False
        )
        record = Integration(
            integration_id=integration_id, name=name, enabled=True, signature_secret_name=secret_ref
        )
        previous = self._stored_integration(integration_id)
        self._store("integration", record, previous, secrets_changed=secret_changed)
        # Genesys confirmed it this run, so its targets may be stored even if its own record was changed
        # concurrently: their writes are conditional too.
        self._accepted.add(integration_id)

    def sync_eventbridge_integration(self) -> None:
        """The record the intake's EventBridge path fans out from, when it is not an Open Messaging one.

        Genesys has no integration to read for it (its events come from the AWS partner source), so the
        record is the relay's own: no signature secret, so the webhook path refuses it."""
        integration_id = self._settings.eventbridge_integration_id
        if not integration_id or integration_id in self._settings.genesys_open_messaging_integration_ids:
            return
        previous = self._stored_integration(integration_id)
        if isinstance(previous, Integration) and previous.signature_secret_name is not None:
            # An Open Messaging integration's record, which a run with other settings stored (a terminal
            # sync without GENESYS_OPEN_MESSAGING_INTEGRATION_IDS, say). Replacing it would close its
            # webhook path: 404 to every event, which Genesys never retries. Left as it is, like any
            # integration a run does not sync.
            logger.warning(
                "the EventBridge integration is stored as an Open Messaging integration, which this run "
                "does not sync (is GENESYS_OPEN_MESSAGING_INTEGRATION_IDS set?): its record is left as it is",
                extra={"id": integration_id},
            )
            return
        record = Integration(integration_id=integration_id, name="Genesys EventBridge", enabled=True)
        self._store("integration", record, previous)

    def _stored_integration(self, integration_id: str) -> Integration | UnreadableRecord | None:
        """The integration's record as the table holds it; one this release cannot read comes back as
        its error (with the item's version), so that the run replaces it instead of ending there."""
        try:
            stored = self._writer.stored(integration_id)
        except UnreadableRecord as unreadable:
            return unreadable
        return stored.integration if stored else None

    # --- webhook targets ---------------------------------------------------------------------------
    def sync_target(self, target_id: str) -> None:
        config = self._checked("target", target_id, self._reader.checked_target)
        if config is None:
            return
        writer = self._writer
        secrets_changed, security = self._store_security(target_id, config.security)
        signing_name = encryption_name = None
        if config.signing_secret is not None:
            secrets_changed |= writer.store_secret(SecretKind.SIGNING, target_id, config.signing_secret)
            signing_name = writer.secret_name(SecretKind.SIGNING, target_id)
        if config.encryption_key is not None:
            secrets_changed |= writer.store_secret(SecretKind.ENCRYPTION, target_id, config.encryption_key)
            encryption_name = writer.secret_name(SecretKind.ENCRYPTION, target_id)
        record = Target(
            integration_id=config.integration_id,
            target_id=target_id,
            name=config.name,
            enabled=True,
            url=config.url,
            method=config.method,
            headers=config.headers,
            security=security,
            signing_secret_name=signing_name,
            encryption_key_name=encryption_name,
            retry_matrix=config.retry_matrix,
            connect_timeout_seconds=config.connect_timeout_seconds,
            read_timeout_seconds=config.read_timeout_seconds,
            ordering=config.ordering,
            on_exhausted=config.on_exhausted,
            filters=config.filters,
            rate_limit=config.rate_limit,
        )
        try:
            previous = previous_target(writer.stored(config.integration_id), target_id)
        except UnreadableRecord as exc:  # its integration's record was not rewritten this run (a conflict)
            self._reject("target", target_id, f"its integration's record cannot be read ({exc.why})")
            return
        if self._store("target", record, previous, secrets_changed=secrets_changed):
            self._delete_moved_from(record)

    def _delete_moved_from(self, target: Target) -> None:
        """Delete the target's records under integrations its config no longer names: left in place,
        the old integration's events would go on reaching it. One changed since this run read it is
        left (a conflict; the next run deletes it)."""
        for old in self._writer.copies_elsewhere(target):
            if not self._writer.delete(old):
                self.report.conflicts.append(Conflict("target", old.target_id))
                continue
            self.report.moved.append(Moved(target.target_id, old.integration_id, target.integration_id))
            logger.info(
                "target moved to another integration; its old record is deleted",
                extra={"id": target.target_id, "from": old.integration_id, "to": target.integration_id},
            )

    def _store_security(self, target_id: str, config: WebhookSecurity) -> tuple[bool, TargetSecurity]:
        """Store the target's auth value (token, "user:password", OAuth client secret) and client
        certificate; the record's security part, which names them. True if a secret was written."""
        writer = self._writer
        changed = False
        security = TargetSecurity()
        if config.type is not SecurityType.NONE and config.value is not None:
            changed |= writer.store_secret(SecretKind.AUTH, target_id, config.value)
            security = TargetSecurity(
                type=config.type,
                secret_name=writer.secret_name(SecretKind.AUTH, target_id),
                oauth2=config.oauth2,
            )
        if config.client_certificate is not None:
            changed |= writer.store_secret(SecretKind.MTLS, target_id, config.client_certificate)
            mtls_name = writer.secret_name(SecretKind.MTLS, target_id)
            security = security.model_copy(update={"client_certificate_name": mtls_name})
        return changed, security

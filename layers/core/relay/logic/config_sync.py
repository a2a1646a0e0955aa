"""Config sync: read the integrations named in settings from Genesys Cloud, validate, store.

For each Open Messaging integration (GENESYS_OPEN_MESSAGING_INTEGRATION_IDS) an ``Integration`` record,
with its signature secret in Secrets Manager; for each webhook integration
(GENESYS_WEBHOOK_INTEGRATION_IDS) a ``Target`` under the Open Messaging integration its config names,
with its secret values (auth, signing, encryption) in Secrets Manager. DynamoDB holds only secret names.

A config that is invalid, disabled, points at an unsafe URL, names a rejected integration, is missing
in Genesys, or fails to read or check in any other way is reported (log + ``TargetsRejected``) and
skipped: the record stored by the last good sync stays in force, so a bad edit in Genesys never stops
deliveries, and the items after it are still synced. Failures that concern the whole run (login, 401,
403, 429 past the bound, 5xx, timeouts, the run's deadline, AWS, settings) end the run with a
``GenesysRunError`` (or the AWS/settings error); nothing written so far is undone, and the next
scheduled run starts over.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import SecretStr, ValidationError

from relay.adapters.secrets import get_secret, put_secret, secret_name
from relay.adapters.target_store import TargetStore
from relay.errors import (
    ConfigRejected,
    ConfigurationError,
    DependencyUnavailable,
    GenesysError,
    GenesysItemError,
    UnsafeUrl,
)
from relay.logic.url_policy import Resolver, UrlPolicy, system_resolver
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.targets import Integration, IntegrationEntry, SecurityType, Target, TargetSecurity
from relay.models.webhook_config import WebhookConfig, safe_errors, webhook_config_from_genesys
from relay.observability import logger
from relay.settings import Settings

# Genesys wants the Open Messaging signature secret longer than 15 characters.
MIN_SIGNATURE_SECRET_CHARS = 16
# Credential keys in a webhook integration's config (config.credentials), see docs/config-sync.md.
CREDENTIAL_KEYS = ("security", "signingSecret", "encryptionKey")
# Failures that end the whole run: Genesys (any GenesysError but a GenesysItemError), AWS, settings.
_RUN_FAILURES = (GenesysError, ConfigurationError, DependencyUnavailable)

_Checked = TypeVar("_Checked")


class GenesysReader(Protocol):
    """What the sync needs from Genesys Cloud (relay.adapters.genesys.GenesysClient)."""

    def get_open_integration(self, integration_id: str) -> dict[str, Any]: ...
    def get_integration(self, integration_id: str) -> dict[str, Any]: ...
    def get_integration_config(self, integration_id: str) -> dict[str, Any]: ...
    def get_credential(self, credential_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Rejection:
    kind: Literal["integration", "target"]
    id: str
    reason: str


@dataclass
class SyncReport:
    integrations: list[str] = field(default_factory=list)  # accepted (written, version bumped if changed)
    targets: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # ids whose record or secrets changed this run
    rejected: list[Rejection] = field(default_factory=list)
    secrets_written: int = 0
    synced_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "syncedAt": self.synced_at,
            "integrations": self.integrations,
            "targets": self.targets,
            "changed": self.changed,
            "rejected": [{"kind": r.kind, "id": r.id, "reason": r.reason} for r in self.rejected],
            "secretsWritten": self.secrets_written,
        }


def warm_up() -> None:
    """Load the Genesys SDK now (the handler calls this at import, inside Lambda's init phase)."""
    from relay.adapters.genesys import load_sdk

    load_sdk()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def sync_targets(
    settings: Settings,
    *,
    genesys: GenesysReader | None = None,
    store: TargetStore | None = None,
    resolve: Resolver = system_resolver,
    now: Callable[[], datetime] = _utc_now,
    metrics: Metrics | None = None,
) -> SyncReport:
    """One sync run. ``genesys`` and ``store`` default to the real adapters built from ``settings``.

    ``metrics`` (the handler passes its powertools Metrics, flushed per invocation) receives
    TargetsSynced and TargetsRejected; callers outside Lambda (the CLI) pass none.
    """
    if genesys is None:
        from relay.adapters.genesys import GenesysClient  # loads the SDK: config sync only

        genesys = GenesysClient.from_settings(settings)
    if store is None:
        store = TargetStore(settings.need("targets_table"), cache_ttl_seconds=0)
    run = _SyncRun(settings, genesys, store, resolve, now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    if not settings.genesys_open_messaging_integration_ids and not settings.genesys_webhook_integration_ids:
        logger.warning("config sync has nothing to read: no integration ids in settings")
    try:
        for integration_id in settings.genesys_open_messaging_integration_ids:
            run.sync_integration(integration_id)
        run.sync_eventbridge_integration()
        for target_id in settings.genesys_webhook_integration_ids:
            run.sync_target(target_id)
    finally:
        report = run.report
        if metrics is not None:
            synced = len(report.integrations) + len(report.targets)
            metrics.add_metric(name="TargetsSynced", unit=MetricUnit.Count, value=synced)
            metrics.add_metric(name="TargetsRejected", unit=MetricUnit.Count, value=len(report.rejected))
    logger.info("config sync done", extra={"report": report.to_dict()})
    return report


class _SyncRun:
    def __init__(
        self,
        settings: Settings,
        genesys: GenesysReader,
        store: TargetStore,
        resolve: Resolver,
        synced_at: str,
    ) -> None:
        self._settings = settings
        self._genesys = genesys
        self._store = store
        self._resolve = resolve
        self.report = SyncReport(synced_at=synced_at)
        self._stored_entries: dict[str, IntegrationEntry | None] = {}
        open_messaging = set(settings.genesys_open_messaging_integration_ids)
        self._known_integrations = set(open_messaging)
        # Targets are stored only under these: the Open Messaging integrations this run accepted (added
        # as they sync, before any target) and the EventBridge integration, unless it is one of them.
        self._accepted_integrations: set[str] = set()
        eventbridge = settings.eventbridge_integration_id
        if eventbridge:
            self._known_integrations.add(eventbridge)
            if eventbridge not in open_messaging:
                self._accepted_integrations.add(eventbridge)

    def _reject(self, kind: Literal["integration", "target"], ident: str, reason: str) -> None:
        self.report.rejected.append(Rejection(kind, ident, reason))
        logger.warning(
            "config rejected; the last good config stays in force",
            extra={"kind": kind, "id": ident, "reason": reason},
        )

    def _checked(
        self, kind: Literal["integration", "target"], ident: str, read: Callable[[str], _Checked]
    ) -> _Checked | None:
        """``read(ident)`` (Genesys reads and validation of one item), or None when the item is rejected.

        Run-level failures propagate and end the run. Anything else concerns this item only: it is
        rejected with a reason and the run goes on with the next item. Our own errors carry messages
        safe to log; any other exception (odd data tripping a library) is named by its type only, as
        its message might quote a secret value.
        """
        try:
            return read(ident)
        except (ConfigRejected, GenesysItemError) as exc:
            reason = str(exc)
        except _RUN_FAILURES:
            raise
        except Exception as exc:  # noqa: BLE001 - one item's bad data never ends the run
            reason = f"unexpected {type(exc).__name__} while reading or checking its config"
        self._reject(kind, ident, reason)
        return None

    # --- Open Messaging integrations ---------------------------------------------------------------
    def sync_integration(self, integration_id: str) -> None:
        checked = self._checked("integration", integration_id, self._read_open_integration)
        if checked is None:
            return
        name, secret = checked
        secret_ref = secret_name(SecretKind.SIGNATURE, integration_id)
        changed = self._store_secret(SecretKind.SIGNATURE, integration_id, secret) if secret else False
        record = Integration(
            integration_id=integration_id, name=name, enabled=True, signature_secret_name=secret_ref
        )
        stored = self._stored(integration_id)
        previous = stored.integration if stored else None
        changed = self._write(record, previous) or changed
        self.report.integrations.append(integration_id)
        self._accepted_integrations.add(integration_id)
        if changed:
            self.report.changed.append(integration_id)

    def _read_open_integration(self, integration_id: str) -> tuple[str, SecretStr | None]:
        doc = self._genesys.get_open_integration(integration_id)
        if doc.get("id") != integration_id:
            raise ConfigRejected("Genesys answered with a different integration id")
        name = (doc.get("name") or "").strip()
        if not name:
            raise ConfigRejected("integration has no name")
        if str(doc.get("createStatus") or "").lower() == "error":
            raise ConfigRejected("integration creation failed in Genesys (createStatus Error)")
        if str(doc.get("status") or "Active").lower() != "active":
            raise ConfigRejected(f"integration is disabled in Genesys (status {doc.get('status')})")
        token = doc.get("outboundNotificationWebhookSignatureSecretToken")
        if token:
            if len(token) < MIN_SIGNATURE_SECRET_CHARS:
                raise ConfigRejected(f"signature secret shorter than {MIN_SIGNATURE_SECRET_CHARS} characters")
            return name, SecretStr(token)
        # Genesys may not return the secret in clear: keep the one already in Secrets Manager.
        if self._existing_secret(secret_name(SecretKind.SIGNATURE, integration_id)) is None:
            raise ConfigRejected("Genesys returned no signature secret and Secrets Manager holds none")
        return name, None

    def sync_eventbridge_integration(self) -> None:
        """The record the intake's EventBridge path fans out from, when it is not an Open Messaging one.

        Genesys has no integration to read for it (its events come from the AWS partner source), so the
        record is the relay's own: no signature secret, so the webhook path refuses it."""
        integration_id = self._settings.eventbridge_integration_id
        if not integration_id or integration_id in self._settings.genesys_open_messaging_integration_ids:
            return
        stored = self._stored(integration_id)
        previous = stored.integration if stored else None
        record = Integration(integration_id=integration_id, name="Genesys EventBridge", enabled=True)
        if self._write(record, previous):
            self.report.changed.append(integration_id)
        self.report.integrations.append(integration_id)

    # --- webhook targets ---------------------------------------------------------------------------
    def sync_target(self, target_id: str) -> None:
        config = self._checked("target", target_id, self._read_checked_target)
        if config is None:
            return
        changed = False
        security = TargetSecurity()
        if config.security.type is not SecurityType.NONE and config.security.value is not None:
            changed |= self._store_secret(SecretKind.AUTH, target_id, config.security.value)
            security = TargetSecurity(
                type=config.security.type, secret_name=secret_name(SecretKind.AUTH, target_id)
            )
        signing_name = encryption_name = None
        if config.signing_secret is not None:
            changed |= self._store_secret(SecretKind.SIGNING, target_id, config.signing_secret)
            signing_name = secret_name(SecretKind.SIGNING, target_id)
        if config.encryption_key is not None:
            changed |= self._store_secret(SecretKind.ENCRYPTION, target_id, config.encryption_key)
            encryption_name = secret_name(SecretKind.ENCRYPTION, target_id)
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
        )
        stored = self._stored(config.integration_id)
        changed = self._write(record, stored.target(target_id) if stored else None) or changed
        self.report.targets.append(target_id)
        if changed:
            self.report.changed.append(target_id)

    def _read_checked_target(self, target_id: str) -> WebhookConfig:
        """The target's config, checked, with its URL normalised as the dispatcher will connect to it."""
        config = self._read_webhook_config(target_id)
        return config.model_copy(update={"url": self._check_target(config)})

    def _read_webhook_config(self, target_id: str) -> WebhookConfig:
        integration = self._genesys.get_integration(target_id)
        if integration.get("id") != target_id:
            raise ConfigRejected("Genesys answered with a different integration id")
        config = self._genesys.get_integration_config(target_id)
        references = config.get("credentials") or {}
        values: dict[str, str | None] = {}
        for key, kind in zip(
            CREDENTIAL_KEYS, (SecretKind.AUTH, SecretKind.SIGNING, SecretKind.ENCRYPTION), strict=True
        ):
            ref = references.get(key) if isinstance(references, dict) else None
            value = self._credential_value(ref["id"]) if isinstance(ref, dict) and ref.get("id") else None
            if value is None and isinstance(ref, dict):
                # Genesys redacts credential fields for some clients: keep what Secrets Manager holds.
                existing = self._existing_secret(secret_name(kind, target_id))
                value = existing.current.get_secret_value() if existing else None
            values[key] = value
        try:
            return webhook_config_from_genesys(integration, config, values)
        except ValidationError as exc:
            raise ConfigRejected(f"invalid config: {safe_errors(exc)}") from None

    def _credential_value(self, credential_id: str) -> str | None:
        fields = self._genesys.get_credential(credential_id).get("credentialFields") or {}
        if not isinstance(fields, dict):
            return None
        value = fields.get("value") or fields.get("token")
        if value is None and fields.get("userName") and fields.get("password"):
            value = f"{fields['userName']}:{fields['password']}"
        if not isinstance(value, str) or not value or set(value) == {"*"}:
            return None  # absent or redacted
        return value

    def _check_target(self, config: WebhookConfig) -> str:
        """The target's URL as the dispatcher will use it (normalised), if the config may be stored."""
        if not config.enabled:
            raise ConfigRejected("webhook integration is disabled in Genesys")
        if config.integration_id not in self._known_integrations:
            raise ConfigRejected(
                f"config names open messaging integration {config.integration_id}, which is not in "
                "GENESYS_OPEN_MESSAGING_INTEGRATION_IDS"
            )
        if config.integration_id not in self._accepted_integrations:
            raise ConfigRejected(
                f"config names open messaging integration {config.integration_id}, which this run "
                "rejected (see its own rejection)"
            )
        try:
            return UrlPolicy.from_settings(self._settings).check_url(config.url, resolve=self._resolve)
        except UnsafeUrl as exc:
            raise ConfigRejected(f"URL refused: {exc}") from None

    # --- storage -----------------------------------------------------------------------------------
    def _stored(self, integration_id: str) -> IntegrationEntry | None:
        """What the table held for this integration when the run first looked (one Query per integration)."""
        if integration_id not in self._stored_entries:
            self._store.invalidate(integration_id)
            self._stored_entries[integration_id] = self._store.get(integration_id)
        return self._stored_entries[integration_id]

    def _write(self, record: Integration | Target, previous: Integration | Target | None) -> bool:
        """Write ``record`` with a version (bumped only when its content changed) and syncedAt.

        ``enabled`` belongs to the relay once a record exists (the dispatcher disables a target that
        answers 410; an operator may disable one): an unchanged config keeps it, a changed one (say, a
        new URL) enables the record again.
        """
        ignore = {"version", "synced_at", "enabled"}
        changed = previous is None or previous.model_dump(exclude=ignore) != record.model_dump(exclude=ignore)
        update: dict[str, object] = {"synced_at": self.report.synced_at}
        if previous is None:
            update["version"] = 1
        elif changed:
            update["version"] = previous.version + 1
        else:
            update.update(version=previous.version, enabled=previous.enabled)
        final = record.model_copy(update=update)
        if isinstance(final, Integration):
            self._store.put_integration(final)
        else:
            self._store.put_target(final)
        return changed

    @staticmethod
    def _existing_secret(name: str) -> RotatingSecret | None:
        try:
            return get_secret(name, force_fetch=True)
        except ConfigurationError:  # absent (or not in our shape: it gets overwritten)
            return None

    def _store_secret(self, kind: SecretKind, ident: str, value: SecretStr) -> bool:
        """Put ``value`` under the secret's name unless it is already current; True if written.

        Rotation: a changed signature/signing/auth value keeps the old one as ``previous``. An encryption
        key gets a fresh random 16-byte salt and a new keyId per key version; unchanged keys keep theirs.
        """
        name = secret_name(kind, ident)
        existing = self._existing_secret(name)
        unchanged = existing is not None and hmac.compare_digest(
            existing.current.get_secret_value().encode(), value.get_secret_value().encode()
        )
        if kind is SecretKind.ENCRYPTION:
            kept = existing if unchanged else None
            if kept is not None and kept.salt and kept.key_id:
                return False
            secret = RotatingSecret(
                current=value,
                key_id=(kept.key_id if kept else None) or secrets.token_hex(8),
                salt=(kept.salt if kept else None) or secrets.token_hex(16),  # 16 random bytes, hex
            )
        else:
            if unchanged:
                return False
            secret = RotatingSecret(current=value, previous=existing.current if existing else None)
        put_secret(name, secret)
        self.report.secrets_written += 1
        return True

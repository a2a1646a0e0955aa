"""Writing what config sync accepted: records in the TargetsTable (versioned, with syncedAt, each write
conditional on the version the run read) and secret values in Secrets Manager (rotation kept: the old
value stays as ``previous``)."""

from __future__ import annotations

import hmac
import secrets
from enum import Enum

from pydantic import SecretStr

from relay.errors import ConfigurationError, SecretNotFound, UnreadableRecord
from relay.models.secrets import RotatingSecret, SecretKind, secret_name
from relay.models.targets import Integration, IntegrationEntry, Target, UnreadableTarget
from relay.observability import logger
from relay.ports import SecretStore, TargetRecords


class Written(Enum):
    """What became of one record this run wrote."""

    UNCHANGED = "unchanged"  # stored again as it was (syncedAt moves)
    CHANGED = "changed"  # stored with the next version
    CONFLICT = "conflict"  # not stored: another writer changed it after this run read it


class RecordWriter:
    """One run's writes; ``secrets_written`` counts the secret versions it stored."""

    def __init__(self, store: TargetRecords, secrets: SecretStore, *, prefix: str, synced_at: str) -> None:
        self._store = store
        self._secrets = secrets
        self._prefix = prefix
        self._synced_at = synced_at
        self._stored_entries: dict[str, IntegrationEntry | None] = {}
        self._all_integration_ids: list[str] | None = None
        self.secrets_written = 0

    def secret_name(self, kind: SecretKind, ident: str) -> str:
        return secret_name(self._prefix, kind, ident)

    def stored(self, integration_id: str) -> IntegrationEntry | None:
        """What the table held for this integration when the run first looked (one Query per integration).
        UnreadableRecord when its integration record cannot be read (not kept: read again once rewritten)."""
        if integration_id not in self._stored_entries:
            self._store.invalidate(integration_id)
            self._stored_entries[integration_id] = self._store.get(integration_id)
        return self._stored_entries[integration_id]

    def copies_elsewhere(self, target: Target) -> list[Target | UnreadableTarget]:
        """Records of ``target`` under other integrations, as this run read them (the table is scanned
        for its integration ids once per run, when the first target is written); unreadable ones too."""
        if self._all_integration_ids is None:
            self._all_integration_ids = self._store.list_integration_ids()
        copies = []
        for integration_id in self._all_integration_ids:
            try:
                entry = self.stored(integration_id) if integration_id != target.integration_id else None
            except UnreadableRecord as exc:  # a stale integration's record: its copies cannot be seen
                logger.warning(
                    "integration record unreadable: the target's copies under it are not looked for",
                    extra={"integrationId": integration_id, "id": target.target_id, "reason": exc.why},
                )
                continue
            copy = previous_target(entry, target.target_id)
            if copy is not None:
                copies.append(copy)
        return copies

    def delete(self, target: Target | UnreadableTarget) -> bool:
        """Delete ``target``'s record if it is still as this run read it."""
        return self._store.delete(target)

    def write(
        self,
        record: Integration | Target,
        previous: Integration | Target | UnreadableTarget | UnreadableRecord | None,
    ) -> Written:
        """Write ``record`` with a version (bumped only when its content changed) and syncedAt, if the
        table still holds ``previous`` (what this run read): a run that read an older state never
        overwrites a newer write (another sync, the dispatcher disabling a target, an operator).

        ``enabled`` belongs to the relay once a record exists (the dispatcher disables a target that
        answers 410; an operator may disable one): an unchanged config keeps it, a changed one (say, a
        new URL) enables the record again. A record this release cannot read is replaced whole (a
        change), at the version its item holds.
        """
        if isinstance(previous, UnreadableTarget | UnreadableRecord):
            fresh = {"synced_at": self._synced_at, "version": (previous.version or 0) + 1}
            replaced = self._store.save(
                record.model_copy(update=fresh), expected_version=previous.version, unreadable=True
            )
            return Written.CHANGED if replaced else Written.CONFLICT
        ignore = {"version", "synced_at", "enabled"}
        changed = previous is None or previous.model_dump(exclude=ignore) != record.model_dump(exclude=ignore)
        update: dict[str, object] = {"synced_at": self._synced_at}
        if previous is None:
            update["version"] = 1
        elif changed:
            update["version"] = previous.version + 1
        else:
            update.update(version=previous.version, enabled=previous.enabled)
        stored = self._store.save(
            record.model_copy(update=update), expected_version=previous.version if previous else None
        )
        if not stored:
            return Written.CONFLICT
        return Written.CHANGED if changed else Written.UNCHANGED

    def current_secret(self, kind: SecretKind, ident: str) -> RotatingSecret | None:
        """What Secrets Manager holds now (read afresh), or None; UnusableSecret when it holds a value
        not in the relay's shape (a value Genesys redacted cannot be kept from it: the reason says so)."""
        try:
            return self._secrets.get(self.secret_name(kind, ident), force_fetch=True)
        except SecretNotFound:
            return None

    def _existing(self, name: str) -> RotatingSecret | None:
        try:
            return self._secrets.get(name, force_fetch=True)
        except ConfigurationError:  # absent (or not in our shape: it gets overwritten)
            return None

    def store_secret(self, kind: SecretKind, ident: str, value: SecretStr) -> bool:
        """Put ``value`` under the secret's name unless it is already current; True if written.

        Rotation: a changed value keeps the old one as ``previous``. An encryption key also gets a fresh
        random 16-byte salt and a new keyId per key version; unchanged keys keep theirs (and their
        ``previous``). The dispatcher seals with ``current`` only; ``previous`` is for ``relay decrypt
        --secret``, since an envelope sealed before the change carries its own salt.
        """
        name = self.secret_name(kind, ident)
        existing = self._existing(name)
        unchanged = existing is not None and hmac.compare_digest(
            existing.current.get_secret_value().encode(), value.get_secret_value().encode()
        )
        if kind is SecretKind.ENCRYPTION:
            kept = existing if unchanged else None
            if kept is not None and kept.salt and kept.key_id:
                return False
            secret = RotatingSecret(
                current=value,
                previous=kept.previous if kept else existing.current if existing else None,
                key_id=(kept.key_id if kept else None) or secrets.token_hex(8),
                salt=(kept.salt if kept else None) or secrets.token_hex(16),  # 16 random bytes, hex
            )
        else:
            if unchanged:
                return False
            secret = RotatingSecret(current=value, previous=existing.current if existing else None)
        self._secrets.put(name, secret)
        self.secrets_written += 1
        return True


def previous_target(entry: IntegrationEntry | None, target_id: str) -> Target | UnreadableTarget | None:
    """The target's record in ``entry`` as read, readable or not; None when there is none."""
    if entry is None:
        return None
    return entry.target(target_id) or entry.unreadable.get(target_id)

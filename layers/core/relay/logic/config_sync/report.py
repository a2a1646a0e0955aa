"""What one config-sync run did: accepted, changed, rejected, conflicting and moved ids; secrets written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ItemKind = Literal["integration", "target"]
# Why a record is listed under ``conflicts``: another writer changed it after this run read it.
CONCURRENT_CHANGE = "changed concurrently; the next run syncs it"


@dataclass(frozen=True)
class Rejection:
    kind: ItemKind
    id: str
    reason: str


@dataclass(frozen=True)
class Conflict:
    """A record this run did not write: it changed after the run read it (another sync, the dispatcher
    disabling a target, an operator). What that writer stored stays; it is not a rejected config."""

    kind: ItemKind
    id: str
    reason: str = CONCURRENT_CHANGE


@dataclass(frozen=True)
class Moved:
    """A target whose Genesys config now names another integration: stored under ``to_integration``,
    its record under ``from_integration`` deleted, so the old integration's events stop reaching it."""

    target_id: str
    from_integration: str
    to_integration: str


@dataclass
class SyncReport:
    integrations: list[str] = field(default_factory=list)  # accepted (written, version bumped if changed)
    targets: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # ids whose record or secrets changed this run
    rejected: list[Rejection] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)  # not written: changed since this run read it
    moved: list[Moved] = field(default_factory=list)
    secrets_written: int = 0
    synced_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "syncedAt": self.synced_at,
            "integrations": self.integrations,
            "targets": self.targets,
            "changed": self.changed,
            "rejected": [{"kind": r.kind, "id": r.id, "reason": r.reason} for r in self.rejected],
            "conflicts": [{"kind": c.kind, "id": c.id, "reason": c.reason} for c in self.conflicts],
            "moved": [
                {"target": m.target_id, "from": m.from_integration, "to": m.to_integration}
                for m in self.moved
            ],
            "secretsWritten": self.secrets_written,
        }

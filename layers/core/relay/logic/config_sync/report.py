"""What one config-sync run did: accepted, changed and rejected ids, and secrets written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ItemKind = Literal["integration", "target"]


@dataclass(frozen=True)
class Rejection:
    kind: ItemKind
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

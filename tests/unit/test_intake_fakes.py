"""In-memory collaborators for the intake's unit tests (requests: support.events.api_gateway_event)."""

from __future__ import annotations

import json
from typing import Any

from support.events import INTEGRATION_ID, SIGNATURE_SECRET

from relay.logic.intake import Intake
from relay.models.event_filters import EventFilters
from relay.models.secrets import RotatingSecret
from relay.models.targets import Integration, IntegrationEntry, Target
from relay.testing.fakes import InMemoryClaimCheckStore, InMemoryDeliveryQueue, InMemoryIdempotencyStore

PREVIOUS_SECRET = "previous-signature-secret-0000"
SECRET_NAME = f"relay/local/signature/{INTEGRATION_ID}"


def make_entry(
    target_ids: tuple[str, ...] = ("t-a", "t-b"),
    disabled: tuple[str, ...] = (),
    filters: dict[str, dict[str, Any]] | None = None,
) -> IntegrationEntry:
    """The integration with these targets; ``filters`` maps a target id to its event filters' config."""
    integration = Integration(integration_id=INTEGRATION_ID, name="Acme", signature_secret_name=SECRET_NAME)
    targets = tuple(
        Target(
            integration_id=INTEGRATION_ID,
            target_id=target_id,
            name=target_id,
            url=f"https://example.com/{target_id}",
            enabled=target_id not in disabled,
            filters=EventFilters.model_validate((filters or {}).get(target_id, {})),
        )
        for target_id in target_ids
    )
    return IntegrationEntry(integration, targets)


class Integrations:
    def __init__(self, *entries: IntegrationEntry) -> None:
        self.entries = {entry.integration.integration_id: entry for entry in entries}
        self.lookups = 0

    def get(self, integration_id: str) -> IntegrationEntry | None:
        self.lookups += 1
        return self.entries.get(integration_id)


class Secrets:
    def __init__(self, current: str = SIGNATURE_SECRET, previous: str | None = None) -> None:
        self.secret = RotatingSecret(current=current, previous=previous)

    def __call__(self, name: str) -> RotatingSecret:
        assert name == SECRET_NAME
        return self.secret


def make_intake(**overrides: Any) -> tuple[Intake, InMemoryDeliveryQueue]:
    queue = overrides.pop("queue", None) or InMemoryDeliveryQueue()
    options: dict[str, Any] = {
        "integrations": Integrations(make_entry()),
        "get_secret": Secrets(),
        "queue": queue,
        "idempotency": InMemoryIdempotencyStore(),
        "claim_checks": InMemoryClaimCheckStore(),
    }
    options.update(overrides)
    return Intake(**options), queue


def answer(response: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(response["body"])
    return loaded

"""The config-sync function's object graph (see relay.wiring). The Genesys SDK loads only here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Metrics

from relay.logic.config_sync import SyncReport, sync_targets
from relay.logic.url_policy import Resolver, system_resolver
from relay.ports import GenesysReader, SecretStore, TargetRecords
from relay.settings import Settings
from relay.wiring import secret_store, target_store


def warm_up() -> None:
    """Load the Genesys SDK now (the handler calls this at import, inside Lambda's init phase)."""
    from relay.adapters.genesys import load_sdk

    load_sdk()


def run_config_sync(
    settings: Settings,
    *,
    genesys: GenesysReader | None = None,
    store: TargetRecords | None = None,
    secrets: SecretStore | None = None,
    resolve: Resolver = system_resolver,
    now: Callable[[], datetime] | None = None,
    metrics: Metrics | None = None,
) -> SyncReport:
    """One config-sync run against Genesys Cloud, the TargetsTable and Secrets Manager."""
    secrets = secrets or secret_store(settings)
    if genesys is None:
        from relay.adapters.genesys import GenesysClient  # loads the SDK: config sync only

        genesys = GenesysClient.from_settings(settings, read_secret=secrets.get)
    options: dict[str, Any] = {"now": now} if now is not None else {}
    return sync_targets(
        settings,
        genesys=genesys,
        store=store or target_store(settings, cache_ttl_seconds=0, consistent_reads=True),
        secrets=secrets,
        resolve=resolve,
        metrics=metrics,
        **options,
    )

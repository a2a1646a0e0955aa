"""Config sync (docs/config-sync.md): Genesys Cloud's integrations into the TargetsTable and Secrets
Manager.

    run       one sync run: every integration and target named in settings, item by item
    reading   read one item from Genesys and check it (rejections are ConfigRejected)
    storage   versioned records and rotated secrets
    report    what the run did

Genesys, the table and Secrets Manager come through relay.ports; relay.wiring.run_config_sync builds
them from settings.
"""

from relay.logic.config_sync.report import Conflict, Rejection, SyncReport
from relay.logic.config_sync.run import sync_targets

__all__ = ["Conflict", "Rejection", "SyncReport", "sync_targets"]

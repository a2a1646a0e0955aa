"""ConfigSyncFunction: on a schedule, read target configs from Genesys Cloud into DynamoDB + Secrets Manager.

Wiring only: the sync itself is relay.logic.config_sync, its object graph relay.wiring.config_sync.
The Genesys SDK (its own layer) loads here and nowhere else. A run-level failure (a GenesysRunError
such as a failed login, 403, 429 past the bound or the run's deadline; AWS or settings errors)
raises: the invocation fails and the alarm sees it. Rejected configs do not: they are reported in
the result, the log and the TargetsRejected metric.
"""

from __future__ import annotations

from typing import Any

from relay.observability import logger, metrics
from relay.settings import get_settings
from relay.wiring.config_sync import run_config_sync, warm_up

# The SDK takes ~3 s to import: do it in the init phase (full CPU, not billed against the schedule).
warm_up()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_config_sync(get_settings(), metrics=metrics).to_dict()

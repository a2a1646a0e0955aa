"""The one Logger and the one Metrics object every module shares (powertools; EMF for metrics).

Their service is POWERTOOLS_SERVICE_NAME, which the template sets to the stack's name: the ``service``
dimension of every metric, so the alarms of two stacks in one account (dev beside prod) never watch
each other's metrics; without it (tests, tools) it is "relay". (Read here: powertools would read the
variable itself only if no service were passed, and its default is "service_undefined".)
Nothing here ever logs a secret: secret values are SecretStr until the moment they are used.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics

# Read here, not through relay.settings (the one reader otherwise): these objects exist from import
# on, before any Settings. It is the variable Settings.service_name reads, with the same default, so
# the intake's metrics and the dispatcher's (relay.logic.dispatch.metrics) carry one service.
DEFAULT_SERVICE = "relay"
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or DEFAULT_SERVICE

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="GenesysRelay", service=SERVICE)

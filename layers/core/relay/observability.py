"""The one Logger and the one Metrics object every module shares (powertools; EMF for metrics).

powertools reads POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE itself; the template sets them.
Nothing here ever logs a secret: secret values are SecretStr until the moment they are used.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

logger = Logger(service="relay")
metrics = Metrics(namespace="GenesysRelay", service="relay")

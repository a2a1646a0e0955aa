"""The intake's metrics (names and dimensions: docs/architecture.md)."""

from __future__ import annotations


class PowertoolsMetrics:
    """The architecture's intake metrics through the shared powertools Metrics (EMF)."""

    def count(
        self, name: str, value: int = 1, *, reason: str | None = None, target: str | None = None
    ) -> None:
        from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

        from relay.observability import metrics

        if target is not None:
            # A per-target count (TasksFiltered) has a dimension set of its own: it is written at once
            # as its own EMF object, so its dimensions never reach the invocation's other metrics.
            emf = EphemeralMetrics(namespace=metrics.namespace, service=metrics.service)
            emf.add_dimension(name="target", value=target)
            if reason is not None:
                emf.add_dimension(name="reason", value=reason)
            emf.add_metric(name=name, unit=MetricUnit.Count, value=value)
            emf.flush_metrics()
            return
        if reason is not None:
            # A rejection is the only metric of its invocation, and log_metrics clears dimensions on
            # flush, so the reason dimension never spreads to another metric.
            metrics.add_dimension(name="reason", value=reason)
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


class NoMetrics:
    def count(
        self, name: str, value: int = 1, *, reason: str | None = None, target: str | None = None
    ) -> None:
        return None

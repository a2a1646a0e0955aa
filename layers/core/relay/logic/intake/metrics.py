"""The intake's metrics (names and dimensions: docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Mapping

# Written per release as well (Settings.release_dimensions), in a dimension set of its own: the intake's
# rollback trigger, which must watch only the version being deployed (docs/operations-template.md).
RELEASE_METRICS = frozenset({"InternalErrors"})


class PowertoolsMetrics:
    """The architecture's intake metrics through the shared powertools Metrics (EMF).

    ``release``: this function's ``function`` and ``version`` dimensions (empty outside Lambda)."""

    def __init__(self, release: Mapping[str, str] | None = None) -> None:
        self._release = dict(release or {})

    def count(
        self, name: str, value: int = 1, *, reason: str | None = None, target: str | None = None
    ) -> None:
        from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

        from relay.observability import metrics

        if target is not None or name in RELEASE_METRICS:
            # A per-target count (TasksFiltered) or a crash has a dimension set of its own: it is written
            # at once as its own EMF object, so its dimensions never reach the invocation's other metrics
            # (each combination of dimensions is one more custom metric).
            emf = EphemeralMetrics(namespace=metrics.namespace, service=metrics.service)
            if target is not None:
                emf.add_dimension(name="target", value=target)
            if reason is not None:
                emf.add_dimension(name="reason", value=reason)
            if name in RELEASE_METRICS and self._release:
                emf.add_dimensions(service=str(metrics.service), **self._release)
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

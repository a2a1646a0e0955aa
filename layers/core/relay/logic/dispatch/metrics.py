"""The dispatcher's CloudWatch metrics (EMF through powertools), names and dimensions exactly as in
docs/architecture.md: per-target counts carry the dimensions ``service`` and ``target``;
``BreakerStoreUnavailable``, ``RateLimitStoreUnavailable``, ``OrderedGroupBlocked``,
``OrderedReleasedEarly`` and ``DeliveryCrashed`` carry ``service`` only (alarms watch them, and an alarm
cannot search across targets). ``DeliveryCrashed`` has, in Lambda, a second dimension set naming the
release, ``service``, ``function``, ``version``: each dispatcher's deploy rolls back on its own new
version's crashes, never on those of the old version it replaces (which may be the very bug it fixes).

A batch accumulates here and is flushed once at the end: one EMF object per target (so each target's
values sit under its own dimension), plus one service-level object for the service-level counts and
one for the crashes (so the release's dimension set reaches no other metric: each set is a metric billed).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from enum import StrEnum

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit


class Metric(StrEnum):
    DELIVERED = "Delivered"
    DELIVERY_FAILED = "DeliveryFailed"
    RETRIED = "Retried"
    DEFERRED = "Deferred"
    DEAD_LETTERED = "DeadLettered"
    DELIVERY_LATENCY = "DeliveryLatency"
    BREAKER_OPENED = "BreakerOpened"
    BREAKER_HALF_OPENED = "BreakerHalfOpened"
    BREAKER_CLOSED = "BreakerClosed"
    BREAKER_STORE_UNAVAILABLE = "BreakerStoreUnavailable"
    ROUTED_TO_SLOW_LANE = "RoutedToSlowLane"
    SLOW_LANE_ENTERED = "SlowLaneEntered"
    SLOW_LANE_LEFT = "SlowLaneLeft"
    # Rate limits: throttle answers (429, 503 + Retry-After), records deferred by the limit, store down.
    THROTTLED = "Throttled"
    RATE_LIMITED = "RateLimited"
    RATE_LIMIT_STORE_UNAVAILABLE = "RateLimitStoreUnavailable"
    # The ordered path (relay.logic.dispatch.fifo): records held in their conversation instead of
    # attempted (behind an earlier one, breaker open, out of time), and deliveries an ordered target
    # with onExhausted block keeps failing (its conversation waits: the alarm; service level).
    ORDERED_HELD = "OrderedHeld"
    ORDERED_GROUP_BLOCKED = "OrderedGroupBlocked"
    # Records of settled conversations deleted before their batch ended, because a slow conversation
    # was still running (service level: how often slow conversations share batches).
    ORDERED_RELEASED_EARLY = "OrderedReleasedEarly"
    # A delivery step or an ordered group that raised: a bug, its records left for redelivery. The
    # handler answers normally, so Lambda's Errors stays 0: this is what a canary's rollback watches.
    DELIVERY_CRASHED = "DeliveryCrashed"


TARGET_DIMENSION = "target"
# Metrics with the ``service`` dimension only.
SERVICE_METRICS = frozenset(
    {
        Metric.BREAKER_STORE_UNAVAILABLE,
        Metric.RATE_LIMIT_STORE_UNAVAILABLE,
        Metric.ORDERED_GROUP_BLOCKED,
        Metric.ORDERED_RELEASED_EARLY,
        Metric.DELIVERY_CRASHED,
    }
)
# Service-level metrics also written per release (Settings.release_dimensions): the rollback triggers.
RELEASE_METRICS = frozenset({Metric.DELIVERY_CRASHED})


class BatchMetrics:
    def __init__(self, *, namespace: str, service: str, release: Mapping[str, str] | None = None) -> None:
        self._namespace = namespace
        self._service = service
        self._release = dict(release or {})
        self._lock = threading.Lock()
        self._counts: dict[str, dict[Metric, float]] = defaultdict(lambda: defaultdict(float))
        self._latencies: dict[str, list[float]] = defaultdict(list)
        self._service_counts: dict[Metric, float] = defaultdict(float)

    def count(self, metric: Metric, target_id: str, value: float = 1.0) -> None:
        with self._lock:
            self._counts[target_id][metric] += value

    def latency(self, target_id: str, milliseconds: float) -> None:
        with self._lock:
            self._latencies[target_id].append(round(milliseconds, 3))

    def breaker_store_unavailable(self) -> None:
        self.service_count(Metric.BREAKER_STORE_UNAVAILABLE)

    def service_count(self, metric: Metric, value: float = 1.0) -> None:
        """A count with the ``service`` dimension only (SERVICE_METRICS)."""
        assert metric in SERVICE_METRICS, f"{metric} is counted per target"
        with self._lock:
            self._service_counts[metric] += value

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, defaultdict(lambda: defaultdict(float))
            latencies, self._latencies = self._latencies, defaultdict(list)
            service_counts, self._service_counts = self._service_counts, defaultdict(float)
        for target_id in sorted(set(counts) | set(latencies)):
            emf = EphemeralMetrics(namespace=self._namespace, service=self._service)
            emf.add_dimension(TARGET_DIMENSION, target_id)
            for metric, value in counts.get(target_id, {}).items():
                emf.add_metric(metric.value, MetricUnit.Count, value)
            for value in latencies.get(target_id, []):
                emf.add_metric(Metric.DELIVERY_LATENCY.value, MetricUnit.Milliseconds, value)
            emf.flush_metrics()
        crashes = {m: v for m, v in service_counts.items() if m in RELEASE_METRICS}
        self._flush_service({m: v for m, v in service_counts.items() if m not in crashes})
        self._flush_service(crashes, per_release=True)

    def _flush_service(self, counts: Mapping[Metric, float], *, per_release: bool = False) -> None:
        """One EMF object with the ``service`` dimension set, and the release's set too if ``per_release``
        (in Lambda: outside it there is no release to name)."""
        if not counts:
            return
        emf = EphemeralMetrics(namespace=self._namespace, service=self._service)
        if per_release and self._release:
            emf.add_dimensions(service=self._service, **self._release)
        for metric, value in counts.items():
            emf.add_metric(metric.value, MetricUnit.Count, value)
        emf.flush_metrics()

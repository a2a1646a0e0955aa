"""Slow-target isolation: a target whose requests take long stops sharing invocations with healthy
targets, with no operator action, and comes back once it is fast again (docs/dispatcher.md, "Slow
lane").

Two dispatchers run this code. The fast lane (``DISPATCH_LANE=fast``) consumes the DeliveryQueue the
intake fills; the slow lane (``DISPATCH_LANE=slow``) consumes the SlowDeliveryQueue, with its own
bounded concurrency. A target's lane (relay.models.breaker.LaneState) lives in its breaker item: it is
read with the breaker, once per target per batch, and written with a conditional write on its own
version, once per move, never per batch.

- Every container keeps an EWMA of each target's attempt latency (a time-out counts its whole time:
  that is how long it held the invocation), judged only after a few samples. Samples taken under an
  earlier lane version, or long ago, are forgotten: a target that moved starts afresh. A container's
  first invocation is not measured: it builds its clients and opens its connections, and its
  latencies say more about the container than about the targets (locally, where containers start on
  shared cores, a 50 ms target measured over a second there).
- Fast lane: a target whose lane reads slow has its records *routed*: re-sent to the slow lane's
  queue with their attempt count unchanged and reported done, so no attempt and no receive is used.
  A target this container measures above ``SLOW_TARGET_MS`` has its lane written slow at once, by
  the attempt that showed it (not after the batch, which may still wait on the target's other
  requests, a time-out for its whole read timeout), and its records not yet started routed. A
  request still in flight counts too, while its batch waits: once it would show the target slow if
  it ended now, the target is moved (a target that is quick but now and then hangs would otherwise
  hold every container that meets a hang for up to a read timeout before anyone moves it).
- Slow lane: delivers whatever it receives, breaker, retries and DLQ as ever. A slow target it
  measures below half of ``SLOW_TARGET_MS``, after at least ``SLOW_LANE_MIN_SECONDS`` in the lane, is
  written back to fast (the gap between the two thresholds and the minimum stay stop flapping).

With ``ISOLATE_SLOW_TARGETS=false`` (or no slow lane queue to route to) nothing is routed or written:
every record is delivered where it was received, as before isolation existed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from relay.errors import BreakerStoreUnavailable
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.metrics import Metric
from relay.logic.dispatch.records import Item
from relay.models.breaker import DeliveryLane, LaneState
from relay.observability import logger
from relay.ports import BreakerStore, Clock
from relay.settings import Settings

# Weight of the newest sample in the moving average (about the last five samples count).
EWMA_ALPHA = 0.3
# Samples a container needs before it judges a target: one slow answer is not a slow target.
MIN_SAMPLES = 3
# A container's samples older than this say nothing about the target now.
FORGET_AFTER_SECONDS = 300.0


@dataclass
class _Estimate:
    ewma_ms: float
    samples: int
    lane_version: int  # the lane the samples were taken in
    updated: float


class LatencyTracker:
    """Per container, thread-safe: each target's attempt latency as a moving average."""

    def __init__(self, clock: Clock, *, alpha: float = EWMA_ALPHA, min_samples: int = MIN_SAMPLES) -> None:
        self._clock = clock
        self._alpha = alpha
        self._min_samples = min_samples
        self._estimates: dict[str, _Estimate] = {}
        self._lock = threading.Lock()

    def record(self, key: str, elapsed_ms: float, lane_version: int) -> None:
        now = self._clock()
        with self._lock:
            estimate = self._current(key, lane_version, now)
            if estimate is None:
                self._estimates[key] = _Estimate(elapsed_ms, 1, lane_version, now)
                return
            estimate.ewma_ms += self._alpha * (elapsed_ms - estimate.ewma_ms)
            estimate.samples += 1
            estimate.updated = now

    def latency_ms(self, key: str, lane_version: int, *, pending_ms: float | None = None) -> float | None:
        """The target's typical latency now, or None while there are too few recent samples.
        ``pending_ms``: as if a request still in flight had ended now, taking that long."""
        with self._lock:
            estimate = self._current(key, lane_version, self._clock())
            if estimate is None:
                return None
            samples, ewma_ms = estimate.samples, estimate.ewma_ms
        if pending_ms is not None:
            samples, ewma_ms = samples + 1, ewma_ms + self._alpha * (pending_ms - ewma_ms)
        return ewma_ms if samples >= self._min_samples else None

    def _current(self, key: str, lane_version: int, now: float) -> _Estimate | None:
        estimate = self._estimates.get(key)
        if estimate is None:
            return None
        if estimate.lane_version != lane_version or now - estimate.updated > FORGET_AFTER_SECONDS:
            del self._estimates[key]
            return None
        return estimate


class Isolation:
    """What this dispatcher's lane does about slow targets: route, measure, move."""

    def __init__(
        self,
        *,
        settings: Settings,
        breakers: BreakerStore,
        clock: Clock,
        tracker: LatencyTracker | None = None,
    ) -> None:
        self.lane = settings.dispatch_lane
        self._breakers = breakers
        self._clock = clock
        self._tracker = tracker or LatencyTracker(clock)
        self._slow_ms = settings.slow_target_ms
        self._min_stay = settings.slow_lane_min_seconds
        self._on = settings.isolate_slow_targets and (
            self.lane is DeliveryLane.SLOW or bool(settings.slow_delivery_queue_url)
        )
        self._routes = self._on and self.lane is DeliveryLane.FAST
        self._warm = False  # this container has finished an invocation
        # key -> the lane version this container moved the target from: one write per move, however
        # many attempts and batches see the target slow before the new lane is read.
        self._moved: dict[str, int] = {}
        self._moved_lock = threading.Lock()
        # Fast lane: requests in flight (id(item) -> item, when it started), looked at while a batch
        # waits: a request that hangs shows its target slow before it ends (``check_in_flight``).
        self._in_flight: dict[int, tuple[Item, float]] = {}
        self._in_flight_lock = threading.Lock()

    def routes_away(self, lane: LaneState) -> bool:
        """Fast lane: the target's lane is slow, so its records go there without an attempt."""
        return self._routes and lane.lane is DeliveryLane.SLOW

    def turned_slow(self, item: Item) -> bool:
        """Fast lane: this container measures the target slow now (or moved it already); its records
        not yet started go to the slow lane."""
        if not self._routes:
            return False
        with self._moved_lock:
            moved_here = self._moved.get(item.key) == item.lane.version
        return moved_here or self._slow(item.key, item.lane)

    def begin(self, item: Item) -> None:
        """Fast lane: ``item``'s request starts (``end`` when it is over)."""
        if self._routes and self._warm and item.lane.lane is DeliveryLane.FAST:
            with self._in_flight_lock:
                self._in_flight[id(item)] = (item, self._clock())

    def end(self, item: Item) -> None:
        if self._routes:
            with self._in_flight_lock:
                self._in_flight.pop(id(item), None)

    def check_in_flight(self, batch: Batch) -> None:
        """Fast lane, while the batch waits: a request still in flight that would already show its
        target slow if it ended now moves the target now. A request that hangs otherwise counts only
        when it ends, a read timeout later: meanwhile every container that meets the target's hangs
        waits on them, and the healthy targets' records with them."""
        with self._in_flight_lock:
            in_flight = list(self._in_flight.values())
        now = self._clock()
        for item, started in in_flight:
            latency = self._tracker.latency_ms(item.key, item.lane.version, pending_ms=(now - started) * 1000)
            if latency is not None and latency > self._slow_ms:
                self._move(item.key, item.target.target_id, item.lane, DeliveryLane.SLOW, batch)

    def observe(self, item: Item, elapsed_ms: float, batch: Batch) -> None:
        """One attempt that reached the endpoint took ``elapsed_ms``; in the fast lane, a target it
        shows slow is moved now, so the other containers route it from their next batch on."""
        if not (self._on and self._warm):
            return
        self._tracker.record(item.key, elapsed_ms, item.lane.version)
        if self._routes and item.lane.lane is DeliveryLane.FAST and self._slow(item.key, item.lane):
            self._move(item.key, item.target.target_id, item.lane, DeliveryLane.SLOW, batch)

    def end_invocation(self) -> None:
        self._warm = True

    def report(self, key: str, target_id: str, lane: LaneState | None, batch: Batch) -> None:
        """After the batch: move the target if this lane's measure says so (one conditional write);
        ``lane`` None: the breaker store could not be read, so nothing is written."""
        if not self._on or lane is None:
            return
        if self.lane is DeliveryLane.FAST and lane.lane is DeliveryLane.FAST and self._slow(key, lane):
            self._move(key, target_id, lane, DeliveryLane.SLOW, batch)
        elif (
            self.lane is DeliveryLane.SLOW and lane.lane is DeliveryLane.SLOW and self._fast_again(key, lane)
        ):
            self._move(key, target_id, lane, DeliveryLane.FAST, batch)

    def _slow(self, key: str, lane: LaneState) -> bool:
        latency = self._tracker.latency_ms(key, lane.version)
        return latency is not None and latency > self._slow_ms

    def _fast_again(self, key: str, lane: LaneState) -> bool:
        if self._clock() - lane.changed_at < self._min_stay:
            return False
        latency = self._tracker.latency_ms(key, lane.version)
        return latency is not None and latency < self._slow_ms / 2

    def _move(self, key: str, target_id: str, lane: LaneState, to: DeliveryLane, batch: Batch) -> None:
        with self._moved_lock:
            if self._moved.get(key) == lane.version:
                return  # this container already moved it (or is moving it) from this lane
            self._moved[key] = lane.version
        moved = LaneState(to, lane.version + 1, self._clock())
        try:
            if not self._breakers.save_lane(key, moved, expected_version=lane.version):
                return  # another dispatcher moved it first
        except BreakerStoreUnavailable:
            batch.metrics.breaker_store_unavailable()
            with self._moved_lock:
                self._moved.pop(key, None)  # not moved: a later attempt or batch may try again
            return
        if to is DeliveryLane.SLOW:
            batch.metrics.count(Metric.SLOW_LANE_ENTERED, target_id)
            logger.warning("target moved to the slow lane", extra={"targetId": target_id})
        else:
            batch.metrics.count(Metric.SLOW_LANE_LEFT, target_id)
            logger.info("target back in the fast lane", extra={"targetId": target_id})

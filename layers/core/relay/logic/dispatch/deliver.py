"""One standard record's step in the pool: with its target's slot in hand, deliver it, or settle it
without an attempt when its batch learnt meanwhile that it must not go now (its target answered 410
or Retry-After, the invocation has no time left for one whole request, its target turned slow)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from relay.logic.dispatch.attempt import Attempter, settle_margin_seconds, timeouts
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.isolation import Isolation, LatencyTracker
from relay.logic.dispatch.rate_limit import RateLimits
from relay.logic.dispatch.records import Item, Unattempted
from relay.logic.dispatch.settle import Settler
from relay.ports import Clock
from relay.settings import Settings


class Deliverer:
    """One per dispatcher: its per-target slots (at most PER_TARGET_CONCURRENCY requests in flight to a
    target) are shared by every batch of the container, standard and ordered."""

    def __init__(
        self,
        *,
        settings: Settings,
        settle: Settler,
        limits: RateLimits,
        isolation: Isolation,
        attempter: Attempter,
        clock: Clock,
        sleep: Callable[[float], None],
    ) -> None:
        self._settings = settings
        self._settle = settle
        self._limits = limits
        self._isolation = isolation
        self._attempter = attempter
        self._clock = clock
        self._sleep = sleep
        # How long each target's requests take here, lately (one lane: samples are never reset by a move).
        self._answer_times = LatencyTracker(clock, min_samples=1)
        self._target_slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()

    def __call__(self, item: Item, batch: Batch, *, may_route: bool = True) -> None:
        """``may_route``: False for a record the slow lane's queue refused already (it is delivered here)."""
        with self.slot(item.key):
            if batch.is_gone(item.key):
                self._settle.unattempted(Unattempted.gone(item), batch)  # 410 while this record waited
                return
            if (quiet := self._limits.floor_wait(item, batch)) is not None:  # a Retry-After meanwhile
                self._settle.deferred(item, quiet, batch, error_code="rate-limited")
                return
            if self.out_of_time(item, batch):
                # A Lambda timeout would fail the whole batch and cost every record a receive:
                # hand this one back untouched instead (no attempt used).
                self._settle.deferred(item, 0, batch, error_code="out-of-time")
                return
            if may_route and self._isolation.turned_slow(item):
                # Its target turned out slow while this record waited: the slow lane takes it, unless
                # its queue refused it (then it is delivered here, as without isolation).
                if not self._settle.routed([item], batch):
                    return
            self._isolation.begin(item)
            try:
                attempt = self._attempter.run(item)
            finally:
                self._isolation.end(item)
            if isinstance(attempt, Unattempted):
                self._settle.unattempted(attempt, batch)
                return
            self._limits.answered(item, attempt.outcome, batch)
            if attempt.result is not None:
                self._answer_times.record(item.key, attempt.result.elapsed_ms, lane_version=0)
                if attempt.outcome.reached_endpoint:
                    self._isolation.observe(item, attempt.result.elapsed_ms, batch)
            self._settle.attempted(item, attempt, batch)

    def when_booked(self, item: Item, step: Callable[[], None]) -> None:
        """Run ``step`` at the record's booked time (its rate limit paced it), or now."""
        self.wait_until_booked(item)
        step()

    def wait_until_booked(self, item: Item) -> None:
        if item.not_before is not None and (early := item.not_before - self._clock()) > 0:
            self._sleep(early)

    def answers_quickly(self, key: str) -> bool:
        """The target's requests took less than the serial budget here lately. Not yet measured in this
        container: not known to be quick (a batch of a target it has not seen starts side by side)."""
        latency = self._answer_times.latency_ms(key, lane_version=0)
        return latency is not None and latency < self._settings.serial_budget_ms

    def slot(self, key: str) -> threading.BoundedSemaphore:
        """The target's slot (``key``: its lane key), made on first use."""
        with self._slots_lock:
            slot = self._target_slots.get(key)
            if slot is None:
                slot = self._target_slots[key] = threading.BoundedSemaphore(
                    self._settings.per_target_concurrency
                )
            return slot

    def out_of_time(self, item: Item, batch: Batch) -> bool:
        """Too little time left for one request: its total deadline (the HTTP client's default budget,
        connect + read timeout) plus the margin to settle (attempt.settle_margin_seconds)."""
        if batch.remaining_ms is None:
            return False
        connect, read = timeouts(self._settings, item.target)
        return batch.remaining_ms() < (connect + read + settle_margin_seconds(self._settings)) * 1000

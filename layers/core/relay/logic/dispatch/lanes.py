"""Lanes: one target's records in a batch, and what its circuit breaker lets them do.

Each lane reads its breaker once (relay.logic.breaker.open_gate): closed, deliver; open, defer;
open past its reset timeout, the single half-open probe (claimed with a conditional write) goes
first and the rest wait for its answer. If the breaker store fails the lane delivers anyway (fail
open) and writes nothing. Once the lane's records in the batch are done, its results are folded into
its breaker with one conditional write, only when something changed (``LaneReports``).

The same read gives the target's delivery lane (relay.logic.dispatch.isolation): a lane the fast
lane's dispatcher routes to the slow lane is ``routed`` and claims no probe (none of its records is
attempted here).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from itertools import chain, zip_longest

from relay.errors import BreakerStoreUnavailable
from relay.logic import breaker
from relay.logic.dispatch.attempt import timeouts
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.metrics import Metric
from relay.logic.dispatch.records import Item
from relay.models.breaker import BreakerState, LaneState, Phase, endpoint_digest
from relay.models.targets import Target
from relay.observability import logger
from relay.ports import BreakerStore, Clock
from relay.settings import Settings

Step = Callable[[], None]


@dataclass
class Lane:
    """The records of one target in this batch and what its breaker said."""

    key: str
    target: Target
    items: list[Item]
    gate: breaker.Gate | None  # None: the breaker store failed (fail open, no writes)
    delivery_lane: LaneState | None = None  # as read with the breaker; None when the store failed
    routed: bool = False  # every record goes to the slow lane, unattempted

    def __post_init__(self) -> None:
        for index, item in enumerate(self.items):
            item.probe = self.admission is breaker.Admission.PROBE and index == 0
            item.breaker_phase = self.gate.state.phase.value if self.gate else "unknown"
            item.lane = self.delivery_lane or LaneState()

    @property
    def admission(self) -> breaker.Admission:
        return self.gate.admission if self.gate else breaker.Admission.DELIVER

    @property
    def probe(self) -> Item | None:
        return self.items[0] if self.admission is breaker.Admission.PROBE else None


@dataclass(frozen=True)
class AfterProbe:
    """What a lane does once any probe has answered."""

    deliver: list[Item]
    defer: list[Item]
    seconds_until_probe: float = 0.0  # for the deferred ones: until the breaker may half-open


class Lanes:
    """Breaker admission for the lanes of a batch, against the breaker store."""

    def __init__(
        self,
        *,
        settings: Settings,
        breakers: BreakerStore,
        clock: Clock,
        routes_away: Callable[[LaneState], bool] = lambda lane: False,
    ) -> None:
        self._settings = settings
        self._breakers = breakers
        self._clock = clock
        self._routes_away = routes_away

    def policy(self, target: Target) -> breaker.BreakerPolicy:
        connect, read = timeouts(self._settings, target)
        return breaker.BreakerPolicy(
            failure_threshold=self._settings.breaker_failure_threshold,
            reset_seconds=self._settings.breaker_reset_seconds,
            max_reset_seconds=self._settings.breaker_max_reset_seconds,
            # The probe's lease outlives its request; after it, another dispatcher may probe.
            probe_lease_seconds=connect + read + 5.0,
        )

    def open(self, key: str, items: list[Item], batch: Batch) -> Lane:
        """Read the lane's breaker (one consistent read; a conditional write to claim a probe)."""
        target = items[0].target
        try:
            stored, delivery_lane = self._breakers.load_with_lane(key)
            state = stored.for_endpoint(endpoint_digest(target.url))  # failures at an old URL do not count
            if self._routes_away(delivery_lane):
                as_read = breaker.Gate(breaker.Admission.DELIVER, state)
                return Lane(key, target, items, as_read, delivery_lane, routed=True)
            gate = breaker.open_gate(self._breakers, key, self._clock(), self.policy(target), state=state)
        except BreakerStoreUnavailable as exc:
            logger.warning(
                "breaker store unavailable: failing open", extra={"targetKey": key, "error": str(exc)}
            )
            batch.metrics.breaker_store_unavailable()
            return Lane(key, target, items, None)
        if gate.admission is breaker.Admission.PROBE:
            batch.metrics.count(Metric.BREAKER_HALF_OPENED, target.target_id)
        return Lane(key, target, items, gate, delivery_lane)

    def after_probe(self, lane: Lane) -> AfterProbe:
        if lane.gate is None or lane.admission is breaker.Admission.DELIVER:
            return AfterProbe(lane.items, [])
        if lane.admission is breaker.Admission.DEFER:
            return AfterProbe([], lane.items, lane.gate.defer_until - self._clock())
        rest = lane.items[1:]
        probe = lane.items[0].outcome
        if probe is not None and probe.status is not None and not probe.endpoint_unhealthy:
            return AfterProbe(rest, [])  # the endpoint answered: the breaker closes, the rest may go now
        return AfterProbe([], rest, self.policy(lane.target).reset_after(lane.gate.state.trips + 1))

    def report(self, lane: Lane, batch: Batch) -> None:
        """Fold the lane's results into its breaker (a write only when something changed)."""
        if lane.gate is None:
            return
        probe = lane.probe
        if probe is not None and not probe.judges_endpoint:
            return  # the probe never reached the endpoint (or was cut short); its lease will lapse
        now, policy = self._clock(), self.policy(lane.target)
        results = [
            # An outcome whose time is not known counts as sent now, never as older than every
            # result folded (which would drop it).
            breaker.Result(now if item.sent_at is None else item.sent_at, not item.outcome.endpoint_unhealthy)
            for item in lane.items
            if item.outcome is not None and item.judges_endpoint
        ]
        try:
            written = breaker.report(self._breakers, lane.key, lane.gate, results, now, policy)
        except BreakerStoreUnavailable:
            batch.metrics.breaker_store_unavailable()
            return
        if written is not None:
            _count_transition(*written, lane.target.target_id, batch)


class LaneReports:
    """Each lane's report to its breaker, made once, as soon as the lane's steps in this batch have
    ended: by the thread that ends the last one. Held until the batch's end, behind a slow neighbour,
    a failing target's breaker opened only when the neighbour was done (and a healthy breaker, which is
    never written, keeps no time to order a late failure against). A lane with no step has no result to
    fold and is not reported."""

    def __init__(self, lanes: Lanes, opened: Iterable[Lane], batch: Batch) -> None:
        self._lanes, self._batch = lanes, batch
        self._by_key = {lane.key: lane for lane in opened}
        self._left: Counter[str] = Counter()  # steps not ended yet, by lane key
        self._lock = threading.Lock()

    def expect(self, keys: Iterable[str]) -> None:
        """Before any of them starts: one step more for each key's lane."""
        with self._lock:
            self._left.update(keys)

    def expect_lanes(self, lanes: Iterable[Lane]) -> None:
        """Every record of these lanes that their breaker lets go: a probe that fails takes the rest of
        its lane off (``run``)."""
        deferred = breaker.Admission.DEFER
        self.expect(item.key for lane in lanes if lane.admission is not deferred for item in lane.items)

    def steps(self, items: Iterable[Item], deliver: Callable[[Item], None]) -> list[tuple[Item, Step]]:
        """Each record's step in the pool: ``deliver`` it, then report its lane if it was the last."""
        return [(i, partial(self.run, partial(deliver, i), i.key, probe=i.probe)) for i in items]

    def run(self, step: Step, *keys: str, probe: bool = False) -> None:
        """Run one step of the ``keys``' lanes (``probe``: its lane's half-open probe); after a lane's
        last one, however it ended, the lane reports."""
        try:
            step()
        finally:
            for key in keys:
                lane = self._by_key[key]
                ended = 1
                if probe:  # the records of its lane it did not let go are not delivered in this batch
                    ended += len(lane.items) - 1 - len(self._lanes.after_probe(lane).deliver)
                with self._lock:
                    self._left[key] -= ended
                    last = self._left[key] == 0
                if last:
                    self._report(lane)

    def _report(self, lane: Lane) -> None:
        try:
            self._lanes.report(lane, self._batch)
        except Exception:  # a bug: the step's record is settled already, and failing it would send it twice
            logger.exception("breaker report crashed", extra={"targetKey": lane.key})
            self._batch.metrics.service_count(Metric.DELIVERY_CRASHED)


def interleave(per_lane: Iterable[list[Item]]) -> list[Item]:
    """Round-robin across targets, so one busy target's cap does not hold the pool's head."""
    return [item for item in chain.from_iterable(zip_longest(*per_lane)) if item is not None]


def group(items: Iterable[Item]) -> dict[str, list[Item]]:
    """Items by target key, in the batch's order."""
    grouped: dict[str, list[Item]] = {}
    for item in items:
        grouped.setdefault(item.key, []).append(item)
    return grouped


def _count_transition(old: BreakerState, new: BreakerState, target_id: str, batch: Batch) -> None:
    if new.phase is Phase.OPEN and old.phase is not Phase.OPEN:
        batch.metrics.count(Metric.BREAKER_OPENED, target_id)
        logger.warning(
            "breaker opened", extra={"targetId": target_id, "until": new.until, "trips": new.trips}
        )
    elif new.phase is Phase.CLOSED and old.phase is not Phase.CLOSED:
        batch.metrics.count(Metric.BREAKER_CLOSED, target_id)
        logger.info("breaker closed", extra={"targetId": target_id})

"""Rate limits in a batch: what a target's shared token bucket lets its lane send now, and what the
target's answers do to the bucket (the arithmetic: relay.logic.token_bucket; the store:
relay.ports.RateLimitStore, one item per target in the BreakerTable).

- **Admission**, after the breaker's: a lane whose target has a limit (configured, or implicit since a
  throttle) takes the tokens its records need with one conditional write; a second (rarely a third)
  only when another dispatcher took first and the bucket was nearly full; none when this container's
  last view of the bucket already shows it full (bookings only ever move forward, so that view is a
  lower bound; a Retry-After floor is not: an operator may lift it, so one in view is read again).
  It may book up to ``PACE_SECONDS`` beyond what may go at once: those records are
  paced, each sent at its booked time within this batch (``Item.not_before``), which spares them a
  deferral (SQS delays come in whole seconds) and spaces them for the receiver. Records beyond that
  are held back: deferred without an attempt, until about when they would fit. A target without a
  limit costs no call.
- **A Retry-After**, as soon as it is answered: the batch starts no further request to the target
  before it, and the floor is stored at once for every dispatcher (the bucket's ``floorUntil`` for a
  metered target, the breaker item's mark for an unlimited one), not when the batch ends: a batch can
  run on for seconds after the answer, while other dispatchers start batches of their own.
- **Feedback**, after the batch: throttle answers (429, 503 + Retry-After) cut the target's rate
  (multiplicative decrease, at most once per cooldown, over the cut this container saw; sized from all
  the lane's answers) and keep the floor. A target without a configured limit gets an implicit one:
  each dispatcher that sees it throttled adds its share (``decrease`` times the deliveries per second
  it was getting through, or half what it sent when nothing got through) and meters the target from
  then on, until the limit is released. The breaker item's mark (``LaneState.retry_after_until``) is
  read by every dispatcher with the breaker each batch: one that has not joined holds the target's
  records back until then, so the floor holds fleet-wide (at one write per later floor, and no read)
  while each dispatcher still joins the implicit limit with its own share when it is throttled itself.
- **Store down**: fail open (deliver as if unlimited), counted in ``RateLimitStoreUnavailable``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from relay.errors import BreakerStoreUnavailable, RateLimitStoreUnavailable
from relay.logic import token_bucket
from relay.logic.breaker import Admission
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.bucket_views import BucketViews
from relay.logic.dispatch.lanes import Lane
from relay.logic.dispatch.metrics import Metric
from relay.logic.dispatch.records import Item
from relay.logic.outcomes import Outcome, Verdict
from relay.models.breaker import target_key
from relay.models.rate_limit import BucketState, RateLimit, rate_key
from relay.models.targets import Target
from relay.observability import logger
from relay.ports import BreakerStore, Clock, RateLimitStore

# Conditional writes one admission or one throttle may make before it settles for what it knows.
MAX_WRITES = 3
# How far past what may go at once a batch books, sending those records at their booked times.
PACE_SECONDS = 1.0
# How often a running batch reads a target's stored Retry-After floor again before starting a request to
# it: a quiet another dispatcher was asked for reaches requests started here within this (plus a read),
# at one read per target per interval. Ordered conversations send one record after another, records
# paced by a rate limit go at their booked times: both start long after the batch read the floor.
FLOOR_LOOK_SECONDS = 0.5


@dataclass(frozen=True)
class Held:
    """A record the limit holds back in this batch, and about when it would fit."""

    item: Item
    wait_seconds: float


class RateLimits:
    """One per dispatcher (container): its last view of each bucket, and the unlimited targets it
    meters since they throttled it."""

    def __init__(
        self,
        *,
        store: RateLimitStore,
        clock: Clock,
        max_floor_seconds: float,
        breakers: BreakerStore | None = None,
        policy: token_bucket.AimdPolicy | None = None,
    ) -> None:
        """``breakers``: where an unlimited target's Retry-After is marked for the whole fleet."""
        self._store = store
        self._breakers = breakers
        self._clock = clock
        # A Retry-After holds the target back no longer than it holds a retry (MAX_RETRY_DELAY_SECONDS).
        self._max_floor_seconds = max_floor_seconds
        self._policy = policy or token_bucket.AimdPolicy()
        self._views = BucketViews()
        self._lock = threading.Lock()
        self._metered: set[str] = set()
        self._marked: dict[str, float] = {}  # target key -> the latest Retry-After this container marked

    # --- admission ----------------------------------------------------------------------------------
    def admit(self, lane: Lane, batch: Batch) -> list[Held]:
        """Keep in ``lane.items`` what the bucket lets go now; return the records held back."""
        target = lane.target
        key = rate_key(target.integration_id, target.target_id)
        self._forget_lifted_mark(lane)
        if lane.admission is Admission.DEFER or not lane.items:
            return []  # the breaker holds them all back already
        if not self._is_metered(key, target.rate_limit):
            return self._hold_for_retry_after(lane, batch)
        try:
            plan = self._take(key, len(lane.items), target.rate_limit)
        except RateLimitStoreUnavailable as exc:
            self._store_down(batch, key, exc)
            return []
        held = [
            Held(item, token_bucket.hold_wait(item.record.deferrals_before, wait))
            for item, wait in zip(lane.items[plan.count :], plan.waits, strict=True)
        ]
        del lane.items[plan.count :]
        self._pace(lane.items, plan, target.rate_limit)
        if held:
            batch.metrics.count(Metric.RATE_LIMITED, target.target_id, len(held))
        return held

    def _hold_for_retry_after(self, lane: Lane, batch: Batch) -> list[Held]:
        """An unmetered target's records wait, unattempted, until the quiet another dispatcher was asked
        for (a Retry-After) is over."""
        read = lane.delivery_lane
        wait = (read.retry_after_until if read is not None else 0.0) - self._clock()
        if wait <= 0:
            return []
        held = [Held(item, token_bucket.hold_wait(item.record.deferrals_before, wait)) for item in lane.items]
        del lane.items[:]
        batch.metrics.count(Metric.RATE_LIMITED, lane.target.target_id, len(held))
        return held

    def _forget_lifted_mark(self, lane: Lane) -> None:
        """A mark read earlier than the one this container wrote was lifted (``relay breaker reset``):
        the next Retry-After is marked again, even a shorter one."""
        read = lane.delivery_lane
        if read is None:
            return
        with self._lock:
            if read.retry_after_until < self._marked.get(lane.key, 0.0):
                del self._marked[lane.key]

    def _is_metered(self, key: str, limit: RateLimit | None) -> bool:
        if limit is not None:
            return True
        with self._lock:
            if key not in self._metered:
                return False
        seen = self._views.last_seen(key)
        if token_bucket.current_rate(seen, None, self._clock(), self._policy) is not None:
            return True
        # The implicit limit looks released; another dispatcher may have cut it since: look once.
        try:
            fresh = self._store.load(key) or BucketState()
        except RateLimitStoreUnavailable:
            fresh = seen
        released = token_bucket.current_rate(fresh, None, self._clock(), self._policy) is None
        self._views.keep(key, fresh)
        with self._lock:
            if released:
                self._metered.discard(key)
        return not released

    def _pace(self, items: list[Item], plan: token_bucket.TakePlan, limit: RateLimit | None) -> None:
        """Each admitted record goes once its booking is within the burst tolerance of the clock, counted
        from now rather than from when the tokens were taken: the time the write took is not time the
        receiver was idle, so the records keep their spacing."""
        ahead = token_bucket.tolerance(limit, self._policy)
        now = self._clock()
        lag = max(0.0, now - plan.taken_at)
        for index, item in enumerate(items):
            at = plan.start + index * plan.cost - ahead + lag
            item.not_before = at if at > now else None

    def _take(self, key: str, wanted: int, limit: RateLimit | None) -> token_bucket.TakePlan:
        now = self._clock()
        ahead = token_bucket.tolerance(limit, self._policy) + PACE_SECONDS
        state = self._views.last_seen(key)
        if state.floor_until > now:
            state = self._floor_again(key, state)
        for _ in range(MAX_WRITES):
            rate = token_bucket.current_rate(state, limit, now, self._policy)
            if rate is None:  # an implicit limit just released: everything may go
                return replace(
                    token_bucket.plan_take(BucketState(), 0, now, 1.0, ahead), count=wanted, cost=0.0
                )
            plan = token_bucket.plan_take(state, wanted, now, rate, ahead)
            if plan.count == 0:
                return plan  # full as far as this container knows, and bookings only move forward
            answer = self._store.take(
                key, now=now, count=plan.count, cost=plan.cost, idle=plan.idle, latest=plan.latest
            )
            state = self._views.remember(key, answer)
            if answer.written:
                return token_bucket.booked_where_stored(plan, state)
        # Lost every race: hold the lane back (the records that looked as if they fit come back soonest).
        rate = token_bucket.current_rate(state, limit, now, self._policy) or 1.0
        fresh = token_bucket.plan_take(state, wanted, now, rate, ahead)
        return replace(fresh, count=0, waits=(0.0,) * fresh.count + fresh.waits)

    def _floor_again(self, key: str, seen: BucketState) -> BucketState:
        """The bucket read again: unlike its bookings, a floor may move back (``relay breaker reset``
        lifts it), so one this container saw does not hold the records without a look (one read per
        batch while a floor holds). Unreadable: the floor seen still holds them."""
        try:
            return self._views.keep(key, self._store.load(key) or BucketState())
        except RateLimitStoreUnavailable:
            return seen

    # --- a Retry-After, at once ----------------------------------------------------------------------
    def floor_wait(self, item: Item, batch: Batch) -> float | None:
        """Seconds until the quiet its target asked for is over, if it is not: asked for earlier in this
        batch, or of another dispatcher, as stored (read again when the batch has run
        ``FLOOR_LOOK_SECONDS`` since it last looked)."""
        self._look_at_stored_floor(item, batch)
        floor = batch.floor(item.key)
        wait = floor - self._clock() if floor is not None else 0.0
        if wait <= 0:
            return None
        batch.metrics.count(Metric.RATE_LIMITED, item.target.target_id)
        return wait

    def _look_at_stored_floor(self, item: Item, batch: Batch) -> None:
        """Raise the batch's floor for the target to the stored one, if it is later, reading it (one
        consistent read) when ``FLOOR_LOOK_SECONDS`` have passed since the batch last did. Where it is
        stored: a configured limit's bucket, else the breaker item's mark (``answered``). Unreadable:
        the batch goes on with what it knows."""
        now = self._clock()
        with batch.floor_read(item.key, now, FLOOR_LOOK_SECONDS) as due:
            if due and (until := self._stored_floor(item.target)) > now:
                batch.raise_floor(item.key, until)

    def _stored_floor(self, target: Target) -> float:
        """The target's stored Retry-After floor (epoch seconds; 0.0: none, or unreadable)."""
        try:
            if target.rate_limit is not None:
                key = rate_key(target.integration_id, target.target_id)
                return self._views.keep(key, self._store.load(key) or BucketState()).floor_until
            if self._breakers is not None:
                _, lane = self._breakers.load_with_lane(target_key(target.integration_id, target.target_id))
                return lane.retry_after_until
        except (RateLimitStoreUnavailable, BreakerStoreUnavailable):
            pass
        return 0.0

    def answered(self, item: Item, outcome: Outcome, batch: Batch) -> None:
        """A throttle that says how long to keep quiet holds the target back from now on: in this batch,
        and in every dispatcher through the stored floor."""
        if not outcome.throttled or not outcome.retry_after_seconds:
            return
        until = self._clock() + min(outcome.retry_after_seconds, self._max_floor_seconds)
        if not batch.raise_floor(item.key, until):
            return  # an answer in this batch asked for as long or longer: stored then
        target = item.target
        key = rate_key(target.integration_id, target.target_id)
        with self._lock:
            metered = target.rate_limit is not None or key in self._metered
        if metered:
            try:
                self._views.remember(key, self._store.raise_floor(key, floor_until=until))
            except RateLimitStoreUnavailable as exc:
                self._store_down(batch, key, exc)
        if target.rate_limit is None:
            self._mark_retry_after(item.key, until)

    # --- feedback -----------------------------------------------------------------------------------
    def feedback(self, lane: Lane, batch: Batch) -> None:
        """Fold the lane's answers into the bucket: throttles cut the rate (the floor they asked for is
        stored already, by ``answered``)."""
        target = lane.target
        key = rate_key(target.integration_id, target.target_id)
        outcomes = [item.outcome for item in lane.items if item.outcome is not None]
        now = self._clock()
        if target.rate_limit is None:
            delivered = sum(o.verdict is Verdict.DELIVERED for o in outcomes)
            self._views.note(key, now, delivered, sum(o.reached_endpoint for o in outcomes))
        throttles = [o for o in outcomes if o.throttled]
        if not throttles:
            return
        batch.metrics.count(Metric.THROTTLED, target.target_id, len(throttles))
        floor = batch.floor(lane.key)
        try:
            with self._lock:
                joined = target.rate_limit is not None or key in self._metered
            if joined:
                self._cut(key, target.rate_limit, floor, now)
            else:
                self._join(key, floor, now)
        except RateLimitStoreUnavailable as exc:
            self._store_down(batch, key, exc)

    def _mark_retry_after(self, key: str, until: float) -> None:
        """Tell every dispatcher to send the target nothing before ``until`` (a configured limit's
        bucket says so already: every dispatcher takes from it)."""
        if self._breakers is None:
            return
        with self._lock:  # one write per later floor
            if until <= self._marked.get(key, 0.0):
                return
            self._marked[key] = until
        try:
            self._breakers.mark_retry_after(key, until)
        except BreakerStoreUnavailable as exc:  # the others wait once they are throttled themselves
            logger.warning(
                "could not mark a target's Retry-After", extra={"targetKey": key, "error": str(exc)}
            )

    def _cut(self, key: str, limit: RateLimit | None, asked_until: float | None, now: float) -> None:
        """Multiplicative decrease over the cut this container saw; within the cooldown only the floor."""
        state = self._views.last_seen(key)
        for _ in range(MAX_WRITES):
            floor = token_bucket.floor_after(state, asked_until)
            rate = token_bucket.current_rate(state, limit, now, self._policy)
            if not token_bucket.may_cut(state, now, self._policy) or rate is None:
                if floor > state.floor_until:
                    self._views.remember(key, self._store.raise_floor(key, floor_until=floor))
                return
            seen_cut_at = state.cut_at if state.cut_rate is not None else None
            new_rate = token_bucket.cut_rate(rate, self._policy)
            answer = self._store.cut(key, now=now, rate=new_rate, floor_until=floor, seen_cut_at=seen_cut_at)
            state = self._views.remember(key, answer)
            if answer.written:
                logger.info("target throttled: rate cut", extra={"targetKey": key, "perSecond": new_rate})
                return

    def _join(self, key: str, asked_until: float | None, now: float) -> None:
        """A target without a configured limit throttled this dispatcher: add its share to the implicit
        limit (starting one where there is none, or only a released one), and meter the target."""
        share = self._policy.decrease * self._views.share_basis(key, now)
        state = self._views.last_seen(key)
        for _ in range(MAX_WRITES):
            floor = token_bucket.floor_after(state, asked_until)
            answer = self._store.join(
                key,
                now=now,
                contribution=share,
                floor_until=floor,
                fresh_since=now - self._policy.release_seconds,
            )
            state = self._views.remember(key, answer)
            if not answer.written:  # a released limit: start afresh from this share
                answer = self._store.cut(
                    key, now=now, rate=share, floor_until=floor, seen_cut_at=state.cut_at
                )
                state = self._views.remember(key, answer)
            if answer.written:
                with self._lock:
                    self._metered.add(key)
                logger.info("target throttled: implicit limit", extra={"targetKey": key, "share": share})
                return

    def _store_down(self, batch: Batch, key: str, exc: RateLimitStoreUnavailable) -> None:
        logger.warning(
            "rate-limit store unavailable: failing open", extra={"targetKey": key, "error": str(exc)}
        )
        batch.metrics.service_count(Metric.RATE_LIMIT_STORE_UNAVAILABLE)

"""The ordered path: records of the FIFO delivery queue, one at a time per conversation.

Each record carries its message group: one conversation of one target (the intake's routing,
relay.logic.intake.ordering). Within a group, record n+1 is never attempted before n is delivered or
dead-lettered; groups run side by side in the engine's pool. A record that cannot go now **holds its
group**: it and every later record of the group are shown again together after a delay
(ChangeMessageVisibilityBatch) and reported failed, so SQS hands them out again in the same order.
Nothing here ever re-sends a record (a re-send would put it behind later ones).

    retryable failure           the backoff                     (fifo_settle.GroupQueue)
    exhausted, target blocks    ORDERED_BLOCK_HOLD_SECONDS      (fifo_settle.OrderedSettler)
    breaker open / probe failed until the breaker may half-open (``admit``)
    rate limit: no token now    about when it would fit         (``admit``)
    out of time                 0 s: at once, with its group    (``admit``)
    targets or attempts table   the queue's own visibility timeout
    unavailable
    target record unreadable    ENABLE_RECHECK_SECONDS, until the record is fixed; OrderedGroupBlocked
                                (its onExhausted and matrix are part of what cannot be read: the
                                conversation waits, as for a disabled target, never overtaken)

The group holding a lane's half-open probe runs before that target's other groups, which meet the
probe's answer (fifo_groups.probe_first). ``admit`` is the one place an ordered record is held instead
of deferred: a deferral decided elsewhere (breaker, rate limit) becomes a ``Hold`` there. Its lanes
never route to the slow lane. A record the rate limit paces (``Item.not_before``) waits for its time
in its group's run. Attempts are counted in the attempts table, not from the receive count: a held
record is received again without being attempted.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

from relay.errors import DependencyUnavailable
from relay.logic import breaker, retry
from relay.logic.dispatch import audit
from relay.logic.dispatch.attempt import CONFIGURATION, Attempter
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.deliver import Deliverer
from relay.logic.dispatch.fifo_attempts import OrderedAttempts
from relay.logic.dispatch.fifo_groups import GroupReleaser, fail_behind_failures, message_groups, probe_first
from relay.logic.dispatch.fifo_settle import (
    ENABLE_RECHECK_SECONDS,
    GroupQueue,
    OrderedSettler,
    hold_within_backstop,
    holds_for,
)
from relay.logic.dispatch.lanes import Lane, LaneReports, Lanes, group
from relay.logic.dispatch.metrics import Metric
from relay.logic.dispatch.rate_limit import Held, RateLimits
from relay.logic.dispatch.records import Item, SqsRecord, Unattempted, Unusable, resolve
from relay.logic.outcomes import Verdict
from relay.observability import logger
from relay.ports import AttemptCounter, OrderedQueueOps, TargetDirectory
from relay.settings import Settings

# Audit error codes of held records.
BREAKER_OPEN = "breaker-open"
RATE_LIMITED = "rate-limited"
OUT_OF_TIME = "out-of-time"
DEPENDENCY_UNAVAILABLE = "dependency-unavailable"
BEHIND_EARLIER = "behind-earlier-record"


@dataclass(frozen=True)
class Hold:
    """Hold a record and the rest of its group: shown again after ``seconds`` (None: the queue's own
    visibility timeout, nothing changed), ``reason`` in the audit."""

    seconds: int | None
    reason: str
    error: str | None = None  # the audit's ``error`` of the record that holds the group


@dataclass(frozen=True)
class Unresolved:
    """A record whose target could not be read (the targets table failed)."""

    record: SqsRecord


Step = Item | Unattempted | Unresolved | Unusable


class OrderedDelivery:
    """The ordered path of a Dispatcher; it shares the engine's pool, per-target slots and time budget
    (``deliverer``), attempter and rate limits."""

    def __init__(
        self,
        *,
        settings: Settings,
        targets: TargetDirectory,
        queue: OrderedQueueOps,
        attempts: AttemptCounter,
        lanes: Lanes,
        limits: RateLimits,
        attempter: Attempter,
        pool: ThreadPoolExecutor,
        deliverer: Deliverer,
        now: Callable[[], datetime],
        rng: random.Random,
        write_early: Callable[[Batch, set[str]], None],
    ) -> None:
        self._settings = settings
        self._targets = targets
        self._queue = queue
        self._attempts = OrderedAttempts(attempts)
        self._lanes = lanes
        self._limits = limits
        self._attempter = attempter
        self._pool = pool
        self._deliverer = deliverer
        self._now = now
        self._rng = rng
        self._releaser = GroupReleaser(settings=settings, queue=queue, write_early=write_early)

    def run(self, records: list[SqsRecord], batch: Batch) -> None:
        groups = message_groups(records)
        steps = {group_id: [self._resolve(r, batch) for r in members] for group_id, members in groups.items()}
        items = [step for members in steps.values() for step in members if isinstance(step, Item)]
        lanes = {
            lane.key: lane
            for lane in self._pool.map(lambda e: self._lanes.open(e[0], e[1], batch), group(items).items())
        }
        # The rate limit takes its tokens per target as in the engine; what it holds back holds its group.
        rate_held = {
            id(held.item): held for lane in lanes.values() for held in self._limits.admit(lane, batch)
        }
        targets = {gid: {s.key for s in members if isinstance(s, Item)} for gid, members in steps.items()}
        keys = {gid: next(iter(each), None) for gid, each in targets.items()}  # a group is one target's
        probing = {
            gid for gid, members in steps.items() if any(isinstance(s, Item) and s.probe for s in members)
        }
        reached: dict[str, int] = {}  # group -> index of the step it is at (a crash leaves it there)
        reports = LaneReports(self._lanes, lanes.values(), batch)
        reports.expect(key for each in targets.values() for key in each)

        def run_group(gid: str) -> None:  # a lane reports once its groups have run, not at the batch's end
            group = partial(self._run_group, gid, steps[gid], lanes, rate_held, batch, reached)
            reports.run(group, *targets[gid])

        for phase in probe_first(keys, probing):
            futures = {self._pool.submit(run_group, gid): gid for gid in phase}
            self._releaser.wait(futures, groups, batch)
            for future, gid in futures.items():
                if future.exception() is not None:
                    logger.exception("ordered group crashed", exc_info=future.exception())
                    batch.metrics.service_count(Metric.DELIVERY_CRASHED)
                    for step in steps[gid][reached.get(gid, 0) :]:
                        batch.fail(step.record)
        for lane in lanes.values():
            self._limits.feedback(lane, batch)
        fail_behind_failures(groups, batch)

    def admit(self, item: Item, lane: Lane, rate_held: Held | None, batch: Batch) -> Hold | None:
        """Whether ``item`` may be attempted now, or holds its group (and why, and for how long).

        Merge point, the one place an ordered record is held instead of deferred: any reason the
        engine has to defer a record (breaker, rate limit, time) is a Hold here, never a re-send (nor a
        slow-lane re-route), which would put the record behind later ones of its conversation."""
        if lane.admission is not breaker.Admission.DELIVER and not item.probe:
            after = self._lanes.after_probe(lane)
            if any(held is item for held in after.defer):
                delay = retry.deferral_delay_seconds(after.seconds_until_probe, rng=self._rng)
                return Hold(delay, BREAKER_OPEN)
        if rate_held is not None:
            return Hold(math.ceil(rate_held.wait_seconds), RATE_LIMITED)
        if (quiet := self._limits.floor_wait(item, batch)) is not None:  # a Retry-After in this batch
            return Hold(math.ceil(quiet), RATE_LIMITED)
        if self._deliverer.out_of_time(item, batch):
            return Hold(0, OUT_OF_TIME)
        return None

    # --- one group -----------------------------------------------------------------------------------
    def _run_group(
        self,
        group_id: str,
        steps: list[Step],
        lanes: dict[str, Lane],
        rate_held: dict[int, Held],
        batch: Batch,
        reached: dict[str, int],
    ) -> None:
        queue = GroupQueue(self._queue, group_id, lambda seconds, held: self._lasting(seconds, held, batch))
        settler = OrderedSettler(
            settings=self._settings,
            queue=queue,
            targets=self._targets,
            now=self._now,
            rng=self._rng,
            block_hold_seconds=self._settings.ordered_block_hold_seconds,
        )
        for index, step in enumerate(steps):
            reached[group_id] = index
            queue.at(step.record, [later.record for later in steps[index + 1 :]])
            hold = self._step(step, lanes, rate_held, settler, batch)
            if hold is not None:
                self._hold(steps[index:], hold, batch)
                return
            if batch.has_failed(step.record):
                # Settling left it for later (a retry holds its group already): everything behind waits.
                self._hold(steps[index + 1 :], Hold(None, BEHIND_EARLIER), batch)
                return

    def _step(
        self,
        step: Step,
        lanes: dict[str, Lane],
        rate_held: dict[int, Held],
        settler: OrderedSettler,
        batch: Batch,
    ) -> Hold | None:
        """Settle one record, or say why it holds its group."""
        if isinstance(step, Unresolved):
            return Hold(None, DEPENDENCY_UNAVAILABLE)
        if isinstance(step, Unattempted):
            return self._unattempted(step, settler, batch)
        if isinstance(step, Unusable):
            batch.metrics.service_count(Metric.ORDERED_GROUP_BLOCKED)
            return Hold(ENABLE_RECHECK_SECONDS, CONFIGURATION, step.why)
        item = step
        self._deliverer.wait_until_booked(item)  # paced by its rate limit: its group waits for it
        with self._deliverer.slot(item.key):
            if batch.is_gone(item.key):
                return self._unattempted(Unattempted.gone(item), settler, batch)
            hold = self.admit(item, lanes[item.key], rate_held.get(id(item)), batch)
            if hold is not None:
                return hold
            try:
                item.attempt = self._attempts.number(item.record)
            except DependencyUnavailable as exc:
                _warn("attempts table unavailable", item.record, exc)
                return Hold(None, DEPENDENCY_UNAVAILABLE)
            attempt = self._attempter.run(item)
            if isinstance(attempt, Unattempted):
                return self._unattempted(attempt, settler, batch)
            self._limits.answered(item, attempt.outcome, batch)
            if attempt.outcome.verdict is not Verdict.DELIVERED:
                self._attempts.count_failure(item.record)
            settler.attempted(item, attempt, batch)
        return None

    def _unattempted(self, step: Unattempted, settler: OrderedSettler, batch: Batch) -> Hold | None:
        """Dead-letter a record that cannot be attempted, or hold its group when its target blocks and
        is only disabled (fifo_settle.WAITS_FOR_ENABLE)."""
        block_hold = self._settings.ordered_block_hold_seconds
        hold = holds_for(step.target, step.reason, block_hold_seconds=block_hold) if step.target else None
        if hold is not None:
            # Counted as blocked (the alarm): the ordered queue keeps them 14 days, not for ever.
            batch.metrics.service_count(Metric.ORDERED_GROUP_BLOCKED)
            return Hold(hold, step.reason.value)
        settler.unattempted(step, batch, attempts=self._attempts.made(step.record))
        return None

    def _hold(self, steps: list[Step], hold: Hold, batch: Batch) -> None:
        """Show ``steps`` again together after the hold (when it names a delay) and report them failed."""
        if not steps:
            return
        now = self._now()
        if hold.seconds is not None:
            seconds = self._lasting(hold.seconds, [step.record for step in steps], batch)
            hold = replace(hold, seconds=seconds)
            try:
                self._queue.hold([step.record.receipt_handle for step in steps], seconds)
            except DependencyUnavailable as exc:  # the queue's own visibility timeout brings them back
                logger.warning("could not hold an ordered group", extra={"error": str(exc)})
        for index, step in enumerate(steps):
            batch.fail(step.record)
            item = _held_item(step)
            error = hold.error if index == 0 else None
            if item is not None:
                line = audit.item_line(item, batch, now, now, error=error)
            elif isinstance(step, Unusable):
                line = {**audit.base_line(step.record, step.task, batch, now, now), "error": error}
            else:
                continue
            line.update(attempt=None, outcome=audit.HELD, errorCode=hold.reason)
            line["retryInSeconds"] = hold.seconds
            batch.metrics.count(Metric.ORDERED_HELD, line["targetId"])
            batch.log(line["targetId"], line)

    def _lasting(self, seconds: int, records: Sequence[SqsRecord], batch: Batch) -> int:
        """How long a hold of ``records`` asks for: ``seconds``, spread out as the queue's redrive backstop
        nears (fifo_settle.hold_within_backstop), within what SQS accepts for this batch."""
        now = self._now()
        lasting = hold_within_backstop(
            seconds, records, now=now.timestamp(), max_receive_count=self._settings.max_receive_count
        )
        return min(lasting, batch.visibility_left_seconds(now))

    def _resolve(self, record: SqsRecord, batch: Batch) -> Step:
        try:
            return resolve(record, self._targets, batch.tasks)
        except DependencyUnavailable as exc:
            _warn("targets table unavailable", record, exc)
            return Unresolved(record)


def _held_item(step: Step) -> Item | None:
    """The item a held step's audit line is about: none for a record whose target could not be read."""
    if isinstance(step, Item):
        return step
    return step.as_item() if isinstance(step, Unattempted) else None


def _warn(message: str, record: SqsRecord, exc: Exception) -> None:
    logger.warning(message, extra={"messageId": record.message_id, "error": str(exc)})

"""The batch engine: deliver one SQS batch of DeliveryTasks concurrently and settle every record.

1. resolve each record (relay.logic.dispatch.records); poison, unknown and disabled targets go to
   the DLQ at once; a record whose target's record cannot be read is retried (settle.unusable);
2. group the records by target into lanes and read each lane's breaker (and delivery lane) once
   (lanes); in the fast lane, a slow target's records are routed to the slow lane (isolation); take
   the tokens any other rate-limited lane needs from its target's bucket: what does not fit is
   deferred (rate_limit);
3. send the probes first, then everything else, concurrently: a pool of DELIVERY_CONCURRENCY threads
   (one while the batch keeps up on one, all once receivers make it wait: runners), at most
   PER_TARGET_CONCURRENCY in flight per target, records queued round-robin across targets; a
   record starts only with its target's slot in hand, only if its target has not answered 410 in this
   batch, only if the invocation has time left for one whole request, and (fast lane) only if this
   container does not measure its target slow by then, else it is routed too (deliver); a record its
   rate limit paces goes last and starts at its booked time (the thread that takes it waits);
4. settle each record from what happened (settle: the one place a verdict becomes an action); the
   thread that settles a lane's last record folds the lane's results into its breaker (LaneReports);
5. fold each lane's throttles into its rate limit, move a target back from the slow lane if measured
   so, write one audit object per target, flush the metrics, return ``batchItemFailures``.

Records of the ordered (FIFO) queue take the ordered path instead (relay.logic.dispatch.fifo): one at a
time per conversation, held with their conversation rather than deferred, never routed to the slow lane.
Records of the intake's FIFO first hop (``FIRST_HOP``) carry a message group too, but each is its own
group: they take the standard path, retried in place by visibility, deferrals re-sent to the standard
queue (docs/dispatcher.md, "The first hop").
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from relay.errors import DependencyUnavailable
from relay.logic.dispatch.attempt import ANSWER_SECONDS, Attempter
from relay.logic.dispatch.audit import (
    write_archive,
    write_audit,
    write_early,
)
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.deliver import Deliverer
from relay.logic.dispatch.fifo import OrderedDelivery
from relay.logic.dispatch.isolation import Isolation
from relay.logic.dispatch.lanes import Lane, LaneReports, Lanes, group, interleave
from relay.logic.dispatch.metrics import BatchMetrics
from relay.logic.dispatch.rate_limit import Held, RateLimits
from relay.logic.dispatch.records import Item, SqsRecord, Unattempted, Unusable, resolve
from relay.logic.dispatch.runners import ContextPool, run_steps
from relay.logic.dispatch.settle import Settler
from relay.observability import logger
from relay.ports import (
    AccessTokens,
    AttemptCounter,
    AuditSink,
    AwsCallDeadline,
    BreakerStore,
    ClaimCheckReader,
    Clock,
    DeliveryQueueOps,
    EventArchive,
    HttpClient,
    OrderedQueueOps,
    RateLimitStore,
    TargetDirectory,
    TargetSecretReader,
)
from relay.settings import Settings

# One record's step in the pool: deliver it, or defer it.
Work = tuple[Item, Callable[[], None]]


class Dispatcher:
    """One per container (relay.wiring): its pool, HTTP session, caches and per-target slots are
    reused by every batch."""

    def __init__(
        self,
        *,
        settings: Settings,
        targets: TargetDirectory,
        http: HttpClient,
        queue: DeliveryQueueOps,
        breakers: BreakerStore,
        rate_limits: RateLimitStore,
        audit: AuditSink | None,
        secrets: TargetSecretReader,
        claim_checks: ClaimCheckReader,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] | None = None,
        tokens: AccessTokens | None = None,
        ordered_queue: OrderedQueueOps | None = None,
        attempts: AttemptCounter | None = None,
        archive: EventArchive | None = None,
        aws_deadline: AwsCallDeadline | None = None,
    ) -> None:
        """``tokens``: OAuth access tokens for oauth2 targets (without it, their attempts fail as a
        configuration problem). ``ordered_queue`` and ``attempts``: the ordered path's queue and attempt
        counter (the ordered dispatcher's; without them, an ordered record is left on its queue).
        ``aws_deadline``: bounds the AWS calls of a batch whose remaining time is known (without it,
        they are not bounded)."""
        self._settings = settings
        self._aws_deadline = aws_deadline
        self._archive = archive
        self._targets = targets
        self._http = http
        self._audit = audit
        self._clock = clock = clock or time.time
        self._sleep = sleep or time.sleep
        self._isolation = Isolation(settings=settings, breakers=breakers, clock=clock)
        self._lanes = Lanes(
            settings=settings, breakers=breakers, clock=clock, routes_away=self._isolation.routes_away
        )
        self._limits = RateLimits(
            store=rate_limits,
            clock=clock,
            max_floor_seconds=settings.max_retry_delay_seconds,
            breakers=breakers,
        )
        self._attempter = Attempter(
            settings=settings,
            http=http,
            secrets=secrets,
            claim_checks=claim_checks,
            now=self._now,
            tokens=tokens,
            monotonic=clock,  # the attempt's budget on the engine's one clock (a test moves it)
        )
        rng = rng or random.Random()
        self._settle = Settler(settings=settings, queue=queue, targets=targets, now=self._now, rng=rng)
        self._pool = ContextPool(max_workers=settings.delivery_concurrency, thread_name_prefix="deliver")
        self._deliver = Deliverer(
            settings=settings,
            settle=self._settle,
            limits=self._limits,
            isolation=self._isolation,
            attempter=self._attempter,
            clock=clock,
            sleep=self._sleep,
        )
        self._ordered: OrderedDelivery | None = None
        if ordered_queue is not None and attempts is not None:
            self._ordered = OrderedDelivery(
                settings=settings,
                targets=targets,
                queue=ordered_queue,
                attempts=attempts,
                # Its own lanes, which never route: an ordered record is never re-sent to the slow lane.
                lanes=Lanes(settings=settings, breakers=breakers, clock=clock),
                limits=self._limits,
                attempter=self._attempter,
                pool=self._pool,
                deliverer=self._deliver,
                now=self._now,
                rng=rng,
                write_early=lambda batch, message_ids: write_early(batch, message_ids, audit, archive),
            )

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()

    def handle_batch(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        invocation_id: str | None = None,
        remaining_ms: Callable[[], int] | None = None,
    ) -> dict[str, list[dict[str, str]]]:
        """Deliver a batch; ``remaining_ms`` (the Lambda context's clock) lets records that could not
        finish before the function times out be deferred instead of cut off mid-request, and no AWS
        call start that could end past the answer: a function that times out has its whole batch
        delivered again, the records it delivered included. A call refused is a dependency failure:
        its record is shown again, or its audit lines logged instead of written."""
        if remaining_ms is None or self._aws_deadline is None:
            return self._handle_batch(records, invocation_id, remaining_ms)
        with self._aws_deadline(time.monotonic() + remaining_ms() / 1000 - ANSWER_SECONDS):
            return self._handle_batch(records, invocation_id, remaining_ms)

    def _handle_batch(
        self,
        records: Sequence[Mapping[str, Any]],
        invocation_id: str | None,
        remaining_ms: Callable[[], int] | None,
    ) -> dict[str, list[dict[str, str]]]:
        batch = Batch(
            invocation_id=invocation_id or str(uuid.uuid4()),
            started=self._now(),
            metrics=BatchMetrics(
                namespace=self._settings.metrics_namespace,
                service=self._settings.service_name,
                release=self._settings.release_dimensions(),
            ),
            remaining_ms=remaining_ms,
        )
        received = [SqsRecord.from_event(r) for r in records]
        # The first hop's message groups are single deliveries, not conversations: the standard path.
        in_order = not self._settings.first_hop
        ordered = [record for record in received if in_order and record.group_id is not None]
        standard = [record for record in received if not (in_order and record.group_id is not None)]
        lanes, held = self._open_lanes(standard, batch)
        # A slow target's records go to the slow lane first (batched); any SQS did not take go here.
        kept = self._settle.routed([item for lane in lanes if lane.routed for item in lane.items], batch)
        here = [lane for lane in lanes if not lane.routed]
        reports = LaneReports(self._lanes, lanes, batch)  # each lane's breaker, once its records are done
        reports.expect_lanes(here)
        reports.expect(item.key for item in kept)
        deliver = partial(self._deliver, batch=batch)
        probes = [lane.probe for lane in here if lane.probe is not None]
        self._run(reports.steps(probes, deliver), batch)
        deliveries: list[list[Item]] = []
        held_back = reports.steps(kept, partial(self._deliver, batch=batch, may_route=False))
        held_back.extend(
            (h.item, partial(self._settle.deferred, h.item, h.wait_seconds, batch, error_code="rate-limited"))
            for h in held
        )
        for lane in here:
            after = self._lanes.after_probe(lane)
            deliveries.append(after.deliver)
            wait_seconds = after.seconds_until_probe
            held_back.extend(
                (item, partial(self._settle.deferred, item, wait_seconds, batch)) for item in after.defer
            )
        self._run(reports.steps(interleave(deliveries), deliver) + held_back, batch)
        for lane in lanes:
            self._limits.feedback(lane, batch)
            self._isolation.report(lane.key, lane.target.target_id, lane.delivery_lane, batch)
        self._isolation.end_invocation()
        if ordered:
            self._deliver_in_order(ordered, batch)
        write_audit(batch, self._audit)
        write_archive(batch, self._archive)
        batch.metrics.flush()
        return batch.response()

    def _deliver_in_order(self, records: list[SqsRecord], batch: Batch) -> None:
        if self._ordered is None:
            logger.error("ordered records reached a dispatcher without the ordered queue: left on it")
            for record in records:
                batch.fail(record)
            return
        self._ordered.run(records, batch)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _open_lanes(self, records: list[SqsRecord], batch: Batch) -> tuple[list[Lane], list[Held]]:
        items: list[Item] = []
        for record in records:
            try:
                resolved = resolve(record, self._targets, batch.tasks)
            except DependencyUnavailable as exc:
                logger.warning(
                    "targets table unavailable", extra={"messageId": record.message_id, "error": str(exc)}
                )
                batch.fail(record)
                continue
            if isinstance(resolved, Unattempted):
                self._settle.unattempted(resolved, batch)
            elif isinstance(resolved, Unusable):
                self._settle.unusable(resolved, batch)
            else:
                items.append(resolved)
        # One breaker read (and for a rate-limited target one bucket write) per target, side by side;
        # one target's here (a hand-off to the pool is about a tenth of a delivery's CPU, profiled).
        by_target = list(group(items).items())
        opened = (
            [self._open_lane(key, members, batch) for key, members in by_target]
            if len(by_target) == 1
            else list(self._pool.map(lambda entry: self._open_lane(entry[0], entry[1], batch), by_target))
        )
        # A lane the rate limit held back entirely has nothing left to send (nor a probe to report).
        return [lane for lane, _ in opened if lane.items], [held for _, each in opened for held in each]

    def _open_lane(self, key: str, items: list[Item], batch: Batch) -> tuple[Lane, list[Held]]:
        lane = self._lanes.open(key, items, batch)
        if lane.routed:
            return lane, []  # bound for the slow lane, whose dispatcher takes its tokens
        return lane, self._limits.admit(lane, batch)

    def _run(self, work: list[Work], batch: Batch) -> None:
        """Run each item's step in the pool and wait for all of them. A step that raised is a bug, not
        an outcome: it is logged and its record reported failed, so SQS shows it again."""
        # Records paced by their rate limit go last, each at its booked time.
        ordered = sorted(work, key=lambda each: each[0].not_before or 0.0)
        crashed = run_steps(
            self._pool,
            [partial(self._deliver.when_booked, item, step) for item, step in ordered],
            width=self._settings.delivery_concurrency,
            wide=not all(self._deliver.answers_quickly(key) for key in {item.key for item, _ in ordered}),
            serial_budget_seconds=self._settings.serial_budget_ms / 1000,
            while_waiting=partial(self._isolation.check_in_flight, batch),
        )
        for index, exc in crashed:
            self._settle.crashed(ordered[index][0], exc, batch)

"""Settling: the one place where what happened to a record becomes what is done about it.

    delivered                      -> done
    retryable, attempts left       -> ChangeMessageVisibility to the backoff, reported failed
    retryable, last attempt        -> DLQ exhausted
    gone (410)                     -> disable the target, DLQ target-gone
    permanent                      -> DLQ permanent-status
    not attempted (poison, unknown or disabled target, 410 earlier in the batch)
                                   -> DLQ with its reason, attempts unchanged
    target record unreadable       -> nothing sent; retried as a configuration failure on
                                      UNREADABLE_RETRY's schedule, then DLQ exhausted with the reason
    held back (breaker open, out of time)
                                   -> deferred: re-sent with DelaySeconds, attempts unchanged
    a slow target in the fast lane -> routed: re-sent to the slow lane's queue, attempts unchanged

A message the dispatcher dead-letters or defers is reported done (SQS deletes the original). When a
step cannot complete (SQS or the DLQ unreachable) the record is ``left-for-redelivery``: reported
failed, so SQS shows it again and the redrive policy stays the backstop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from relay.errors import DependencyUnavailable
from relay.logic import retry
from relay.logic.dispatch import audit
from relay.logic.dispatch.attempt import CONFIGURATION, Attempt
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.metrics import Metric
from relay.logic.dispatch.records import Item, SqsRecord, Unattempted, Unusable
from relay.logic.outcomes import Outcome, Verdict
from relay.models.delivery import DeadLetterNote, DlqReason
from relay.models.queue import Requeue
from relay.models.targets import RetryMatrix
from relay.observability import logger
from relay.ports import DeliveryQueueOps, TargetDirectory
from relay.settings import Settings

# The dead-letter reason of an attempt that will not be retried, by its verdict (a retryable one: its
# attempts ran out, or the queue's retention would before the next).
_FINAL_REASONS = {
    Verdict.RETRYABLE: DlqReason.EXHAUSTED,
    Verdict.GONE: DlqReason.TARGET_GONE,
    Verdict.PERMANENT: DlqReason.PERMANENT_STATUS,
}

# The retries of a task whose target's record cannot be read (its own matrix is part of what cannot be
# read): spread over about half an hour, several config sync runs (every 5 minutes) and time for a
# deploy to fix the record, and capped below the redrive backstop like any target's.
UNREADABLE_RETRY = RetryMatrix(attempts=9, base_interval_ms=60_000, max_interval_ms=900_000, multiplier=2.0)


class Settler:
    def __init__(
        self,
        *,
        settings: Settings,
        queue: DeliveryQueueOps,
        targets: TargetDirectory,
        now: Callable[[], datetime],
        rng: random.Random,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._targets = targets
        self._now = now
        self._rng = rng

    def attempted(self, item: Item, attempt: Attempt, batch: Batch) -> None:
        """Settle an attempt by its verdict, and log its audit line."""
        outcome = item.outcome = attempt.outcome
        item.sent_at = attempt.started.timestamp()
        target_id = item.target.target_id
        if attempt.result is not None:
            batch.metrics.latency(target_id, attempt.result.elapsed_ms)
        if outcome.verdict is Verdict.GONE:
            batch.mark_gone(
                item.key
            )  # first, before any I/O, so none of this target's waiting records starts
        line = _attempt_line(item, attempt, batch)
        if outcome.verdict is Verdict.DELIVERED:
            batch.metrics.count(Metric.DELIVERED, target_id)
            line["outcome"] = audit.DELIVERED
        else:
            batch.metrics.count(Metric.DELIVERY_FAILED, target_id)
            delay = self._retry_delay(item, outcome, batch)
            if delay is not None:
                self._schedule_retry(item.record, target_id, delay, batch, line)
            else:
                if outcome.verdict is Verdict.GONE:
                    self._disable(item)
                self._dead_letter(item, _FINAL_REASONS[outcome.verdict], outcome, batch, line)
        batch.log(target_id, line)

    def unattempted(self, unattempted: Unattempted, batch: Batch, *, attempts: int | None = None) -> None:
        """Dead-letter a record without an attempt (its attempts stay as they were: ``attempts``, or
        what the message's receive count says)."""
        record, task, reason = unattempted.record, unattempted.task, unattempted.reason
        target_id = task.target_id if task else None
        try:
            self._queue.dead_letter(
                record.body,
                record.message_attributes,
                DeadLetterNote(
                    reason,
                    record.attempts_before if attempts is None else attempts,
                    integration_id=task.integration_id if task else None,
                    target_id=target_id,
                    last_error=unattempted.why,
                ),
            )
        except DependencyUnavailable:
            logger.warning("DLQ unavailable", extra={"messageId": record.message_id, "reason": reason.value})
            batch.fail(record)
            return
        logger.warning(
            "dead-lettered without an attempt", extra={"messageId": record.message_id, "reason": reason.value}
        )
        if target_id:
            batch.metrics.count(Metric.DEAD_LETTERED, target_id)
            now = self._now()
            batch.log(
                target_id,
                {
                    **audit.base_line(record, task, batch, now, now),
                    "outcome": audit.DEAD_LETTERED,
                    "dlqReason": reason.value,
                    "errorCode": reason.value,
                },
            )

    def unusable(self, step: Unusable, batch: Batch) -> None:
        """A record whose target's record cannot be read: nothing was sent. Retried (an attempt used, as
        for any configuration failure) until the record is fixed, then dead-lettered ``exhausted`` with
        ``step.why`` as its last error; its audit line says why too."""
        record, task = step.record, step.task
        target_id = task.target_id
        now = self._now()
        line = {
            **audit.base_line(record, task, batch, now, now),
            "attempt": record.attempt,
            "status": None,
            "errorCode": CONFIGURATION,
            "error": step.why,
        }
        batch.metrics.count(Metric.DELIVERY_FAILED, target_id)
        delay = self._backoff(UNREADABLE_RETRY, record.attempt, batch)
        if delay is not None and retry.outlives_retention(record.sent_at, delay, now.timestamp()):
            delay = None
        if delay is not None:
            self._schedule_retry(record, target_id, delay, batch, line)
        else:
            note = DeadLetterNote(
                DlqReason.EXHAUSTED,
                record.attempt,
                integration_id=task.integration_id,
                target_id=target_id,
                last_error=step.why,
            )
            try:
                self._queue.dead_letter(record.body, record.message_attributes, note)
                line.update(outcome=audit.DEAD_LETTERED, dlqReason=DlqReason.EXHAUSTED.value)
                batch.metrics.count(Metric.DEAD_LETTERED, target_id)
            except DependencyUnavailable:
                line.update(outcome=audit.LEFT_FOR_REDELIVERY, dlqReason=DlqReason.EXHAUSTED.value)
                batch.fail(record)
        batch.log(target_id, line)

    def deferred(
        self, item: Item, seconds_until_probe: float, batch: Batch, *, error_code: str = "breaker-open"
    ) -> None:
        """Hand the record back untouched for later: a new message, delayed, attempts unchanged."""
        delay = retry.deferral_delay_seconds(seconds_until_probe, rng=self._rng)
        now = self._now()
        line = audit.item_line(item, batch, now, now, error=None)
        line.update(attempt=None, deferredSeconds=delay, errorCode=error_code)
        try:
            self._queue.defer(
                item.record.body,
                item.record.message_attributes,
                attempts=item.record.attempts_before,
                deferrals=item.record.deferrals_before + 1,
                delay_seconds=delay,
            )
            line["outcome"] = audit.DEFERRED
            batch.metrics.count(Metric.DEFERRED, item.target.target_id)
        except DependencyUnavailable:
            # Could not re-queue: keep the message hidden until the breaker may half-open instead.
            try:
                self._queue.schedule_retry(item.record.receipt_handle, delay)
            except DependencyUnavailable:
                pass
            line["outcome"] = audit.LEFT_FOR_REDELIVERY
            batch.fail(item.record)
        batch.log(item.target.target_id, line)

    def routed(self, items: Sequence[Item], batch: Batch) -> list[Item]:
        """Hand the records to the slow lane untouched: new messages on its queue (batched), attempts
        unchanged. Returns those SQS did not take: the caller delivers them here, as without isolation."""
        requeues = [
            Requeue(
                i.record.body,
                i.record.message_attributes,
                i.record.attempts_before,
                i.record.deferrals_before,
            )
            for i in items
        ]
        accepted = self._queue.to_slow_lane(requeues) if requeues else set()
        now = self._now()
        for item in (items[index] for index in sorted(accepted)):
            line = audit.item_line(item, batch, now, now, error=None)
            line.update(attempt=None, outcome=audit.ROUTED, errorCode="slow-target")
            batch.metrics.count(Metric.ROUTED_TO_SLOW_LANE, item.target.target_id)
            batch.log(item.target.target_id, line)
        kept = [item for index, item in enumerate(items) if index not in accepted]
        if kept:
            logger.warning("slow lane unavailable: delivering here", extra={"records": len(kept)})
        return kept

    def crashed(self, item: Item, exc: Exception, batch: Batch) -> None:
        """The record's step raised: a bug, not an outcome. Logged and reported failed, so SQS shows it
        again; the audit says so too, so `relay deliveries show` finds the record SQS shows again."""
        logger.exception("delivery crashed", exc_info=exc)
        batch.metrics.service_count(Metric.DELIVERY_CRASHED)
        batch.fail(item.record)
        now = self._now()
        line = audit.item_line(item, batch, now, now, error=f"internal error: {type(exc).__name__}")
        line.update(outcome=audit.LEFT_FOR_REDELIVERY, errorCode=audit.INTERNAL_ERROR)
        batch.log(item.target.target_id, line)

    def _retry_delay(self, item: Item, outcome: Outcome, batch: Batch) -> int | None:
        """Seconds until the failed record's next attempt; None when it has none: not retryable, its
        attempts are used up, or the next one would come after SQS deletes the message (dead-lettered
        as exhausted rather than lost)."""
        if outcome.verdict is not Verdict.RETRYABLE:
            return None
        backoff = self._backoff(item.target.retry_matrix, item.attempt, batch, outcome.retry_after_seconds)
        if backoff is None:
            return None
        delay = self._held_for(item, backoff)
        if self._outlives_retention(item, delay):
            logger.warning(
                "no retry before the queue's retention ends",
                extra={"messageId": item.record.message_id, "retryInSeconds": delay},
            )
            return None
        return delay

    def _backoff(
        self, matrix: RetryMatrix, attempt: int, batch: Batch, retry_after_seconds: float | None = None
    ) -> int | None:
        """The matrix's delay before attempt ``attempt + 1`` (within the batch's visibility and the
        delay cap), or None when ``attempt`` was its last."""
        if retry.exhausted(matrix, attempt, max_receive_count=self._settings.max_receive_count):
            return None
        return retry.retry_delay_seconds(
            matrix,
            attempt,
            rng=self._rng,
            retry_after_seconds=retry_after_seconds,
            max_delay_seconds=min(
                self._settings.max_retry_delay_seconds, batch.visibility_left_seconds(self._now())
            ),
        )

    def _held_for(self, item: Item, seconds: int) -> int:
        """The delay SQS is asked for to hold ``item`` back ``seconds`` (the ordered lane spreads holds)."""
        return seconds

    def _outlives_retention(self, item: Item, seconds: int) -> bool:
        """True when ``item`` shown again in ``seconds`` would come too late: SQS deletes it first."""
        return retry.outlives_retention(item.record.sent_at, seconds, self._now().timestamp())

    def _schedule_retry(
        self, record: SqsRecord, target_id: str, delay: int, batch: Batch, line: dict[str, Any]
    ) -> None:
        try:
            self._queue.schedule_retry(record.receipt_handle, delay)
            line.update(outcome=audit.RETRY_SCHEDULED, retryInSeconds=delay)
        except DependencyUnavailable:  # the queue's own visibility timeout brings it back
            line.update(outcome=audit.RETRY_SCHEDULED, retryInSeconds=None)
        batch.metrics.count(Metric.RETRIED, target_id)
        batch.fail(record)

    def _disable(self, item: Item) -> None:
        target_id = item.target.target_id
        try:
            self._targets.set_target_enabled(item.task.integration_id, item.task.target_id, False)
            logger.warning("target disabled: it answered 410 Gone", extra={"targetId": target_id})
        except DependencyUnavailable as exc:  # the DLQ send that follows matters more than the flag
            logger.warning("could not disable target", extra={"targetId": target_id, "error": str(exc)})

    def _dead_letter(
        self, item: Item, reason: DlqReason, outcome: Outcome, batch: Batch, line: dict[str, Any]
    ) -> None:
        try:
            self._queue.dead_letter(
                item.record.body,
                item.record.message_attributes,
                DeadLetterNote(
                    reason,
                    item.attempt,
                    integration_id=item.task.integration_id,
                    target_id=item.task.target_id,
                    last_status=outcome.status,
                    last_error=outcome.error_code,
                ),
            )
        except DependencyUnavailable:
            line.update(outcome=audit.LEFT_FOR_REDELIVERY, dlqReason=reason.value)
            batch.fail(item.record)
            return
        line.update(outcome=audit.DEAD_LETTERED, dlqReason=reason.value)
        batch.metrics.count(Metric.DEAD_LETTERED, item.target.target_id)


def _attempt_line(item: Item, attempt: Attempt, batch: Batch) -> dict[str, Any]:
    line = audit.item_line(item, batch, attempt.started, attempt.finished, error=attempt.error)
    result = attempt.result
    if result is not None:  # what the endpoint answered, even when something else decided the outcome
        line.update(
            status=result.status,
            latencyMs=round(result.elapsed_ms, 3),
            encrypted=attempt.encrypted,
            responseBytes=len(result.body),
            responseTruncated=result.body_truncated,
        )
        if attempt.response_body is not None:
            line["responseBody"] = attempt.response_body
    return line

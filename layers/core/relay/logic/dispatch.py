"""The dispatcher: deliver one SQS batch of DeliveryTasks concurrently and settle every record.

For each batch:

1. parse each record; poison (unparseable body), unknown and disabled targets go to the DLQ at once;
2. group the records by target and read each target's breaker once (fail open if DynamoDB fails):
   closed → deliver; open → defer; reset timeout over → claim the single half-open probe with a
   conditional write (the loser defers);
3. send the probes first, then everything else, concurrently: a pool of DELIVERY_CONCURRENCY
   threads, at most PER_TARGET_CONCURRENCY in flight per target; once a target answers 410, none of
   its records still waiting starts (they are dead-lettered as target-gone without an attempt);
4. settle each record from its outcome (relay.logic.outcomes): delivered; retry scheduled with
   ChangeMessageVisibility and reported failed; dead-lettered by the dispatcher (permanent, gone,
   exhausted) and reported done; deferred (re-queued with DelaySeconds, attempts unchanged) and
   reported done;
5. fold each target's results into its breaker (one conditional write, only when something changed),
   write one audit object per target, flush the metrics, return ``batchItemFailures``.

A record is reported failed only when SQS should show it again: a scheduled retry, or a step that
could not be completed (then the redrive policy's maxReceiveCount is the backstop).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import chain, zip_longest
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from relay.adapters.audit import AuditSink, S3AuditSink
from relay.adapters.breaker_store import BreakerStore, DynamoBreakerStore
from relay.adapters.delivery_queue_ops import S3ClaimCheckReader, SqsDeliveryQueueOps
from relay.adapters.http import HttpSender
from relay.adapters.secrets import get_secret
from relay.adapters.target_store import TargetStore
from relay.errors import BreakerStoreUnavailable, ConfigurationError, DependencyUnavailable, UnreadableEvent
from relay.logic import breaker, crypto, retry
from relay.logic.delivery_metrics import BatchMetrics, Metric
from relay.logic.envelope import TargetSecrets, build_request
from relay.logic.outcomes import Outcome, Verdict, classify
from relay.logic.url_policy import UrlPolicy
from relay.models.breaker import BreakerState, Phase, target_key
from relay.models.delivery import DeliveryTask, DlqReason, check_event_json
from relay.models.secrets import RotatingSecret
from relay.models.targets import Target
from relay.observability import logger
from relay.settings import Settings, get_settings

SecretReader = Callable[[str], RotatingSecret]

# Audit outcomes.
DELIVERED = "delivered"
RETRY_SCHEDULED = "retry-scheduled"
DEAD_LETTERED = "dead-lettered"
DEFERRED = "deferred"
LEFT_FOR_REDELIVERY = "left-for-redelivery"  # a settle step failed: SQS shows it again

REDACTED = "[redacted]"
# Time kept back, beyond one request's timeouts, to settle records and write audit and metrics.
SETTLE_MARGIN_MS = 3_000


@dataclass(frozen=True)
class SqsRecord:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    message_attributes: Mapping[str, Any]

    @classmethod
    def from_event(cls, record: Mapping[str, Any]) -> SqsRecord:
        attributes = record.get("attributes") or {}
        try:
            receive_count = int(attributes.get("ApproximateReceiveCount", "1"))
        except (TypeError, ValueError):
            receive_count = 1
        return cls(
            message_id=str(record.get("messageId", "")),
            receipt_handle=str(record.get("receiptHandle", "")),
            body=str(record.get("body", "")),
            receive_count=receive_count,
            message_attributes=record.get("messageAttributes") or {},
        )

    @property
    def attempts_before(self) -> int:
        """Attempts made before this receive (earlier receives and earlier messages of a deferral chain)."""
        return retry.attempts_before(self.message_attributes) + max(0, self.receive_count - 1)


@dataclass
class Item:
    """One record on its way through the batch."""

    record: SqsRecord
    task: DeliveryTask
    target: Target
    key: str
    attempt: int
    outcome: Outcome | None = None
    probe: bool = False
    breaker_phase: str = "unknown"  # as read for this batch; "unknown" when the store failed


@dataclass
class Lane:
    """The records of one target in this batch and what its breaker said."""

    key: str
    target: Target
    items: list[Item]
    gate: breaker.Gate | None  # None: the breaker store failed (fail open, no writes)

    def __post_init__(self) -> None:
        for index, item in enumerate(self.items):
            item.probe = self.admission is breaker.Admission.PROBE and index == 0
            item.breaker_phase = self.gate.state.phase.value if self.gate else "unknown"

    @property
    def admission(self) -> breaker.Admission:
        return self.gate.admission if self.gate else breaker.Admission.DELIVER


@dataclass
class Batch:
    invocation_id: str
    started: datetime
    metrics: BatchMetrics
    # Milliseconds the invocation has left (Lambda's context.get_remaining_time_in_millis), if known.
    remaining_ms: Callable[[], int] | None = None
    failures: list[str] = field(default_factory=list)
    # Targets that answered 410 in this batch: no further request to them starts.
    gone: set[str] = field(default_factory=set)
    audit: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, record: SqsRecord) -> None:
        with self.lock:
            self.failures.append(record.message_id)

    def log(self, target_id: str, line: dict[str, Any]) -> None:
        with self.lock:
            self.audit[target_id].append(line)
        logger.info("delivery", extra={k: v for k, v in line.items() if k != "responseBody"})


class Dispatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        targets: TargetStore,
        http: HttpSender,
        queue: SqsDeliveryQueueOps,
        breakers: BreakerStore,
        audit: AuditSink | None,
        secrets: SecretReader = get_secret,
        claim_checks: S3ClaimCheckReader | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._targets = targets
        self._http = http
        self._queue = queue
        self._breakers = breakers
        self._audit = audit
        self._secrets = secrets
        self._claim_checks = claim_checks or S3ClaimCheckReader()
        self._clock = clock
        self._rng = rng or random.Random()
        self._keys = crypto.KeyCache()
        self._pool = ThreadPoolExecutor(
            max_workers=settings.delivery_concurrency, thread_name_prefix="deliver"
        )
        self._target_slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()

    # --- the batch ------------------------------------------------------------------------------------
    def handle_batch(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        invocation_id: str | None = None,
        remaining_ms: Callable[[], int] | None = None,
    ) -> dict[str, list[dict[str, str]]]:
        """Deliver a batch; ``remaining_ms`` (the Lambda context's clock) lets records that could not
        finish before the function times out be deferred instead of cut off mid-request."""
        batch = Batch(
            invocation_id=invocation_id or str(uuid.uuid4()),
            started=self._now(),
            metrics=BatchMetrics(
                namespace=self._settings.metrics_namespace, service=self._settings.service_name
            ),
            remaining_ms=remaining_ms,
        )
        lanes = self._lanes([SqsRecord.from_event(r) for r in records], batch)
        probes = [lane.items[0] for lane in lanes if lane.admission is breaker.Admission.PROBE]
        self._run([partial(self._deliver, item, batch) for item in probes])
        deliveries: list[list[Item]] = []
        deferrals: list[Callable[[], None]] = []
        for lane in lanes:
            go, wait_seconds, held = self._after_probes(lane)
            deliveries.append(go)
            deferrals.extend(partial(self._defer, item, wait_seconds, batch) for item in held)
        self._run([partial(self._deliver, item, batch) for item in self._interleave(deliveries)] + deferrals)
        for lane in lanes:
            self._record_breaker(lane, batch)
        self._write_audit(batch)
        batch.metrics.flush()
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in batch.failures]}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # --- 1. parse and resolve -------------------------------------------------------------------------
    def _lanes(self, records: list[SqsRecord], batch: Batch) -> list[Lane]:
        grouped: dict[str, list[Item]] = {}
        for record in records:
            item = self._resolve(record, batch)
            if item is not None:
                grouped.setdefault(item.key, []).append(item)
        # One breaker read per target, the targets' reads side by side.
        return list(self._pool.map(lambda entry: self._admit(entry[0], entry[1], batch), grouped.items()))

    def _resolve(self, record: SqsRecord, batch: Batch) -> Item | None:
        try:
            task = DeliveryTask.model_validate_json(record.body)
        except ValidationError:
            self._dead_letter_unattempted(record, None, DlqReason.POISON, "body is not a DeliveryTask", batch)
            return None
        try:
            target = self._targets.get_target(task.integration_id, task.target_id)
        except DependencyUnavailable as exc:
            logger.warning(
                "targets table unavailable", extra={"messageId": record.message_id, "error": str(exc)}
            )
            batch.fail(record)
            return None
        if target is None:
            self._dead_letter_unattempted(record, task, DlqReason.UNKNOWN_TARGET, "no such target", batch)
            return None
        if not target.enabled:
            why = "target is disabled"
            self._dead_letter_unattempted(record, task, DlqReason.TARGET_DISABLED, why, batch)
            return None
        return Item(
            record=record,
            task=task,
            target=target,
            key=target_key(task.integration_id, task.target_id),
            attempt=record.attempts_before + 1,
        )

    # --- 2. the breaker -------------------------------------------------------------------------------
    def _policy(self, target: Target) -> breaker.BreakerPolicy:
        connect, read = self._timeouts(target)
        return breaker.BreakerPolicy(
            failure_threshold=self._settings.breaker_failure_threshold,
            reset_seconds=self._settings.breaker_reset_seconds,
            max_reset_seconds=self._settings.breaker_max_reset_seconds,
            # The probe's lease outlives its request; after it, another dispatcher may probe.
            probe_lease_seconds=connect + read + 5.0,
        )

    def _admit(self, key: str, items: list[Item], batch: Batch) -> Lane:
        target = items[0].target
        try:
            gate = breaker.open_gate(self._breakers, key, self._clock(), self._policy(target))
        except BreakerStoreUnavailable as exc:
            logger.warning(
                "breaker store unavailable: failing open", extra={"targetKey": key, "error": str(exc)}
            )
            batch.metrics.breaker_store_unavailable()
            return Lane(key, target, items, None)
        if gate.admission is breaker.Admission.PROBE:
            batch.metrics.count(Metric.BREAKER_HALF_OPENED, target.target_id)
        return Lane(key, target, items, gate)

    def _after_probes(self, lane: Lane) -> tuple[list[Item], float, list[Item]]:
        """(items to deliver now, seconds until the breaker may half-open, items to defer)."""
        if lane.gate is None or lane.admission is breaker.Admission.DELIVER:
            return lane.items, 0.0, []
        if lane.admission is breaker.Admission.DEFER:
            return [], lane.gate.defer_until - self._clock(), lane.items
        rest = lane.items[1:]
        probe = lane.items[0].outcome
        if probe is not None and probe.status is not None and not probe.endpoint_unhealthy:
            return rest, 0.0, []  # the endpoint answered: the breaker closes, the rest may go now
        return [], self._policy(lane.target).reset_after(lane.gate.state.trips + 1), rest

    def _record_breaker(self, lane: Lane, batch: Batch) -> None:
        if lane.gate is None:
            return
        if lane.admission is breaker.Admission.PROBE and not _reached(lane.items[0]):
            return  # the probe never reached the endpoint; its lease will lapse
        healthy = [
            not item.outcome.endpoint_unhealthy for item in lane.items if item.outcome and _reached(item)
        ]
        try:
            written = breaker.report(
                self._breakers, lane.key, lane.gate, healthy, self._clock(), self._policy(lane.target)
            )
        except BreakerStoreUnavailable:
            batch.metrics.breaker_store_unavailable()
            return
        if written is not None:
            self._count_transition(*written, lane.target.target_id, batch)

    @staticmethod
    def _count_transition(old: BreakerState, new: BreakerState, target_id: str, batch: Batch) -> None:
        if new.phase is Phase.OPEN and old.phase is not Phase.OPEN:
            batch.metrics.count(Metric.BREAKER_OPENED, target_id)
            logger.warning(
                "breaker opened", extra={"targetId": target_id, "until": new.until, "trips": new.trips}
            )
        elif new.phase is Phase.CLOSED and old.phase is not Phase.CLOSED:
            batch.metrics.count(Metric.BREAKER_CLOSED, target_id)
            logger.info("breaker closed", extra={"targetId": target_id})

    # --- 3. deliver -----------------------------------------------------------------------------------
    @staticmethod
    def _interleave(per_lane: Iterable[list[Item]]) -> list[Item]:
        """Round-robin across targets, so one busy target's cap does not hold the pool's head."""
        return [item for item in chain.from_iterable(zip_longest(*per_lane)) if item is not None]

    def _run(self, tasks: list[Callable[[], None]]) -> None:
        futures: list[Future[None]] = [self._pool.submit(task) for task in tasks]
        wait(futures)
        for future in futures:
            if future.exception() is not None:  # a bug, not an outcome: let SQS show the record again
                logger.exception("delivery crashed", exc_info=future.exception())

    def _slot(self, key: str) -> threading.BoundedSemaphore:
        with self._slots_lock:
            slot = self._target_slots.get(key)
            if slot is None:
                slot = self._target_slots[key] = threading.BoundedSemaphore(
                    self._settings.per_target_concurrency
                )
            return slot

    def _timeouts(self, target: Target) -> tuple[float, float]:
        return (
            target.connect_timeout_seconds or self._settings.connect_timeout_seconds,
            target.read_timeout_seconds or self._settings.read_timeout_seconds,
        )

    def _deliver(self, item: Item, batch: Batch) -> None:
        try:
            with self._slot(item.key):
                if item.key in batch.gone:
                    # Its endpoint said 410 while this record waited: it is gone for this one too.
                    why = "target answered 410 Gone earlier in this batch"
                    self._dead_letter_unattempted(item.record, item.task, DlqReason.TARGET_GONE, why, batch)
                    return
                if self._out_of_time(item, batch):
                    # A Lambda timeout would fail the whole batch and cost every record a receive:
                    # hand this one back untouched instead (no attempt used).
                    self._defer(item, 0, batch, error_code="out-of-time")
                    return
                self._attempt(item, batch)
        except Exception:
            batch.fail(item.record)
            raise

    def _attempt(self, item: Item, batch: Batch) -> None:
        started = self._now()
        target, task = item.target, item.task
        secrets: TargetSecrets | None = None
        try:
            event_json = task.inline_event_json()
            if event_json is None and task.event_ref is not None:
                event_json = self._claim_checks.load(task.event_ref)
            if event_json is None:
                raise UnreadableEvent("task has neither eventJson nor eventRef")
            # Sent as it is, never re-encoded: it must be what the intake let in, a JSON object.
            check_event_json(event_json)
            secrets = self._target_secrets(target)
            request = build_request(task, event_json, target, secrets, key_cache=self._keys, now=started)
        except (ConfigurationError, DependencyUnavailable) as exc:
            code = "configuration" if isinstance(exc, ConfigurationError) else "dependency-unavailable"
            item.outcome = Outcome(Verdict.RETRYABLE, None, code)
            self._settle(item, batch, _line(item, batch, started, self._now(), error=str(exc)))
            return
        except UnreadableEvent:
            self._dead_letter_unattempted(item.record, task, DlqReason.POISON, "event unreadable", batch)
            return
        connect, read = self._timeouts(target)
        result = self._http.send(
            request.method,
            request.url,
            body=request.body,
            headers=request.headers,
            connect_timeout=connect,
            read_timeout=read,
        )
        finished = self._now()
        item.outcome = classify(result, now=finished)
        batch.metrics.latency(target.target_id, result.elapsed_ms)
        line = _line(item, batch, started, finished, error=result.error)
        line.update(
            latencyMs=round(result.elapsed_ms, 3),
            encrypted=request.encrypted,
            responseBytes=len(result.body),
            responseTruncated=result.body_truncated,
        )
        if not request.encrypted:  # never keep what an encrypted target may echo back in clear
            line["responseBody"] = _scrub(result.body.decode("utf-8", "replace"), secrets)
        self._settle(item, batch, line)

    def _out_of_time(self, item: Item, batch: Batch) -> bool:
        """Too little time left for one request: its total deadline (HttpSender's default budget,
        connect + read timeout) plus the margin to settle."""
        if batch.remaining_ms is None:
            return False
        connect, read = self._timeouts(item.target)
        return batch.remaining_ms() < (connect + read) * 1000 + SETTLE_MARGIN_MS

    def _target_secrets(self, target: Target) -> TargetSecrets:
        def read(name: str | None) -> RotatingSecret | None:
            return self._secrets(name) if name else None

        return TargetSecrets(
            signing=read(target.signing_secret_name),
            auth=read(target.security.secret_name),
            encryption=read(target.encryption_key_name),
        )

    # --- 4. settle --------------------------------------------------------------------------------------
    def _settle(self, item: Item, batch: Batch, line: dict[str, Any]) -> None:
        outcome = item.outcome
        assert outcome is not None
        target_id = item.target.target_id
        if outcome.verdict is Verdict.GONE:
            with batch.lock:  # first, before any I/O, so none of this target's waiting records starts
                batch.gone.add(item.key)
        if outcome.verdict is Verdict.DELIVERED:
            batch.metrics.count(Metric.DELIVERED, target_id)
            line["outcome"] = DELIVERED
        else:
            batch.metrics.count(Metric.DELIVERY_FAILED, target_id)
            if outcome.verdict is Verdict.RETRYABLE and not retry.exhausted(
                item.target.retry_matrix, item.attempt, max_receive_count=self._settings.max_receive_count
            ):
                self._schedule_retry(item, outcome, batch, line)
            else:
                reason = {
                    Verdict.RETRYABLE: DlqReason.EXHAUSTED,
                    Verdict.GONE: DlqReason.TARGET_GONE,
                }.get(outcome.verdict, DlqReason.PERMANENT_STATUS)
                if outcome.verdict is Verdict.GONE:
                    self._disable(item)
                self._dead_letter(item, reason, outcome, batch, line)
        batch.log(target_id, line)

    def _schedule_retry(self, item: Item, outcome: Outcome, batch: Batch, line: dict[str, Any]) -> None:
        delay = retry.retry_delay_seconds(
            item.target.retry_matrix,
            item.attempt,
            rng=self._rng,
            retry_after_seconds=outcome.retry_after_seconds,
            max_delay_seconds=self._settings.max_retry_delay_seconds,
        )
        try:
            self._queue.schedule_retry(item.record.receipt_handle, delay)
            line.update(outcome=RETRY_SCHEDULED, retryInSeconds=delay)
        except DependencyUnavailable:
            line.update(outcome=RETRY_SCHEDULED, retryInSeconds=None)  # the queue's own visibility timeout
        batch.metrics.count(Metric.RETRIED, item.target.target_id)
        batch.fail(item.record)

    def _disable(self, item: Item) -> None:
        try:
            self._targets.set_target_enabled(item.task.integration_id, item.task.target_id, False)
            logger.warning("target disabled: it answered 410 Gone", extra={"targetId": item.target.target_id})
        except Exception as exc:  # the DLQ send below matters more than the flag
            logger.warning(
                "could not disable target", extra={"targetId": item.target.target_id, "error": repr(exc)}
            )

    def _dead_letter(
        self, item: Item, reason: str, outcome: Outcome, batch: Batch, line: dict[str, Any]
    ) -> None:
        try:
            self._queue.dead_letter(
                item.record.body,
                item.record.message_attributes,
                reason=reason,
                attempts=item.attempt,
                integration_id=item.task.integration_id,
                target_id=item.task.target_id,
                last_status=outcome.status,
                last_error=outcome.error_code,
            )
        except DependencyUnavailable:
            line.update(outcome=LEFT_FOR_REDELIVERY, dlqReason=reason)
            batch.fail(item.record)
            return
        line.update(outcome=DEAD_LETTERED, dlqReason=reason)
        batch.metrics.count(Metric.DEAD_LETTERED, item.target.target_id)

    def _dead_letter_unattempted(
        self, record: SqsRecord, task: DeliveryTask | None, reason: str, why: str, batch: Batch
    ) -> None:
        target_id = task.target_id if task else None
        try:
            self._queue.dead_letter(
                record.body,
                record.message_attributes,
                reason=reason,
                attempts=record.attempts_before,
                integration_id=task.integration_id if task else None,
                target_id=target_id,
                last_status=None,
                last_error=why,
            )
        except DependencyUnavailable:
            logger.warning("DLQ unavailable", extra={"messageId": record.message_id, "reason": reason})
            batch.fail(record)
            return
        logger.warning(
            "dead-lettered without an attempt", extra={"messageId": record.message_id, "reason": reason}
        )
        if target_id:
            batch.metrics.count(Metric.DEAD_LETTERED, target_id)
            now = self._now()
            batch.log(
                target_id,
                {
                    **_base_line(record, task, batch, now, now),
                    "outcome": DEAD_LETTERED,
                    "dlqReason": reason,
                    "errorCode": reason,
                },
            )

    def _defer(
        self, item: Item, seconds_until_probe: float, batch: Batch, *, error_code: str = "breaker-open"
    ) -> None:
        delay = retry.deferral_delay_seconds(seconds_until_probe, rng=self._rng)
        now = self._now()
        line = _line(item, batch, now, now, error=None)
        line.update(attempt=None, deferredSeconds=delay, errorCode=error_code)
        try:
            self._queue.defer(
                item.record.body,
                item.record.message_attributes,
                attempts=item.record.attempts_before,
                deferrals=retry.deferrals_before(item.record.message_attributes) + 1,
                delay_seconds=delay,
            )
            line["outcome"] = DEFERRED
            batch.metrics.count(Metric.DEFERRED, item.target.target_id)
        except DependencyUnavailable:
            # Could not re-queue: keep the message hidden until the breaker may half-open instead.
            try:
                self._queue.schedule_retry(item.record.receipt_handle, delay)
            except DependencyUnavailable:
                pass
            line["outcome"] = LEFT_FOR_REDELIVERY
            batch.fail(item.record)
        batch.log(item.target.target_id, line)

    # --- 5. audit -------------------------------------------------------------------------------------
    def _write_audit(self, batch: Batch) -> None:
        if self._audit is None:
            return
        date = batch.started.strftime("%Y-%m-%d")
        for target_id, lines in batch.audit.items():
            try:
                self._audit.write(date, target_id, batch.invocation_id, lines)
            except DependencyUnavailable as exc:
                logger.warning("audit object not written", extra={"targetId": target_id, "error": str(exc)})


def _reached(item: Item) -> bool:
    """The attempt got as far as an HTTP answer or a network failure: what the breaker judges."""
    return item.outcome is not None and item.outcome.reached_endpoint


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _base_line(
    record: SqsRecord, task: DeliveryTask | None, batch: Batch, started: datetime, finished: datetime
) -> dict[str, Any]:
    return {
        "invocationId": batch.invocation_id,
        "messageId": record.message_id,
        "deliveryId": str(task.delivery_id) if task else None,
        "eventId": task.event_id if task else None,
        "integrationId": task.integration_id if task else None,
        "targetId": task.target_id if task else None,
        "startedAt": _iso(started),
        "finishedAt": _iso(finished),
    }


def _line(
    item: Item, batch: Batch, started: datetime, finished: datetime, *, error: str | None
) -> dict[str, Any]:
    outcome = item.outcome
    return {
        **_base_line(item.record, item.task, batch, started, finished),
        "urlHost": urlsplit(item.target.url).hostname,
        "attempt": item.attempt,
        "probe": item.probe,
        "status": outcome.status if outcome else None,
        "latencyMs": None,
        "outcome": None,
        "errorCode": outcome.error_code if outcome else None,
        "error": error,
        "breakerState": Phase.HALF_OPEN.value if item.probe else item.breaker_phase,
    }


def _scrub(text: str, secrets: TargetSecrets | None) -> str:
    """Remove the target's own secret values from a response body an endpoint may have echoed."""
    if secrets is None:
        return text
    for secret in (secrets.auth, secrets.signing):
        for value in secret.values() if secret else []:
            if len(value) >= 4:
                text = text.replace(value, REDACTED)
    return text


_container: tuple[Settings, Dispatcher] | None = None
_container_lock = threading.Lock()


def container_dispatcher() -> Dispatcher:
    """The dispatcher of this container: session, pools and caches built once and reused by every batch.

    Rebuilt when the settings object changes (``get_settings.cache_clear()`` after the environment
    changed, as the tests and the local stack do), so it never points at stale tables or queues.
    """
    global _container
    settings = get_settings()
    with _container_lock:
        if _container is None or _container[0] is not settings:
            if _container is not None:
                _container[1].close()
            _container = (settings, build_dispatcher(settings))
        return _container[1]


def build_dispatcher(settings: Settings, **overrides: Any) -> Dispatcher:
    """A dispatcher wired to the deployment's resources; ``overrides`` replace any dependency
    (tests and benchmarks inject clocks, clients and in-memory stores this way)."""
    factories: dict[str, Callable[[], Any]] = {
        "targets": lambda: TargetStore(
            settings.need("targets_table"), cache_ttl_seconds=settings.target_cache_ttl_seconds
        ),
        "http": lambda: HttpSender(
            pool_size=settings.delivery_concurrency,
            body_limit_bytes=settings.response_body_limit_bytes,
            endpoint_check=UrlPolicy.from_settings(settings).check_endpoint,
        ),
        "queue": lambda: SqsDeliveryQueueOps(
            settings.need("delivery_queue_url"), settings.need("dead_letter_queue_url")
        ),
        "breakers": lambda: DynamoBreakerStore(settings.need("breaker_table")),
        "audit": lambda: S3AuditSink(settings.audit_bucket) if settings.audit_bucket else None,
    }
    parts: dict[str, Any] = {name: make() for name, make in factories.items() if name not in overrides}
    parts.update(overrides)
    return Dispatcher(settings=settings, **parts)

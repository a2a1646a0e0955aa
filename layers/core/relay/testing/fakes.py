"""In-memory implementations of the ports in relay.ports (see relay.testing)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from pydantic import SecretStr

from relay.adapters.audit import audit_key, audit_prefix, to_jsonl
from relay.adapters.idempotency import DEFAULT_LEASE_SECONDS, STATUS_COMPLETED, STATUS_IN_PROGRESS
from relay.errors import (
    BreakerStoreUnavailable,
    ClaimCheckMissing,
    DependencyUnavailable,
    MoveTaskUnavailable,
    RateLimitStoreUnavailable,
    SecretNotFound,
    TokenUnavailable,
    UnreadableEvent,
)
from relay.json_input import json_spellings
from relay.models.archive import ARCHIVE_PREFIX, ArchiveRecord, FoundRecords, archive_key, read_records
from relay.models.breaker import BreakerState, LaneState
from relay.models.delivery import DeadLetterNote, S3Ref
from relay.models.http import HttpResult
from relay.models.idempotency import Claim
from relay.models.queue import (
    MAX_BATCH_ENTRIES,
    GroupPlacement,
    MoveTaskStatus,
    OrderedTask,
    OutgoingMessage,
    ReceivedMessage,
    Requeue,
)
from relay.models.rate_limit import BucketAnswer, BucketState
from relay.models.secrets import RotatingSecret
from relay.models.targets import Target, UnreadableTarget


class InMemoryDeliveryQueue:
    """The intake's task queue: the bodies it was given, in order."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def send(self, bodies: Sequence[str]) -> None:
        self.bodies.extend(bodies)


class InMemoryOrderedQueue:
    """The intake's ordered task queue: the tasks it was given, in order."""

    def __init__(self) -> None:
        self.tasks: list[OrderedTask] = []

    def send_ordered(self, tasks: Sequence[OrderedTask]) -> None:
        self.tasks.extend(tasks)


class InMemoryFirstHop:
    """The intake's FIFO first hop: every task sent (``sent``, in order) and the ones SQS keeps
    (``tasks``): a repeat of a deduplication id is dropped, as SQS does within its 5-minute window.
    ``unavailable``: every send fails as SQS down would."""

    def __init__(self) -> None:
        self.sent: list[OrderedTask] = []
        self.tasks: list[OrderedTask] = []
        self.unavailable = False

    def send_first_hop(self, tasks: Sequence[OrderedTask]) -> None:
        if self.unavailable:
            raise DependencyUnavailable("first hop unavailable")
        kept = {task.placement.deduplication_id for task in self.tasks}
        for task in tasks:
            self.sent.append(task)
            if task.placement.deduplication_id not in kept:
                kept.add(task.placement.deduplication_id)
                self.tasks.append(task)


class InMemoryClaimCheckStore:
    """Claim checks in process memory: what the intake puts, the dispatcher loads."""

    def __init__(self, bucket: str = "in-memory") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, body: bytes) -> S3Ref:
        self.objects[key] = body
        return S3Ref(bucket=self.bucket, key=key)

    def load(self, ref: S3Ref) -> str:
        if ref.key not in self.objects:
            raise ClaimCheckMissing(f"claim check {ref.key} is gone (expired or deleted)")
        try:
            return self.objects[ref.key].decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableEvent("the claim-checked event is not UTF-8") from None


class CountingMetrics:
    """The MetricsRecorder port, counting: ``counts`` by (name, reason); per-target counts also by
    (name, target, reason) in ``per_target``."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str | None], int] = {}
        self.per_target: dict[tuple[str, str, str | None], int] = {}

    def count(
        self, name: str, value: int = 1, *, reason: str | None = None, target: str | None = None
    ) -> None:
        self.counts[(name, reason)] = self.counts.get((name, reason), 0) + value
        if target is not None:
            key = (name, target, reason)
            self.per_target[key] = self.per_target.get(key, 0) + value


class InMemoryIdempotencyStore:
    """The same semantics as the DynamoDB store in process memory (one container). ``writes`` counts
    claims, completions and releases, as DynamoDB would bill them."""

    def __init__(
        self,
        *,
        ttl_seconds: int = 3_600,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl_seconds
        self._lease = lease_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (status, expiration, lease expiry, token, data)
        self.records: dict[str, tuple[str, float, float, str, str | None]] = {}
        self.writes = 0

    def claim(self, key: str) -> Claim:
        now = self._clock()
        with self._lock:
            self.writes += 1  # a conditional write is billed whether or not it passes
            record = self.records.get(key)
            if record is not None and record[1] >= now:
                status, _, lease_expiry, _, data = record
                if status == STATUS_COMPLETED:
                    return Claim(key=key, state="completed", response=data)
                if lease_expiry >= now:
                    return Claim(key=key, state="in_progress")
            token = uuid.uuid4().hex
            self.records[key] = (STATUS_IN_PROGRESS, now + self._ttl, now + self._lease, token, None)
        return Claim(key=key, state="acquired", token=token)

    def complete(self, claim: Claim, response: str) -> None:
        with self._lock:
            self.writes += 1
            record = self.records.get(claim.key)
            if record is not None and record[3] == claim.token:
                self.records[claim.key] = (STATUS_COMPLETED, record[1], record[2], record[3], response)

    def release(self, claim: Claim) -> None:
        with self._lock:
            self.writes += 1
            record = self.records.get(claim.key)
            if record is not None and record[3] == claim.token:
                del self.records[claim.key]


class InMemoryBreakerStore:
    """Same conditional semantics as the DynamoDB store, in one process: the breaker and the lane of a
    key are versioned and written apart, and a breaker's failure times are read through the same rule
    (``BreakerState.failure_run``). Counts calls for benchmarks; ``unavailable`` makes every call
    fail as DynamoDB down would."""

    def __init__(self) -> None:
        self._states: dict[str, BreakerState] = {}
        self._lanes: dict[str, LaneState] = {}
        self._retry_after_until: dict[str, float] = {}  # an attribute of its own, as in the table
        self._lock = threading.Lock()
        self.reads = 0
        self.writes = 0
        self.unavailable = False

    def load(self, key: str) -> BreakerState:
        return self.load_with_lane(key)[0]

    def load_with_lane(self, key: str) -> tuple[BreakerState, LaneState]:
        with self._lock:
            self._check()
            self.reads += 1
            lane = replace(
                self._lanes.get(key, LaneState()), retry_after_until=self._retry_after_until.get(key, 0.0)
            )
            return self._states.get(key, BreakerState()), lane

    def save(self, key: str, state: BreakerState, *, expected_version: int) -> bool:
        return self._swap(self._states, key, state, expected_version)

    def save_lane(self, key: str, lane: LaneState, *, expected_version: int) -> bool:
        return self._swap(self._lanes, key, lane, expected_version)

    def mark_retry_after(self, key: str, until: float) -> None:
        with self._lock:
            self._check()
            self.writes += 1
            self._retry_after_until[key] = max(until, self._retry_after_until.get(key, 0.0))

    def lift_retry_after(self, key: str, *, seen: float) -> bool:
        with self._lock:
            self._check()
            self.writes += 1
            if not 0.0 < self._retry_after_until.get(key, 0.0) <= seen:
                return False
            del self._retry_after_until[key]
            return True

    def _swap[V: (BreakerState, LaneState)](
        self, stored: dict[str, V], key: str, value: V, expected_version: int
    ) -> bool:
        """One conditional write: ``value`` if the stored one's version is still ``expected_version``."""
        with self._lock:
            self._check()
            self.writes += 1
            current = stored.get(key)
            if (current.version if current else 0) != expected_version:
                return False
            stored[key] = value
            return True

    def _check(self) -> None:
        if self.unavailable:
            raise BreakerStoreUnavailable("breaker table unreadable (in-memory store set unavailable)")


class InMemoryRateLimitStore:
    """Target buckets with the DynamoDB store's conditional semantics, in one process. Counts writes for
    tests and benchmarks; ``unavailable`` makes every call fail as DynamoDB down would."""

    def __init__(self) -> None:
        self.buckets: dict[str, BucketState] = {}
        self._lock = threading.Lock()
        self.writes = 0
        self.unavailable = False

    def load(self, key: str) -> BucketState | None:
        with self._lock:
            self._check()
            return self.buckets.get(key)

    def take(
        self, key: str, *, now: float, count: int, cost: float, idle: bool, latest: float
    ) -> BucketAnswer:
        def fits(state: BucketState) -> bool:
            if state.floor_until > now:
                return False
            if idle:
                return state.booked_until < now
            return now <= state.booked_until <= latest

        return self._write(
            key,
            fits,
            lambda state: replace(state, booked_until=(now if idle else state.booked_until) + count * cost),
        )

    def cut(
        self, key: str, *, now: float, rate: float, floor_until: float, seen_cut_at: float | None
    ) -> BucketAnswer:
        def unchanged(state: BucketState) -> bool:
            return (state.cut_at if state.cut_rate is not None else None) == seen_cut_at

        return self._write(
            key, unchanged, lambda state: replace(state, cut_rate=rate, cut_at=now, floor_until=floor_until)
        )

    def join(
        self, key: str, *, now: float, contribution: float, floor_until: float, fresh_since: float
    ) -> BucketAnswer:
        def fresh(state: BucketState) -> bool:
            return state.cut_rate is None or state.cut_at >= fresh_since

        def joined(state: BucketState) -> BucketState:
            if state.cut_rate is None:
                return replace(state, cut_rate=contribution, cut_at=now, floor_until=floor_until)
            return replace(state, cut_rate=state.cut_rate + contribution, floor_until=floor_until)

        return self._write(key, fresh, joined)

    def raise_floor(self, key: str, *, floor_until: float) -> BucketAnswer:
        return self._write(
            key,
            lambda state: state.floor_until < floor_until,
            lambda state: replace(state, floor_until=floor_until),
        )

    def lift_floor(self, key: str, *, seen: float) -> BucketAnswer:
        return self._write(
            key,
            lambda state: 0.0 < state.floor_until <= seen,
            lambda state: replace(state, floor_until=0.0),
        )

    def _write(
        self,
        key: str,
        condition: Callable[[BucketState], bool],
        change: Callable[[BucketState], BucketState],
    ) -> BucketAnswer:
        with self._lock:
            self._check()
            self.writes += 1
            stored = self.buckets.get(key)
            if not condition(stored or BucketState()):
                return BucketAnswer(False, stored)
            self.buckets[key] = new = change(stored or BucketState())
            return BucketAnswer(True, new)

    def _check(self) -> None:
        if self.unavailable:
            raise RateLimitStoreUnavailable("rate-limit bucket unreadable (in-memory store set unavailable)")


class InMemoryAuditSink:
    """Audit objects in process memory, under the keys the S3 sink would use; an AuditReader too.
    ``unavailable`` fails writes and reads as S3 down would."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.unavailable = False

    def write(
        self, date: str, target_id: str, invocation_id: str, records: Sequence[Mapping[str, Any]]
    ) -> None:
        if self.unavailable:
            raise DependencyUnavailable("audit bucket unwritable (in-memory sink set unavailable)")
        self.objects[audit_key(date, target_id, invocation_id)] = to_jsonl(records)

    def lines(
        self, dates: Sequence[str], *, containing: str | tuple[str, ...], target: str | None = None
    ) -> list[dict[str, Any]]:
        if self.unavailable:
            raise DependencyUnavailable("audit bucket unreadable (in-memory sink set unavailable)")
        prefixes = tuple(audit_prefix(date, target) for date in dates)
        return [json.loads(line) for line in _lines_under(self.objects, prefixes, containing)]


class InMemoryEventArchive:
    """Archive objects in process memory, under the S3 archive's keys; an ArchiveReader too. Claim
    checks named in ``expired`` are gone, as the events/ lifecycle rule would have them."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.expired: set[S3Ref] = set()
        self.unavailable = False

    def write(self, date: str, invocation_id: str, records: Sequence[ArchiveRecord]) -> None:
        if self.unavailable:
            raise DependencyUnavailable("audit bucket unwritable (in-memory archive set unavailable)")
        self.objects[archive_key(date, invocation_id)] = b"".join(r.to_line() for r in records)

    def records(self, dates: Sequence[str], *, containing: str | tuple[str, ...]) -> FoundRecords:
        prefixes = tuple(f"{ARCHIVE_PREFIX}date={date}/" for date in dates)
        return read_records(_lines_under(self.objects, prefixes, containing))

    def claim_check_exists(self, ref: S3Ref) -> bool:
        return ref not in self.expired


def _lines_under(
    objects: Mapping[str, bytes], prefixes: tuple[str, ...], containing: str | tuple[str, ...]
) -> list[str]:
    """The lines holding ``containing`` (as it is or JSON-escaped, as the S3 readers search) of the
    objects under ``prefixes``, in key order."""
    spellings = json_spellings(containing)
    return [
        line
        for key, body in sorted(objects.items())
        if key.startswith(prefixes)
        for line in body.decode().splitlines()
        if any(spelling in line for spelling in spellings)
    ]


class ManualClock:
    """Epoch seconds that move only when told (``clock.now += 30``); a ``Clock`` port. ``sleep`` moves
    it as a real sleep would move the real clock (for code that paces itself)."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class InMemoryTargets:
    """The dispatcher's target directory over a dict; ``unavailable`` fails reads as DynamoDB down
    would, ``writes_unavailable`` fails the disable write; ``unreadable`` maps (integration, target)
    to a record's fields at fault, read as a record this release cannot validate."""

    def __init__(self, *targets: Target) -> None:
        self.targets = {(t.integration_id, t.target_id): t for t in targets}
        self.unavailable = False
        self.writes_unavailable = False
        self.disabled: list[tuple[str, str]] = []
        self.unreadable: dict[tuple[str, str], str] = {}

    def get_target(self, integration_id: str, target_id: str) -> Target | None:
        if self.unavailable:
            raise DependencyUnavailable("targets table unavailable (in-memory targets set unavailable)")
        reason = self.unreadable.get((integration_id, target_id))
        if reason is not None:
            raise UnreadableTarget(integration_id, target_id, reason, None).error()
        return self.targets.get((integration_id, target_id))

    def set_target_enabled(self, integration_id: str, target_id: str, enabled: bool) -> bool:
        if self.writes_unavailable:
            raise DependencyUnavailable("targets table unwritable (in-memory targets set unavailable)")
        target = self.targets.get((integration_id, target_id))
        if not enabled:
            self.disabled.append((integration_id, target_id))
        if target is None or target.enabled is enabled:
            return False
        self.targets[(integration_id, target_id)] = target.model_copy(update={"enabled": enabled})
        return True


class InMemorySecrets:
    """A secret reader over a dict: a name it lacks is SecretNotFound (as a missing secret is);
    ``unavailable`` fails every read as Secrets Manager down would."""

    def __init__(self, secrets: Mapping[str, RotatingSecret] | None = None) -> None:
        self.secrets = dict(secrets or {})
        self.unavailable = False
        self.distrusted: list[str] = []  # names the dispatcher said proved unusable, in order

    def distrust(self, name: str) -> None:
        self.distrusted.append(name)  # a dict holds no stale copy: the next read sees any change

    def __call__(self, name: str) -> RotatingSecret:
        if self.unavailable:
            raise DependencyUnavailable(f"Secrets Manager unavailable reading {name}")
        try:
            return self.secrets[name]
        except KeyError:
            raise SecretNotFound(f"secret {name} does not exist") from None


class ScriptedHttp:
    """An HTTP client port that answers from a script instead of the network.

    ``answer(method, url, headers, body) -> HttpResult`` decides each answer (by default 200); every
    request is recorded in ``requests`` (method, url, headers, body) in the order it was sent.
    """

    def __init__(
        self, answer: Callable[[str, str, Mapping[str, str], bytes], HttpResult] | None = None
    ) -> None:
        self._answer = answer or (lambda method, url, headers, body: HttpResult(200, 1.0))
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.client_certificates: list[SecretStr | None] = []  # what each request presented (mTLS)
        self.timeouts: list[tuple[float, float]] = []  # each request's (connect, read) timeouts
        self.closed = False

    def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float | None = None,
        client_certificate: SecretStr | None = None,
    ) -> HttpResult:
        with self._lock:
            self.requests.append((method, url, dict(headers), body))
            self.client_certificates.append(client_certificate)
            self.timeouts.append((connect_timeout, read_timeout))
        return self._answer(method, url, headers, body)

    def close(self) -> None:
        self.closed = True


class ScriptedTokens:
    """OAuth access tokens in memory: ``token-1``, ``token-2``, ... per target, a new one only when
    the current one is refused. ``failure`` (a message) makes every call raise TokenUnavailable (with
    ``retry_after`` as the endpoint's Retry-After), ``refresh_failure`` only the calls that refuse a
    token; ``calls`` records (target id, the refused token or None) in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued = 0
        self.current: dict[str, str] = {}
        self.calls: list[tuple[str, str | None]] = []
        self.failure: str | None = None
        self.retry_after: str | None = None
        self.refresh_failure: str | None = None
        # Called with each token request, before it answers: a test's clock moved by what it took.
        self.before_answer: Callable[[], None] = lambda: None

    def token(
        self,
        target: Target,
        client_secret: SecretStr,
        *,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        refused: SecretStr | None = None,
    ) -> SecretStr:
        self.before_answer()
        with self._lock:
            refused_value = refused.get_secret_value() if refused is not None else None
            self.calls.append((target.target_id, refused_value))
            failure = self.refresh_failure if refused is not None else None
            if self.failure is not None or failure is not None:
                raise TokenUnavailable(self.failure or failure or "", retry_after=self.retry_after)
            current = self.current.get(target.target_id)
            if current is None or current == refused_value:
                self._issued += 1
                current = self.current[target.target_id] = f"token-{self._issued}"
            return SecretStr(current)


class RecordingQueueOps:
    """The dispatcher's queue operations, recorded: ``retries`` (receipt handle, delay), ``deferrals``,
    ``dead_letters`` and ``slow_lane`` (dicts of what was asked). ``unavailable`` names the operations
    that fail as SQS down would ("schedule_retry", "defer", "dead_letter", "to_slow_lane")."""

    def __init__(self) -> None:
        self.retries: list[tuple[str, int]] = []
        self.deferrals: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.slow_lane: list[dict[str, Any]] = []
        self.unavailable: set[str] = set()
        self._lock = threading.Lock()

    def schedule_retry(self, receipt_handle: str, delay_seconds: int) -> None:
        self._check("schedule_retry")
        with self._lock:
            self.retries.append((receipt_handle, delay_seconds))

    def defer(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        *,
        attempts: int,
        deferrals: int,
        delay_seconds: int,
    ) -> None:
        self._check("defer")
        with self._lock:
            self.deferrals.append(
                {"body": body, "attempts": attempts, "deferrals": deferrals, "delay_seconds": delay_seconds}
            )

    def dead_letter(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        note: DeadLetterNote,
    ) -> None:
        self._check("dead_letter")
        with self._lock:
            self.dead_letters.append({"body": body, **asdict(note)})

    def to_slow_lane(self, messages: Sequence[Requeue]) -> set[int]:
        if "to_slow_lane" in self.unavailable:
            return set()
        with self._lock:
            self.slow_lane += [
                {"body": m.body, "attempts": m.attempts, "deferrals": m.deferrals} for m in messages
            ]
        return set(range(len(messages)))

    def _check(self, operation: str) -> None:
        if operation in self.unavailable:
            raise DependencyUnavailable(f"SQS {operation} failed (in-memory queue set unavailable)")


class RecordingOrderedQueueOps:
    """The ordered dispatcher's queue operations, recorded: ``holds`` (receipt handles, delay) in the
    order asked, ``deleted`` (receipt handles, a list per call), ``dead_letters`` (dicts of what was
    asked, with the group and deduplication id). ``unavailable`` names the operations that fail as SQS
    down would ("hold", "delete", "dead_letter_in_order")."""

    def __init__(self) -> None:
        self.holds: list[tuple[list[str], int]] = []
        self.deleted: list[list[str]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.unavailable: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, receipt_handles: Sequence[str], delay_seconds: int) -> None:
        self._check("hold")
        with self._lock:
            self.holds.append((list(receipt_handles), delay_seconds))

    def delete(self, receipt_handles: Sequence[str]) -> None:
        self._check("delete")
        with self._lock:
            self.deleted.append(list(receipt_handles))

    def dead_letter_in_order(
        self,
        placement: GroupPlacement,
        body: str,
        message_attributes: Mapping[str, Any],
        note: DeadLetterNote,
    ) -> None:
        self._check("dead_letter_in_order")
        with self._lock:
            self.dead_letters.append(
                {
                    "group_id": placement.group_id,
                    "deduplication_id": placement.deduplication_id,
                    "body": body,
                    **asdict(note),
                }
            )

    def _check(self, operation: str) -> None:
        if operation in self.unavailable:
            raise DependencyUnavailable(f"SQS {operation} failed (in-memory queue set unavailable)")


class InMemoryAttemptCounter:
    """Failed attempts per message id in process memory; ``unavailable`` fails every call."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.unavailable = False
        self._lock = threading.Lock()

    def failures(self, message_id: str) -> int:
        self._check()
        with self._lock:
            return self.counts.get(message_id, 0)

    def add_failure(self, message_id: str) -> int:
        self._check()
        with self._lock:
            self.counts[message_id] = self.counts.get(message_id, 0) + 1
            return self.counts[message_id]

    def _check(self) -> None:
        if self.unavailable:
            raise DependencyUnavailable("attempts table unavailable (in-memory counter set unavailable)")


class InMemoryDeadLetterQueues:
    """The SQS calls behind ``relay dlq`` over queues in process memory (``queues``: URL -> the messages
    in it). A received message stays hidden until it is released or deleted; there is no move task.
    ``unavailable`` names the operations that fail as SQS down would ("receive", "delete_batch", ...)."""

    def __init__(self) -> None:
        self.queues: dict[str, list[ReceivedMessage]] = {}
        self.unavailable: set[str] = set()
        self._hidden: set[str] = set()  # receipt handles of messages in hand

    def put(
        self, queue_url: str, body: str, attributes: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        message_id = str(uuid.uuid4())
        self.queues.setdefault(queue_url, []).append(
            ReceivedMessage(message_id, f"handle-{message_id}", body, attributes or {}, 1_000)
        )

    def bodies(self, queue_url: str) -> list[str]:
        return [message.body for message in self.queues.get(queue_url, [])]

    def queue_arn(self, queue_url: str) -> str:
        return f"arn:aws:sqs:us-east-1:123456789012:{queue_url.rsplit('/', 1)[-1]}"

    def approximate_depth(self, queue_url: str) -> int:
        self._check("approximate_depth")
        return len(self.queues.get(queue_url, []))

    def receive(self, queue_url: str, *, visibility_seconds: int, wait_seconds: int) -> list[ReceivedMessage]:
        self._check("receive")
        visible = [m for m in self.queues.get(queue_url, []) if m.receipt_handle not in self._hidden]
        taken = visible[:MAX_BATCH_ENTRIES]
        self._hidden.update(m.receipt_handle for m in taken)
        return taken

    def send_batch(self, queue_url: str, messages: Sequence[OutgoingMessage]) -> set[str]:
        self._check("send_batch")
        for message in messages:
            self.put(queue_url, message.body, message.attributes)
        return {message.entry_id for message in messages}

    def delete_batch(self, queue_url: str, receipt_handles: Mapping[str, str]) -> set[str]:
        self._check("delete_batch")
        handles = set(receipt_handles.values())
        self.queues[queue_url] = [
            m for m in self.queues.get(queue_url, []) if m.receipt_handle not in handles
        ]
        self._hidden -= handles
        return set(receipt_handles)

    def release(self, queue_url: str, receipt_handles: Sequence[str]) -> None:
        self._hidden -= set(receipt_handles)

    def start_move_task(self, source_arn: str, destination_arn: str, max_per_second: int | None) -> str:
        raise MoveTaskUnavailable("StartMessageMoveTask is not available here (in memory)")

    def latest_move_task(self, source_arn: str) -> MoveTaskStatus | None:
        return None

    def _check(self, operation: str) -> None:
        if operation in self.unavailable:
            raise DependencyUnavailable(f"SQS {operation} failed (in-memory queue set unavailable)")

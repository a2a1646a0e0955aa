"""In-memory implementations of the ports in relay.ports (see relay.testing)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.adapters.audit import audit_key, to_jsonl
from relay.adapters.idempotency import DEFAULT_LEASE_SECONDS, STATUS_COMPLETED, STATUS_IN_PROGRESS
from relay.errors import BreakerStoreUnavailable, ConfigurationError, DependencyUnavailable, UnreadableEvent
from relay.models.breaker import BreakerState, LaneState
from relay.models.delivery import DlqReason, S3Ref
from relay.models.http import HttpResult
from relay.models.idempotency import Claim
from relay.models.queue import Requeue
from relay.models.secrets import RotatingSecret
from relay.models.targets import Target


class InMemoryDeliveryQueue:
    """The intake's task queue: the bodies it was given, in order."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def send(self, bodies: Sequence[str]) -> None:
        self.bodies.extend(bodies)


class InMemoryClaimCheckStore:
    """Claim checks in process memory: what the intake puts, the dispatcher loads."""

    def __init__(self, bucket: str = "in-memory") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, body: bytes) -> S3Ref:
        self.objects[key] = body
        return S3Ref(bucket=self.bucket, key=key)

    def load(self, ref: S3Ref) -> str:
        try:
            return self.objects[ref.key].decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableEvent("the claim-checked event is not UTF-8") from None


class InMemoryIdempotencyStore:
    """The same semantics as the DynamoDB store in process memory (one container)."""

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

    def claim(self, key: str) -> Claim:
        now = self._clock()
        with self._lock:
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
            record = self.records.get(claim.key)
            if record is not None and record[3] == claim.token:
                self.records[claim.key] = (STATUS_COMPLETED, record[1], record[2], record[3], response)

    def release(self, claim: Claim) -> None:
        with self._lock:
            record = self.records.get(claim.key)
            if record is not None and record[3] == claim.token:
                del self.records[claim.key]


class InMemoryBreakerStore:
    """Same conditional semantics as the DynamoDB store, in one process: the breaker and the lane of a
    key are versioned and written apart. Counts calls for benchmarks; ``unavailable`` makes every call
    fail as DynamoDB down would."""

    def __init__(self) -> None:
        self._states: dict[str, BreakerState] = {}
        self._lanes: dict[str, LaneState] = {}
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
            return self._states.get(key, BreakerState()), self._lanes.get(key, LaneState())

    def save(self, key: str, state: BreakerState, *, expected_version: int) -> bool:
        with self._lock:
            self._check()
            self.writes += 1
            current = self._states.get(key)
            if (current.version if current else 0) != expected_version:
                return False
            self._states[key] = state
            return True

    def save_lane(self, key: str, lane: LaneState, *, expected_version: int) -> bool:
        with self._lock:
            self._check()
            self.writes += 1
            current = self._lanes.get(key)
            if (current.version if current else 0) != expected_version:
                return False
            self._lanes[key] = lane
            return True

    def _check(self) -> None:
        if self.unavailable:
            raise BreakerStoreUnavailable("breaker table unreadable (in-memory store set unavailable)")


class InMemoryAuditSink:
    """Audit objects in process memory, under the keys the S3 sink would use."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def write(
        self, date: str, target_id: str, invocation_id: str, records: Sequence[Mapping[str, Any]]
    ) -> None:
        self.objects[audit_key(date, target_id, invocation_id)] = to_jsonl(records)


class ManualClock:
    """Epoch seconds that move only when told (``clock.now += 30``); a ``Clock`` port."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class InMemoryTargets:
    """The dispatcher's target directory over a dict; ``unavailable`` fails reads as DynamoDB down
    would, ``writes_unavailable`` fails the disable write."""

    def __init__(self, *targets: Target) -> None:
        self.targets = {(t.integration_id, t.target_id): t for t in targets}
        self.unavailable = False
        self.writes_unavailable = False
        self.disabled: list[tuple[str, str]] = []

    def get_target(self, integration_id: str, target_id: str) -> Target | None:
        if self.unavailable:
            raise DependencyUnavailable("targets table unavailable (in-memory targets set unavailable)")
        return self.targets.get((integration_id, target_id))

    def set_target_enabled(self, integration_id: str, target_id: str, enabled: bool) -> None:
        if self.writes_unavailable:
            raise DependencyUnavailable("targets table unwritable (in-memory targets set unavailable)")
        target = self.targets.get((integration_id, target_id))
        if target is not None:
            self.targets[(integration_id, target_id)] = target.model_copy(update={"enabled": enabled})
        if not enabled:
            self.disabled.append((integration_id, target_id))


class InMemorySecrets:
    """A secret reader over a dict: a name it lacks is ConfigurationError (as a missing secret is);
    ``unavailable`` fails every read as Secrets Manager down would."""

    def __init__(self, secrets: Mapping[str, RotatingSecret] | None = None) -> None:
        self.secrets = dict(secrets or {})
        self.unavailable = False

    def __call__(self, name: str) -> RotatingSecret:
        if self.unavailable:
            raise DependencyUnavailable(f"Secrets Manager unavailable reading {name}")
        try:
            return self.secrets[name]
        except KeyError:
            raise ConfigurationError(f"secret {name} does not exist") from None


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
    ) -> HttpResult:
        with self._lock:
            self.requests.append((method, url, dict(headers), body))
        return self._answer(method, url, headers, body)

    def close(self) -> None:
        self.closed = True


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
        *,
        reason: DlqReason,
        attempts: int,
        integration_id: str | None,
        target_id: str | None,
        last_status: int | None,
        last_error: str | None,
    ) -> None:
        self._check("dead_letter")
        with self._lock:
            self.dead_letters.append(
                {
                    "body": body,
                    "reason": reason,
                    "attempts": attempts,
                    "integration_id": integration_id,
                    "target_id": target_id,
                    "last_status": last_status,
                    "last_error": last_error,
                }
            )

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

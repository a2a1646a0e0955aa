"""In-memory implementations of the ports in relay.ports (see relay.testing)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.adapters.audit import audit_key, to_jsonl
from relay.adapters.idempotency import DEFAULT_LEASE_SECONDS, STATUS_COMPLETED, STATUS_IN_PROGRESS
from relay.errors import UnreadableEvent
from relay.models.breaker import BreakerState
from relay.models.delivery import S3Ref
from relay.models.idempotency import Claim


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
    """Same conditional semantics as the DynamoDB store, in one process. Counts calls for benchmarks."""

    def __init__(self) -> None:
        self._states: dict[str, BreakerState] = {}
        self._lock = threading.Lock()
        self.reads = 0
        self.writes = 0

    def load(self, key: str) -> BreakerState:
        with self._lock:
            self.reads += 1
            return self._states.get(key, BreakerState())

    def save(self, key: str, state: BreakerState, *, expected_version: int) -> bool:
        with self._lock:
            self.writes += 1
            current = self._states.get(key)
            if (current.version if current else 0) != expected_version:
                return False
            self._states[key] = state
            return True


class InMemoryAuditSink:
    """Audit objects in process memory, under the keys the S3 sink would use."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def write(
        self, date: str, target_id: str, invocation_id: str, records: Sequence[Mapping[str, Any]]
    ) -> None:
        self.objects[audit_key(date, target_id, invocation_id)] = to_jsonl(records)

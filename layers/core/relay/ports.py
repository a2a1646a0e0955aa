"""What the relay's logic needs from the outside world, as Protocols (ports).

Logic (relay.logic) is written against these and never against an adapter class; the adapters
(relay.adapters) implement them for AWS, HTTP and Genesys, relay.testing.fakes implements them in
memory, and relay.wiring puts the two together. Imports only models and errors.

Every method raises ``DependencyUnavailable`` (or a subclass) when the AWS service behind it fails,
never a boto error; other errors are named where they can occur.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from pydantic import SecretStr

from relay.models.archive import ArchiveRecord, FoundRecords
from relay.models.breaker import BreakerState, LaneState
from relay.models.delivery import DeadLetterNote, S3Ref
from relay.models.http import HttpResult
from relay.models.idempotency import Claim
from relay.models.queue import (
    GroupPlacement,
    MoveTaskStatus,
    OrderedTask,
    OutgoingMessage,
    ReceivedMessage,
    Requeue,
)
from relay.models.rate_limit import BucketAnswer, BucketState
from relay.models.secrets import RotatingSecret
from relay.models.targets import Integration, IntegrationEntry, Target, UnreadableTarget

# Epoch seconds now (time.time in production, a manual clock in tests).
Clock = Callable[[], float]
# A secret by its Secrets Manager name, from a per-container cache. Raises SecretNotFound when it is
# missing, UnusableSecret when it is not in the relay's shape (both ConfigurationErrors).
SecretReader = Callable[[str], RotatingSecret]


class TargetSecretReader(Protocol):
    """The dispatcher's secret reader: a SecretReader that can also be told a value it handed out
    proved unusable where it was used (an encryption key without keyId, a client certificate OpenSSL
    refuses), so that a value fixed by hand is read again within seconds, not at the cache's TTL."""

    def __call__(self, name: str) -> RotatingSecret: ...

    def distrust(self, name: str) -> None:
        """Read ``name`` again soon (relay.adapters.secrets.UNUSABLE_RECHECK_SECONDS), not from the
        cache until its TTL."""
        ...


# --- the dispatcher ---------------------------------------------------------------------------------


class TargetDirectory(Protocol):
    """Targets by id (cached per container), and the one write the dispatcher makes: disable on 410."""

    def get_target(self, integration_id: str, target_id: str) -> Target | None:
        """The target, None if there is none; UnreadableRecord when its record cannot be validated."""
        ...

    def set_target_enabled(self, integration_id: str, target_id: str, enabled: bool) -> bool:
        """Set ``enabled``; True when this call wrote it, False when the target was already so (or is
        gone), e.g. because a concurrent writer got there first."""
        ...


class HttpClient(Protocol):
    """One outbound request at a time per call, safe to call from many threads at once. Never raises
    for anything the network or the peer does: that is an ``HttpResult`` with an error code."""

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
        """``total_timeout`` bounds the whole request (default: connect + read timeout).
        ``client_certificate``: a PEM bundle (relay.models.client_certificate) presented in the TLS
        handshake (mTLS); ConfigurationError if it is unusable (nothing is sent)."""
        ...

    def close(self) -> None: ...


class AccessTokens(Protocol):
    """OAuth 2.0 client-credentials access tokens for targets of security type oauth2, cached per
    container until shortly before they expire. Safe to call from many threads at once."""

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
        """A token for ``target`` within ``total_timeout`` seconds; never ``refused`` (a token the
        target has just answered 401 to). Raises ``TokenUnavailable``."""
        ...


class DeliveryQueueOps(Protocol):
    """What the dispatcher does to delivery-queue messages besides reporting them failed."""

    def schedule_retry(self, receipt_handle: str, delay_seconds: int) -> None:
        """Show the message again after ``delay_seconds`` (its backoff)."""

    def defer(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        *,
        attempts: int,
        deferrals: int,
        delay_seconds: int,
    ) -> None:
        """Re-send the body to the delivery queue, delayed, with the attempt count unchanged."""

    def dead_letter(
        self,
        body: str,
        message_attributes: Mapping[str, Any],
        note: DeadLetterNote,
    ) -> None:
        """Send the body to the DLQ with attributes saying why."""

    def to_slow_lane(self, messages: Sequence[Requeue]) -> set[int]:
        """Re-send each message to the slow lane's queue at once (batched), attempts unchanged; the
        indexes of those SQS accepted (the rest stay the caller's). Never raises for SQS failing."""
        ...


class OrderedQueueOps(Protocol):
    """The ordered (FIFO) delivery queue and its FIFO dead-letter queue, as the dispatcher uses them.
    Nothing here re-sends to the delivery queue: an ordered record is held, never re-queued."""

    def hold(self, receipt_handles: Sequence[str], delay_seconds: int) -> None:
        """Show these received messages (one message group's, in order) again after ``delay_seconds``,
        together, so the group comes back in order."""

    def delete(self, receipt_handles: Sequence[str]) -> None:
        """Delete these received messages now, before the invocation returns: their conversations
        are settled, and SQS hands out none of a conversation's later messages while it holds them.
        (The event source deletes them again when the invocation returns; SQS answers that with
        success.) Raises DependencyUnavailable when SQS refused any."""

    def dead_letter_in_order(
        self,
        placement: GroupPlacement,
        body: str,
        message_attributes: Mapping[str, Any],
        note: DeadLetterNote,
    ) -> None:
        """Send the body to the ordered DLQ in its message group, with attributes saying why."""


class AttemptCounter(Protocol):
    """Failed attempts per ordered message. A held message is received again without an attempt, so
    its receive count is no attempt count; this is. Keyed by the SQS message id (a redriven copy is a
    new message: a fresh count)."""

    def failures(self, message_id: str) -> int:
        """Failed attempts recorded so far (0 if none)."""
        ...

    def add_failure(self, message_id: str) -> int:
        """Record one more failed attempt; the failures so far, this one included."""
        ...


class BreakerStore(Protocol):
    """Breaker state and lane per target key, each written only with conditional writes on its own
    version. Raises ``BreakerStoreUnavailable``."""

    def load(self, key: str) -> BreakerState:
        """The stored state, or a fresh closed state (version 0) if there is none."""
        ...

    def load_with_lane(self, key: str) -> tuple[BreakerState, LaneState]:
        """The breaker state and the lane, from one consistent read of the target's item."""
        ...

    def save(self, key: str, state: BreakerState, *, expected_version: int) -> bool:
        """Store ``state`` if the stored version is ``expected_version``; False if another wrote first.
        The lane is left as it is."""
        ...

    def save_lane(self, key: str, lane: LaneState, *, expected_version: int) -> bool:
        """Store ``lane`` if the stored lane version is ``expected_version``; False if another wrote
        first. The breaker state is left as it is."""
        ...

    def mark_retry_after(self, key: str, until: float) -> None:
        """Record that the target asked for quiet until ``until`` (``LaneState.retry_after_until``),
        unless a later time is stored already. Breaker and lane are left as they are."""
        ...

    def lift_retry_after(self, key: str, *, seen: float) -> bool:
        """Remove the target's Retry-After mark if it is still no later than ``seen`` (the one read);
        False when a later one was stored meanwhile, or none is."""
        ...


class RateLimitStore(Protocol):
    """Targets' token buckets (relay.logic.token_bucket), one item per target, changed only by
    conditional writes that need no earlier read. Every write answers ``BucketAnswer``: the state it
    left, or the stored state that failed its condition (so the caller can plan again without a read).
    Raises ``RateLimitStoreUnavailable``."""

    def load(self, key: str) -> BucketState | None:
        """The stored bucket, or None (operator commands; the dispatcher never reads first)."""
        ...

    def take(
        self, key: str, *, now: float, count: int, cost: float, idle: bool, latest: float
    ) -> BucketAnswer:
        """Book ``count`` requests of ``cost`` seconds each. ``idle``: if nothing is booked past ``now``,
        book from ``now``; else: if ``now <= booked_until <= latest``, book on from ``booked_until``.
        Either way only when no Retry-After floor lies past ``now``."""
        ...

    def cut(
        self, key: str, *, now: float, rate: float, floor_until: float, seen_cut_at: float | None
    ) -> BucketAnswer:
        """Store a cut (``cut_rate = rate``, ``cut_at = now``) and the floor, if the stored cut is still
        the one seen (``seen_cut_at``; None: no cut stored)."""
        ...

    def join(
        self, key: str, *, now: float, contribution: float, floor_until: float, fresh_since: float
    ) -> BucketAnswer:
        """Add ``contribution`` to an implicit limit cut at or after ``fresh_since``, or start one (cut
        now) where none is stored; not written when the stored cut is older (released)."""
        ...

    def raise_floor(self, key: str, *, floor_until: float) -> BucketAnswer:
        """Set the Retry-After floor, if the stored one is earlier."""
        ...

    def lift_floor(self, key: str, *, seen: float) -> BucketAnswer:
        """Remove the Retry-After floor if it is still no later than ``seen`` (the one read); not
        written when a later one was stored meanwhile, or none is."""
        ...


class AuditSink(Protocol):
    def write(
        self, date: str, target_id: str, invocation_id: str, records: Sequence[Mapping[str, Any]]
    ) -> None: ...


class EventArchive(Protocol):
    """The event archive: one object per invocation (relay.models.archive)."""

    def write(self, date: str, invocation_id: str, records: Sequence[ArchiveRecord]) -> None: ...


class AwsCallDeadline(Protocol):
    def __call__(self, deadline: float | None) -> AbstractContextManager[None]:
        """Inside, on this thread and the threads its work is handed to (a ContextPool), no try of an
        AWS call starts that could end past ``deadline`` (time.monotonic()); one refused raises as the
        service failing (``DependencyUnavailable`` from the port)."""
        ...


class ClaimCheckReader(Protocol):
    def load(self, ref: S3Ref) -> str:
        """The stored event text, as stored; ``ClaimCheckMissing`` if the object is gone (expired or
        deleted), ``UnreadableEvent`` if it is not UTF-8, ``DependencyUnavailable`` if S3 fails."""
        ...


# --- the intake -------------------------------------------------------------------------------------


class IntegrationLookup(Protocol):
    def get(self, integration_id: str) -> IntegrationEntry | None: ...


class TaskQueue(Protocol):
    def send(self, bodies: Sequence[str]) -> None:
        """Queue every body, or raise DependencyUnavailable."""


class OrderedTaskQueue(Protocol):
    def send_ordered(self, tasks: Sequence[OrderedTask]) -> None:
        """Queue every task in its message group, or raise DependencyUnavailable."""


class FirstHopQueue(Protocol):
    def send_first_hop(self, tasks: Sequence[OrderedTask]) -> None:
        """Queue every task on the FIFO first hop, each in its own message group and deduplicated on its
        delivery id, or raise DependencyUnavailable."""


class ClaimCheckStore(Protocol):
    def put(self, key: str, body: bytes) -> S3Ref:
        """Store ``body`` under ``key`` (idempotent), or raise DependencyUnavailable."""
        ...


class IdempotencyStore(Protocol):
    def claim(self, key: str) -> Claim:
        """Claim ``key`` for this attempt, or say who already has it."""
        ...

    def complete(self, claim: Claim, response: str) -> None:
        """Record the answer for ``claim`` so repeats get it without queueing again."""

    def release(self, claim: Claim) -> None:
        """Forget a claim whose attempt failed, so a repeat can queue."""


class EventBridgeIntake(Protocol):
    """The intake's EventBridge entry point (relay.logic.intake.Intake), as ``relay dlq redrive`` sends
    a failed event back through it."""

    def handle_eventbridge(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Queue the event's tasks (once per event: a repeat queues nothing new) and answer what was
        queued; raise what the intake refuses (``RejectedRequest``, ``ConfigurationError``,
        ``RequestInProgress``) or what failed (``DependencyUnavailable``)."""
        ...


class MetricsRecorder(Protocol):
    def count(
        self, name: str, value: int = 1, *, reason: str | None = None, target: str | None = None
    ) -> None:
        """Count ``name``; ``reason`` and ``target`` are its dimensions when given (docs/architecture.md)."""


# --- config sync and operator commands --------------------------------------------------------------


class TargetRecords(IntegrationLookup, Protocol):
    """The TargetsTable as config sync and the operator commands use it."""

    def invalidate(self, integration_id: str | None = None) -> None: ...

    def list_integration_ids(self) -> list[str]: ...

    def save(
        self, record: Integration | Target, *, expected_version: int | None, unreadable: bool = False
    ) -> bool:
        """Store ``record`` if the stored one is still at ``expected_version`` (None: there is none;
        with ``unreadable``: an unreadable item whose version could not be read either); False, with
        nothing written, when another writer changed it first."""
        ...

    def delete(self, target: Target | UnreadableTarget) -> bool:
        """Delete the target's record if it is still at ``target.version``; False, with nothing deleted,
        when another writer changed it first."""
        ...


class SecretStore(Protocol):
    """Secrets Manager as config sync uses it: fresh reads and writes of the relay's secret shape."""

    def get(self, name: str, *, force_fetch: bool = False) -> RotatingSecret:
        """SecretNotFound when the secret is missing, UnusableSecret when it is not in the relay's shape
        (both ConfigurationErrors)."""
        ...

    def put(self, name: str, secret: RotatingSecret) -> None:
        """Create ``name`` or store a new version of it."""


class GenesysReader(Protocol):
    """What config sync needs from Genesys Cloud (relay.adapters.genesys.GenesysClient)."""

    def get_open_integration(self, integration_id: str) -> dict[str, Any]: ...
    def get_integration(self, integration_id: str) -> dict[str, Any]: ...
    def get_integration_config(self, integration_id: str) -> dict[str, Any]: ...
    def get_credential(self, credential_id: str) -> dict[str, Any]: ...


class AuditReader(Protocol):
    """The audit objects of some days (``relay deliveries show``)."""

    def lines(
        self, dates: Sequence[str], *, containing: str | tuple[str, ...], target: str | None = None
    ) -> list[dict[str, Any]]:
        """Every audit line under ``audit/date=<date>/`` for those dates (``target``: under that
        target's ``target=<id>/`` only) whose text holds ``containing`` (or any of several texts; as it
        is or JSON-escaped)."""
        ...


class ArchiveReader(Protocol):
    """The event archive of some days (``relay deliveries replay``)."""

    def records(self, dates: Sequence[str], *, containing: str | tuple[str, ...]) -> FoundRecords:
        """Every archive record of those dates whose line holds ``containing`` (or any of several texts;
        as it is or JSON-escaped), and how many such lines were no record."""
        ...

    def claim_check_exists(self, ref: S3Ref) -> bool:
        """False once the events/ lifecycle rule has expired the claim check."""
        ...


class DeadLetterQueues(Protocol):
    """The SQS calls behind ``relay dlq`` (queue URLs explicit: the DLQ is read, the delivery queue
    written). Never echoes a message body in an error."""

    def queue_arn(self, queue_url: str) -> str: ...

    def approximate_depth(self, queue_url: str) -> int: ...

    def receive(
        self, queue_url: str, *, visibility_seconds: int, wait_seconds: int
    ) -> list[ReceivedMessage]: ...

    def send_batch(self, queue_url: str, messages: Sequence[OutgoingMessage]) -> set[str]:
        """Send one batch; the entry ids SQS accepted."""
        ...

    def delete_batch(self, queue_url: str, receipt_handles: Mapping[str, str]) -> set[str]:
        """Delete by {entry id: receipt handle}; the entry ids SQS deleted."""
        ...

    def release(self, queue_url: str, receipt_handles: Sequence[str]) -> None:
        """Make received messages visible again (best effort)."""

    def start_move_task(self, source_arn: str, destination_arn: str, max_per_second: int | None) -> str:
        """The task handle; ``MoveTaskUnavailable`` where the endpoint has no move task."""
        ...

    def latest_move_task(self, source_arn: str) -> MoveTaskStatus | None: ...


class LetterCopies(Protocol):
    """Where ``relay dlq discard`` keeps a copy of each letter before deleting it (``--save FILE``)."""

    path: str

    def append(self, lines: Sequence[str]) -> tuple[int, str | None]:
        """Append ``lines`` in order; how many (the first ones) are durably stored, and why not all (None:
        all are). A letter whose line is not counted must not be deleted."""
        ...

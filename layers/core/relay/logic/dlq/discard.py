"""``relay dlq discard``: delete the letters a redrive cannot help (``poison``, a target retired for
good), never without a copy.

The rules that make it safe:
- Every letter deleted has its line in the save file first (``LetterCopies``: written whole and
  fsynced): the message id, the body exactly as received, its message attributes, why it was there and
  when it was discarded. A letter whose line is not on disk is not deleted, and the run ends there.
- A run with no filter discards the whole queue: it must say so (``everything``, the CLI's ``--all``).
- A dry run reads and counts; it writes and deletes nothing.
- Letters that reach the queue after the run started are left for the next run, as redrive leaves
  them: the operator chose from what was there (a dry run, ``relay dlq list``), even with ``--all``.
- The run is audited (``DiscardAudit``): one log line for the run (who, when, how many, which message
  ids) and, for the letters it discarded, audit records in the audit bucket under each target, with
  the letter's ids (never a body); written when the run ends, Ctrl-C and failures too.

The queues: the delivery DLQ, the ordered (FIFO) DLQ and the first hop's (FIFO) DLQ, filtered like
``redrive`` (target, integration, reason) or by message/delivery/event id; the EventBridge path's two
failure queues by message/event id, or ``everything``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from relay.errors import DependencyUnavailable
from relay.logic.deliveries.operator import Audited, operator_record
from relay.logic.dlq import scan as scans
from relay.logic.dlq.failed_events import FailedEventGroups, FailureQueue, read_failed_event
from relay.logic.dlq.letters import DeadLetterGroups, Named, RedriveFilter, classify, named_by, unmatched
from relay.logic.dlq.scan import (
    MessageGroups,
    Progress,
    ProgressSink,
    ReportGroup,
    Scan,
    no_progress,
    work_through,
)
from relay.logic.dlq.scan import now_ms as to_ms
from relay.models.queue import ReceivedMessage
from relay.models.timestamps import iso_utc
from relay.observability import logger
from relay.ports import AuditSink, DeadLetterQueues, LetterCopies

DISCARDED = "dlq-discarded"  # the audit records' outcome
TASK_QUEUES = ("delivery", "ordered", "first-hop")
# The FIFO ones, and what the notes call their message groups: while a run holds a letter, SQS hands out
# no more of its group (an ordered DLQ's is a conversation; the first hop's, one delivery).
FIFO_GROUPS = {"ordered": "conversation", "first-hop": "message group"}


@dataclass(frozen=True)
class DiscardFilter:
    """``letters``: target, integration and reason (task queues only); ``ids``: a letter's message id,
    delivery id or event id. Empty matches everything."""

    letters: RedriveFilter = field(default_factory=RedriveFilter)
    ids: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return self.letters.active or bool(self.ids)

    def matches(self, letter: Letter) -> bool:
        return self.letters.matches(letter) and (not self.ids or bool(letter.ids & self.ids))

    def named(self) -> set[Named]:
        return self.letters.named() | {("--id", i) for i in self.ids}


@dataclass(frozen=True)
class DiscardOptions:
    filter: DiscardFilter = field(default_factory=DiscardFilter)
    everything: bool = False  # --all: no filter is meant, the whole queue goes
    max_messages: int | None = None
    dry_run: bool = False
    visibility_seconds: int = 120  # how long a letter in hand stays hidden (save + delete fit easily)
    wait_seconds: int = 1

    def __post_init__(self) -> None:
        if not self.filter.active and not self.everything:
            raise ValueError(
                "discard takes a filter (--reason, --target, --integration, --id), or --all to discard "
                "every letter of the queue"
            )
        if self.filter.active and self.everything:
            raise ValueError("--all discards the whole queue: it takes no filter")


@dataclass(frozen=True)
class Letter:
    """What may be said about one letter (ids and its reason, never the body)."""

    message_id: str
    reason: str
    integration_id: str | None
    target_id: str | None
    delivery_id: str | None
    event_id: str | None

    @property
    def ids(self) -> set[str]:
        return {i for i in (self.message_id, self.delivery_id, self.event_id) if i}

    def to_json(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "reason": self.reason,
            "integrationId": self.integration_id,
            "targetId": self.target_id,
            "deliveryId": self.delivery_id,
            "eventId": self.event_id,
        }


@dataclass(frozen=True)
class DiscardAudit:
    """Where a real run's audit goes, and who runs it."""

    sink: AuditSink
    actor: str
    operation_id: str
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass
class DiscardResult:
    queue: str
    mode: Literal["discard", "dry-run"]
    save_file: str | None = None
    scanned: int = 0
    matched: int = 0  # chosen by the filter (and --max): discarded, or on a dry run would be
    discarded: int = 0
    not_saved: int = 0  # chosen, but their line could not be written: still in the queue
    not_deleted: int = 0  # saved, but SQS did not delete them: still in the queue (and in the file)
    skipped: int = 0  # did not match, or past --max
    arrived_during_run: int = 0  # left for the next run: not what the operator chose from
    letters: list[Letter] = field(default_factory=list)  # discarded (dry run: would be)
    groups: Sequence[ReportGroup] = ()
    error: str | None = None
    now_ms: int = 0
    depth: int = 0  # SQS's approximate depth when the run started
    unmatched_filters: list[str] = field(default_factory=list)  # values no letter of the queue carried
    audited: Audited | None = None

    @property
    def completed(self) -> bool:
        return not (self.error or self.not_saved or self.not_deleted)

    @property
    def attention(self) -> str | None:
        """What the operator must look at after the run (None: nothing)."""
        if not self.completed:
            return "not everything chosen was discarded: read the summary"
        if self.audited is not None and self.audited.unwritten:
            return "letters discarded, but their audit record could not be written (it is in the log output)"
        if self.unmatched_filters:  # as redrive says it: a typo must not pass for "done"
            unseen = self.depth - self.scanned if self.queue in FIFO_GROUPS else 0
            if unseen > 0:  # the FIFO hid letters behind those held: the value may be on one of them
                return (
                    f"no letter looked at has {', '.join(self.unmatched_filters)}: about {unseen} more wait "
                    f"behind letters of their {FIFO_GROUPS[self.queue]} and were not looked at (filters "
                    "take the ids `relay dlq list` shows, not names)"
                )
            return (
                f"no letter in the queue has {', '.join(self.unmatched_filters)} "
                "(filters take the ids `relay dlq list` shows, not names)"
            )
        return None

    @property
    def note(self) -> str | None:
        """What the operator may want to know, though nothing chosen was left behind: letters that
        arrived during the run."""
        if not self.arrived_during_run:
            return None
        count = self.arrived_during_run
        letters, were = ("letter", "was") if count == 1 else ("letters", "were")
        return (
            f"{count} {letters} arrived in the queue during the run and {were} left there "
            "(a later run takes them)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "mode": self.mode,
            "ok": self.attention is None,
            "attention": self.attention,
            "saveFile": self.save_file,
            "scanned": self.scanned,
            "matched": self.matched,
            "discarded": self.discarded,
            "notSaved": self.not_saved,
            "notDeleted": self.not_deleted,
            "skipped": self.skipped,
            "arrivedDuringRun": self.arrived_during_run,
            "approximateDepth": self.depth,
            "groups": [group.to_json(self.now_ms) for group in self.groups],
            "letters": [letter.to_json() for letter in self.letters],
            "unmatchedFilters": self.unmatched_filters,
            "auditUnwritten": bool(self.audited and self.audited.unwritten),
            "error": self.error,
        }


def discard(
    queues: DeadLetterQueues,
    queue: str,
    queue_url: str,
    options: DiscardOptions,
    copies: LetterCopies | None,
    audit: DiscardAudit | None,
    *,
    progress: ProgressSink = no_progress,
    now: Callable[[], float] = time.time,
    stop: scans.StopRequested = scans.never,
) -> DiscardResult:
    """Discard the letters of ``queue`` (``delivery``, ``ordered``, ``first-hop``, ``eventbridge``,
    ``intake-failures``) that ``options`` choose, each saved to ``copies`` first (None only on a dry
    run); see the module docstring for the rules."""
    if copies is None and not options.dry_run:
        raise ValueError("a discard needs somewhere to save the letters")
    if queue not in TASK_QUEUES and options.filter.letters.active:
        raise ValueError(f"--queue {queue} is filtered by --id only")
    mode: Literal["discard", "dry-run"] = "dry-run" if options.dry_run else "discard"
    result = DiscardResult(queue, mode, copies.path if copies is not None else None)
    result.depth = queues.approximate_depth(queue_url)
    groups: MessageGroups = DeadLetterGroups() if queue in TASK_QUEUES else FailedEventGroups(_failure(queue))
    carried: set[Named] = set()
    cut_short = False
    started_ms = to_ms(now)

    def handle(batch: list[ReceivedMessage], scan: Scan) -> bool:
        nonlocal cut_short
        chosen: list[tuple[ReceivedMessage, Letter]] = []
        for message in batch:
            letter = _read(queue, message)
            result.scanned += 1
            carried.update(_carried(letter))
            if message.sent_timestamp_ms is not None and message.sent_timestamp_ms > started_ms:
                result.arrived_during_run += 1
                continue
            full = options.max_messages is not None and result.matched >= options.max_messages
            if full or not options.filter.matches(letter):
                result.skipped += 1
                continue
            result.matched += 1
            groups.add_message(message)
            chosen.append((message, letter))
        if options.dry_run:
            result.letters.extend(letter for _, letter in chosen)
        elif (
            chosen
            and copies is not None
            and not _discard(queues, queue_url, copies, chosen, scan, result, now)
        ):
            cut_short = True
            return False
        progress(
            Progress("would discard", result.scanned, result.depth, moved=result.matched)
            if options.dry_run
            else Progress(
                "discard", result.scanned, result.depth, moved=result.discarded, failed=result.not_saved
            )
        )
        return options.max_messages is None or result.matched < options.max_messages

    try:
        work_through(
            queues,
            queue_url,
            handle,
            visibility_seconds=options.visibility_seconds,
            wait_seconds=options.wait_seconds,
            stop=stop,
        )
    finally:
        if audit is not None and not options.dry_run:
            result.audited = record_discard(audit, result)
    result.groups = groups.sorted()
    result.now_ms = to_ms(now)
    read_all = not cut_short and not stop() and result.scanned > 0
    if read_all and (options.max_messages is None or result.matched < options.max_messages):
        result.unmatched_filters = unmatched(options.filter.named(), carried)
    return result


def _failure(queue: str) -> FailureQueue:
    return "eventbridge" if queue == "eventbridge" else "intake-failures"


def _read(queue: str, message: ReceivedMessage) -> Letter:
    if queue in TASK_QUEUES:
        letter = classify(message)
        return Letter(
            message.message_id,
            letter.reason,
            letter.integration_id,
            letter.target_id,
            letter.delivery_id,
            letter.event_id,
        )
    failed = read_failed_event(_failure(queue), message)
    return Letter(message.message_id, failed.reason, None, None, None, failed.event_id)


def _carried(letter: Letter) -> set[Named]:
    return named_by(letter) | {("--id", i) for i in letter.ids}


def _discard(
    queues: DeadLetterQueues,
    queue_url: str,
    copies: LetterCopies,
    chosen: Sequence[tuple[ReceivedMessage, Letter]],
    scan: Scan,
    result: DiscardResult,
    now: Callable[[], float],
) -> bool:
    """Save the chosen letters' lines, then delete exactly the letters whose line is on disk. False when
    the file or SQS failed (``result.error`` says which): the run ends, the rest stays in the queue."""
    at = iso_utc(datetime.fromtimestamp(now(), UTC))
    lines = [copy_line(message, letter, result.queue, at) for message, letter in chosen]
    saved, why = copies.append(lines)
    result.not_saved += len(chosen) - saved
    if why is not None:
        result.error = f"{why}; {len(chosen) - saved} letters not saved were not deleted"
    keep = dict(enumerate(chosen[:saved]))
    deleted: set[str] = set()
    if keep:
        try:
            deleted = queues.delete_batch(queue_url, {str(i): m.receipt_handle for i, (m, _) in keep.items()})
        except DependencyUnavailable as exc:
            result.not_deleted += len(keep)
            result.error = f"{exc}; {len(keep)} saved letters are still in the queue"
            return False
    for entry_id in sorted(deleted, key=int):
        message, letter = keep[int(entry_id)]
        scan.deleted(message.message_id)
        result.letters.append(letter)
    result.discarded += len(deleted)
    result.not_deleted += len(keep) - len(deleted)
    return why is None


def copy_line(message: ReceivedMessage, letter: Letter, queue: str, discarded_at: str) -> str:
    """The save file's line for one letter: enough to put it back (``aws sqs send-message`` with the
    same body and attributes, or ``relay local put-event``) or to read what it held."""
    return json.dumps(
        {
            "messageId": message.message_id,
            "queue": queue,
            "body": message.body,
            "messageAttributes": _attributes(message.attributes),
            "messageGroupId": message.group_id,
            "sentTimestamp": message.sent_timestamp_ms,
            "reason": letter.reason,
            "integrationId": letter.integration_id,
            "targetId": letter.target_id,
            "deliveryId": letter.delivery_id,
            "eventId": letter.event_id,
            "discardedAt": discarded_at,
        },
        separators=(",", ":"),
    )


def _attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """As SQS's JSON API spells them: a BinaryValue base64."""
    spelled: dict[str, dict[str, Any]] = {}
    for name, value in attributes.items():
        spelled[name] = {
            key: base64.b64encode(part).decode() if isinstance(part, bytes | bytearray) else part
            for key, part in value.items()
        }
    return spelled


def record_discard(audit: DiscardAudit, result: DiscardResult) -> Audited:
    """Log the run (who, when, how many, which message ids) and write one audit object per target with a
    record per discarded letter (its ids and reason, never its body; the run's records share one
    ``invocationId``, ``operator-<operationId>``). Targets whose object could not be
    written are in ``unwritten`` (the log line has them all the same)."""
    at = audit.now()
    letters = result.letters
    logger.info(
        "dlq discard",
        extra={
            "operationId": audit.operation_id,
            "actor": audit.actor,
            "queue": result.queue,
            "discarded": len(letters),
            "messageIds": [letter.message_id for letter in letters],
            "saveFile": result.save_file,
            "at": iso_utc(at),
        },
    )
    by_target: dict[str, list[dict[str, Any]]] = {}
    for letter in letters:
        target = letter.target_id or f"queue-{result.queue}"
        record = operator_record(
            DISCARDED,
            operation_id=audit.operation_id,
            actor=audit.actor,
            at=at,
            integration_id=letter.integration_id or "",
            target_id=target,
            event_id=letter.event_id,
        )
        # Only the audit tables' columns (template.yaml): the run is its invocationId, the queue and
        # the count are in the log line.
        record.update(deliveryId=letter.delivery_id, messageId=letter.message_id, dlqReason=letter.reason)
        by_target.setdefault(target, []).append(record)
    unwritten = []
    for target, records in by_target.items():
        try:
            audit.sink.write(at.strftime("%Y-%m-%d"), target, records[0]["invocationId"], records)
        except DependencyUnavailable as exc:
            logger.warning(
                "dlq discard audit record not written", extra={"error": str(exc), "targetId": target}
            )
            unwritten.append(target)
    return Audited([record for records in by_target.values() for record in records], unwritten)

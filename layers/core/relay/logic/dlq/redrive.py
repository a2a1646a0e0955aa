"""``relay dlq redrive``: move DLQ messages back to the delivery queue.

Either SQS moves everything (StartMessageMoveTask, polled until it ends) or the messages are received,
re-sent and deleted here. The rule that keeps redrive lossless: a DLQ message is deleted only after SQS
accepted its copy on the delivery queue; a failed send leaves it where it is and ends the run.

The ordered DLQ (FIFO) hands out a conversation's letters in the order they were dead-lettered; the
re-send puts those it receives together back in the order the intake accepted them
(``in_acceptance_order``: a letter redriven alone that failed again sits behind later ones). Each copy
goes to the ordered queue in the letter's message group, one at a time, deduplicated on the letter's
message id (a repeated run does not queue it twice), and a conversation stops at its first letter that
stays behind (filtered out, arrived during the run, past --max, or refused), so no letter overtakes
another. For the same reason an ordered DLQ is re-sent, not moved by SQS's move task, unless that is
asked for (``--method move-task``: it keeps the DLQ's order), and its letters go only to a FIFO queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from relay.errors import ConfigurationError, DependencyUnavailable, MoveTaskUnavailable
from relay.logic.dlq import scan as scans
from relay.logic.dlq.letters import (
    DeadLetterGroup,
    DeadLetterGroups,
    RedriveFilter,
    classify,
    in_acceptance_order,
    redrive_attributes,
)
from relay.logic.dlq.scan import Progress, ProgressSink, Scan, no_progress, now_ms, work_through
from relay.models.queue import GroupPlacement, MoveTaskStatus, OutgoingMessage, ReceivedMessage, plan_batches
from relay.ports import DeadLetterQueues

RedriveMethod = Literal["auto", "move-task", "resend"]


@dataclass(frozen=True)
class RedriveOptions:
    filter: RedriveFilter = field(default_factory=RedriveFilter)
    max_messages: int | None = None
    dry_run: bool = False
    method: RedriveMethod = "auto"
    max_per_second: int | None = None  # move task rate; None lets SQS choose
    visibility_seconds: int = 120  # how long a message in hand stays hidden (send + delete fit easily)
    wait_seconds: int = 1
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.method == "move-task" and self._narrowed():
            # SQS's move task cannot filter, count or pretend: asked for with any of these it would
            # move the whole queue.
            raise ValueError(
                "--method move-task moves every message of the queue: it takes no --dry-run, --max, "
                "--target, --integration or --reason (leave --method out, or use --method resend)"
            )

    def wants_move_task(self, *, ordered: bool = False) -> bool:
        """The move task moves everything, unchanged: only for an unfiltered, unbounded, real run. It
        keeps a FIFO DLQ's order, the order its letters failed in: an ``ordered`` DLQ uses it only when
        asked to (the re-send puts each conversation's letters back in the order they were accepted)."""
        if self.method == "resend" or (ordered and self.method == "auto"):
            return False
        return not self._narrowed()

    def _narrowed(self) -> bool:
        return self.filter.active or self.max_messages is not None or self.dry_run


@dataclass
class RedriveResult:
    mode: Literal["move-task", "resend", "dry-run"]
    fallback_reason: str | None = None
    scanned: int = 0
    matched: int = 0
    moved: int = 0
    send_failed: int = 0
    not_deleted: int = 0  # re-sent but still in the DLQ too: a duplicate the receivers dedupe
    skipped: int = 0  # did not match the filter, or past --max
    arrived_during_run: int = 0  # left for the next run, so a failing target cannot ping-pong
    task: MoveTaskStatus | None = None
    groups: list[DeadLetterGroup] = field(default_factory=list)
    error: str | None = None
    now_ms: int = 0
    depth: int = 0  # SQS's approximate depth when the run started
    # Filter values no letter of the whole DLQ carried ("--target X"): a typo, or a name for an id.
    unmatched_filters: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.error or self.send_failed or self.not_deleted:
            return False
        return self.task is None or self.task.status == "COMPLETED"

    @property
    def attention(self) -> str | None:
        """What the operator must look at after the run (None: nothing)."""
        if not self.ok:
            return "not everything was moved: read the summary"
        if self.unmatched_filters:
            return (
                f"no letter in the DLQ has {', '.join(self.unmatched_filters)} "
                "(filters take the ids `relay dlq list` shows, not names)"
            )
        if self.arrived_during_run and self.mode == "resend":
            # Often the very messages just moved, failing again: the target still refuses them.
            return (
                f"{self.arrived_during_run} messages arrived in the DLQ during the run and are still there "
                "(moved ones failing again?): check the target, then redrive again"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        task = self.task
        return {
            "mode": self.mode,
            "ok": self.ok,
            "fallbackReason": self.fallback_reason,
            "scanned": self.scanned,
            "matched": self.matched,
            "moved": self.moved,
            "sendFailed": self.send_failed,
            "notDeleted": self.not_deleted,
            "skipped": self.skipped,
            "arrivedDuringRun": self.arrived_during_run,
            "approximateDepth": self.depth,
            "task": None
            if task is None
            else {
                "status": task.status,
                "moved": task.moved,
                "toMove": task.to_move,
                "failureReason": task.failure_reason,
            },
            "groups": [group.to_json(self.now_ms) for group in self.groups],
            "unmatchedFilters": self.unmatched_filters,
            "error": self.error,
        }


def redrive(
    queues: DeadLetterQueues,
    dlq_url: str,
    queue_url: str,
    options: RedriveOptions,
    *,
    progress: ProgressSink = no_progress,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    stop: scans.StopRequested = scans.never,
) -> RedriveResult:
    """Move DLQ messages back to the delivery queue (see the module docstring for the rules)."""
    ordered = _fifo(dlq_url)
    if _fifo(queue_url) != ordered:
        raise ConfigurationError(
            f"an ordered DLQ's letters go back only to a FIFO queue (their conversation is its message "
            f"group); {queue_url} is a standard queue"
            if ordered
            else f"a standard DLQ's letters go back only to a standard queue; {queue_url} is a FIFO queue"
        )
    fallback_reason = None
    if options.wants_move_task(ordered=ordered):
        try:
            return _run_move_task(queues, dlq_url, queue_url, options, progress, sleep)
        except MoveTaskUnavailable as exc:
            if options.method == "move-task":
                raise
            fallback_reason = f"{exc}; re-sending message by message instead"
            if options.max_per_second is not None:  # the re-send is not paced: say so, not ignore it
                fallback_reason += " (--rate paces only the move task; the re-send is not paced)"
    result = _resend(queues, dlq_url, queue_url, options, progress, now, stop)
    result.fallback_reason = fallback_reason
    return result


def _run_move_task(
    queues: DeadLetterQueues,
    dlq_url: str,
    queue_url: str,
    options: RedriveOptions,
    progress: ProgressSink,
    sleep: Callable[[float], None],
) -> RedriveResult:
    source_arn = queues.queue_arn(dlq_url)
    destination_arn = queues.queue_arn(queue_url)
    queues.start_move_task(source_arn, destination_arn, options.max_per_second)
    result = RedriveResult(mode="move-task")
    while True:
        task = queues.latest_move_task(source_arn)
        if task is None:
            result.error = "the move task started but SQS lists no task for the DLQ"
            return result
        result.task = task
        result.moved = task.moved
        progress(Progress(f"move task {task.status.lower()}", task.moved, task.to_move, moved=task.moved))
        if task.done:
            if task.status == "FAILED":
                result.error = f"move task failed: {task.failure_reason or 'no reason given'}"
            return result
        sleep(options.poll_seconds)


def _resend(
    queues: DeadLetterQueues,
    dlq_url: str,
    queue_url: str,
    options: RedriveOptions,
    progress: ProgressSink,
    now: Callable[[], float],
    stop: scans.StopRequested,
) -> RedriveResult:
    result = RedriveResult(mode="dry-run" if options.dry_run else "resend")
    started_ms = now_ms(now)
    depth = result.depth = queues.approximate_depth(dlq_url)
    # The queue it moves to exists and answers, before any letter is received (a dry run says so too):
    # DependencyUnavailable, the command could not run.
    queues.approximate_depth(queue_url)
    groups = DeadLetterGroups()
    stopped: set[str] = set()  # ordered DLQ: conversations with a letter left behind in this run
    carried: set[tuple[str, str]] = set()  # ("--target", id) and ("--integration", id) of every letter

    def move(batch: list[ReceivedMessage], scan: Scan) -> bool:
        chosen = _choose(in_acceptance_order(batch), options, groups, result, started_ms, stopped, carried)
        moved = options.dry_run or _move(queues, dlq_url, queue_url, chosen, scan, result, stopped)
        if chosen and not moved:
            return False  # the delivery queue or the DLQ stopped answering: keep what was not moved
        progress(Progress("redrive", result.scanned, depth, moved=result.moved, failed=result.send_failed))
        return options.max_messages is None or result.matched < options.max_messages

    work_through(
        queues,
        dlq_url,
        move,
        visibility_seconds=options.visibility_seconds,
        wait_seconds=options.wait_seconds,
        stop=stop,
    )
    result.groups = groups.sorted()
    result.now_ms = now_ms(now)
    if options.max_messages is None or result.matched < options.max_messages:  # the whole DLQ was read
        wanted = {("--target", t) for t in options.filter.targets}
        wanted |= {("--integration", i) for i in options.filter.integrations}
        result.unmatched_filters = [f"{flag} {value}" for flag, value in sorted(wanted - carried)]
    return result


def _choose(
    batch: Sequence[ReceivedMessage],
    options: RedriveOptions,
    groups: DeadLetterGroups,
    result: RedriveResult,
    started_ms: int,
    stopped: set[str],
    carried: set[tuple[str, str]],
) -> list[ReceivedMessage]:
    """The messages of ``batch`` to move, counting the others in ``result``; a letter left behind stops
    its conversation (``stopped``) for the rest of the run. ``carried`` gathers every letter's ids."""
    chosen = []
    for message in batch:
        result.scanned += 1
        letter = classify(message)
        carried |= {("--target", letter.target_id), ("--integration", letter.integration_id)}
        if message.sent_timestamp_ms is not None and message.sent_timestamp_ms > started_ms:
            result.arrived_during_run += 1
            _stop(message, stopped)
            continue
        full = options.max_messages is not None and result.matched >= options.max_messages
        if full or message.group_id in stopped or not options.filter.matches(letter):
            result.skipped += 1
            _stop(message, stopped)
            continue
        result.matched += 1
        groups.add(letter)
        chosen.append(message)
    return chosen


def _move(
    queues: DeadLetterQueues,
    dlq_url: str,
    queue_url: str,
    messages: Sequence[ReceivedMessage],
    scan: Scan,
    result: RedriveResult,
    stopped: set[str],
) -> bool:
    """Send copies, then delete from the DLQ exactly the messages whose copy SQS accepted. False when
    SQS stopped answering (``result.error`` says where): the run ends. Ordered letters go one at a
    time, and a refused one stops its conversation."""
    by_entry = {str(i): m for i, m in enumerate(messages)}
    outgoing = [
        OutgoingMessage(
            entry_id,
            m.body,
            redrive_attributes(m.attributes),
            placement=GroupPlacement(m.group_id, m.message_id) if m.group_id else None,
        )
        for entry_id, m in by_entry.items()
    ]
    ordered = any(m.placement for m in outgoing)
    refused: set[str] = set()  # conversations with a letter refused in this batch: the rest stays
    for batch in [[m] for m in outgoing] if ordered else plan_batches(outgoing):
        if ordered and by_entry[batch[0].entry_id].group_id in refused:
            result.skipped += 1
            continue
        try:
            sent = queues.send_batch(queue_url, batch)
        except DependencyUnavailable as exc:
            result.send_failed += len(batch)
            result.error = f"{exc}; nothing unsent was deleted from the DLQ"
            return False
        result.send_failed += len(batch) - len(sent)
        for unsent in (by_entry[m.entry_id] for m in batch if m.entry_id not in sent):
            _stop(unsent, stopped)
            _stop(unsent, refused)
        try:
            deleted = queues.delete_batch(dlq_url, {i: by_entry[i].receipt_handle for i in sent})
        except DependencyUnavailable as exc:
            result.not_deleted += len(sent)
            result.error = f"{exc}; {len(sent)} sent messages are still in the DLQ too"
            return False
        for entry_id in deleted:
            scan.deleted(by_entry[entry_id].message_id)
        result.moved += len(deleted)
        result.not_deleted += len(sent) - len(deleted)
    return True


def _fifo(queue_url: str) -> bool:
    """SQS names every FIFO queue, and so its URL, with the suffix .fifo (and no standard queue)."""
    return queue_url.endswith(".fifo")


def _stop(message: ReceivedMessage, stopped: set[str]) -> None:
    if message.group_id:
        stopped.add(message.group_id)

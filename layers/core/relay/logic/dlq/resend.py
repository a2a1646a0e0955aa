"""The re-send of ``relay dlq redrive``: receive DLQ letters, send copies, delete what SQS accepted.

A DLQ message is deleted only after SQS accepted its copy on the delivery queue; a failed send leaves it
where it is and ends the run. Ordered letters (FIFO) received together go back in the order the intake
accepted them (``in_acceptance_order``), one at a time, each in its message group and deduplicated on
the letter's message id; a conversation stops at its first letter that stays behind (filtered out,
arrived during the run, past --max, or refused), so no letter overtakes another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.errors import DependencyUnavailable
from relay.logic.dlq import scan as scans
from relay.logic.dlq.letters import (
    DeadLetter,
    DeadLetterGroups,
    classify,
    in_acceptance_order,
    named_by,
    redrive_attributes,
    unmatched,
)
from relay.logic.dlq.redrive_options import RedriveOptions, RedriveResult
from relay.logic.dlq.scan import Progress, ProgressSink, Scan, now_ms, work_through
from relay.models.queue import GroupPlacement, OutgoingMessage, ReceivedMessage, plan_batches
from relay.ports import DeadLetterQueues


def resend(
    queues: DeadLetterQueues,
    dlq_url: str,
    queue_url: str,
    options: RedriveOptions,
    progress: ProgressSink,
    now: Callable[[], float],
    stop: scans.StopRequested,
) -> RedriveResult:
    """Re-send the DLQ's letters that ``options`` choose (or count them, on a dry run)."""
    result = RedriveResult(mode="dry-run" if options.dry_run else "resend")
    started_ms = now_ms(now)
    depth = result.depth = queues.approximate_depth(dlq_url)
    # The queue it moves to exists and answers, before any letter is received (a dry run says so too):
    # DependencyUnavailable, the command could not run.
    queues.approximate_depth(queue_url)
    groups = DeadLetterGroups()
    stopped: set[str] = set()  # ordered DLQ: conversations with a letter left behind in this run
    carried: set[tuple[str, str]] = set()  # ("--target", id) and ("--integration", id) of every letter
    cut_short = False  # a send or delete failed: the rest of the DLQ was not read

    def move(batch: list[ReceivedMessage], scan: Scan) -> bool:
        nonlocal cut_short
        letters = in_acceptance_order([(message, classify(message)) for message in batch])
        chosen = _choose(letters, options, groups, result, started_ms, stopped, carried)
        moved = options.dry_run or _move(queues, dlq_url, queue_url, chosen, scan, result, stopped)
        if chosen and not moved:
            cut_short = True
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
    # Only a run that read the whole DLQ can say no letter carries a filter's value: one stopped by
    # Ctrl-C (perhaps before its first receive), by a failure, or at --max has not seen them all.
    # An empty DLQ has nothing a filter could have missed (the run that emptied it, run again).
    read_all = not cut_short and not stop() and result.scanned > 0
    if read_all and (options.max_messages is None or result.matched < options.max_messages):
        result.unmatched_filters = unmatched(options.filter.named(), carried)
    return result


def _choose(
    letters: Sequence[tuple[ReceivedMessage, DeadLetter]],
    options: RedriveOptions,
    groups: DeadLetterGroups,
    result: RedriveResult,
    started_ms: int,
    stopped: set[str],
    carried: set[tuple[str, str]],
) -> list[ReceivedMessage]:
    """The messages of ``letters`` to move, counting the others in ``result``; a letter left behind
    stops its conversation (``stopped``) for the rest of the run. ``carried`` gathers every letter's ids."""
    chosen = []
    for message, letter in letters:
        result.scanned += 1
        carried |= named_by(letter)
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


def _stop(message: ReceivedMessage, stopped: set[str]) -> None:
    if message.group_id:
        stopped.add(message.group_id)

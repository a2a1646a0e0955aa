"""``relay dlq redrive``: move DLQ messages back to the delivery queue.

Either SQS moves everything (StartMessageMoveTask, polled until it ends) or the messages are received,
re-sent and deleted here (relay.logic.dlq.resend). Either way a DLQ message leaves the DLQ only once
its copy is on the delivery queue.

The ordered DLQ (FIFO) hands out a conversation's letters in the order they were dead-lettered, which
the move task keeps; the re-send puts them back in the order the intake accepted them. So an ordered
DLQ is re-sent, not moved by SQS's move task, unless that is asked for (``--method move-task``), and
its letters go only to a FIFO queue (a standard DLQ's only to a standard one).

The first hop's DLQ (FIFO, each letter its own message group, a single delivery) takes the same path: it
is re-sent unless ``--method move-task``, each copy deduplicated on the letter's own message id, never on
the delivery id the intake deduplicated the original on (so a redrive within SQS's 5-minute window of the
original send is not dropped as its repeat).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from relay.errors import ConfigurationError, MoveTaskUnavailable
from relay.logic.dlq import scan as scans
from relay.logic.dlq.redrive_options import RedriveOptions, RedriveResult
from relay.logic.dlq.resend import resend
from relay.logic.dlq.scan import Progress, ProgressSink, no_progress
from relay.ports import DeadLetterQueues

__all__ = ["RedriveOptions", "RedriveResult", "redrive"]


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
            f"a FIFO DLQ's letters go back only to a FIFO queue (each keeps its message group); {queue_url} "
            "is a standard queue"
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
    result = resend(queues, dlq_url, queue_url, options, progress, now, stop)
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


def _fifo(queue_url: str) -> bool:
    """SQS names every FIFO queue, and so its URL, with the suffix .fifo (and no standard queue)."""
    return queue_url.endswith(".fifo")

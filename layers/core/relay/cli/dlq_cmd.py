"""``relay dlq list`` and ``relay dlq redrive``: inspect a dead-letter queue and send its messages back
(``relay dlq discard``, which deletes letters after saving them, is relay.cli.dlq_discard_cmd).

``--queue`` picks the queue: ``delivery`` (the DeadLetterQueue: tasks go back to the delivery queue),
``ordered`` (the OrderedDeadLetterQueue, FIFO: tasks go back to the ordered queue, each conversation's
in order), ``first-hop`` (the FirstHopDeadLetterQueue, FIFO, where SQS's redrive backstop moves
first-hop records: tasks go back to the first hop, each in its own message group), ``eventbridge`` (the
Genesys rule's dead-letter queue) or ``intake-failures`` (the intake's on-failure destination); the
events of those two go back through the intake's EventBridge path, in-process.

Only ids, reasons, counts, and status and error codes are printed: event bodies may hold customer messages.

Exit codes (relay.cli.exit_codes): 1 when something was left behind or failed (send failures, a failed
move task, events the intake still refuses: read the summary); 3 when the queues cannot be read at all;
130 on Ctrl-C. A first Ctrl-C stops the run after the batch in hand (it is moved or put back, never
left half moved, and nothing stays hidden); a second stops it at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

from relay.cli.arguments import positive_int, whole_number_up_to
from relay.cli.exit_codes import ExitCode, Interrupted, NeedsAttention, UsageError
from relay.cli.stack_option import STACK_OPTION, stack_output
from relay.cli.terminal import format_table, visible_lines

if TYPE_CHECKING:
    from relay.logic.dlq import Progress, RedriveOptions

DELIVERY = "delivery"
ORDERED = "ordered"
FIRST_HOP = "first-hop"
# The queues whose messages are DeliveryTasks, and the queue each one's tasks go back to.
TASK_QUEUES = {DELIVERY: "delivery_queue_url", ORDERED: "ordered_queue_url", FIRST_HOP: "first_hop_queue_url"}
# The FIFO ones among them: a scan holding a letter sees no more of its message group, and a redrive
# re-sends unless --method move-task. An ordered DLQ's groups are conversations; the first hop's are
# single deliveries (its letters are listed, filtered and moved like the delivery DLQ's).
FIFO_QUEUES = (ORDERED, FIRST_HOP)
QUEUES = (DELIVERY, ORDERED, FIRST_HOP, "eventbridge", "intake-failures")
# Where --stack-name names a task queue's destination when no setting stands for it (stack_option).
DESTINATION_OUTPUTS = {FIRST_HOP: "FirstHopQueueUrl"}
# The setting naming each queue's URL (the stack outputs DeadLetterQueueUrl, OrderedDeadLetterQueueUrl,
# FirstHopDeadLetterQueueUrl, EventBridgeDeadLetterQueueUrl, IntakeFailureQueueUrl).
QUEUE_URL_SETTINGS = {
    DELIVERY: "dead_letter_queue_url",
    ORDERED: "ordered_dead_letter_queue_url",
    FIRST_HOP: "first_hop_dead_letter_queue_url",
    "eventbridge": "eventbridge_dead_letter_queue_url",
    "intake-failures": "intake_failure_queue_url",
}
# redrive options that only make sense for DeliveryTask messages (--queue delivery, ordered or first-hop).
DELIVERY_ONLY = {"target": "--target", "integration": "--integration", "reason": "--reason", "rate": "--rate"}
# How a refusal names the queues those options apply to.
TASK_QUEUES_NAMED = f"--queue {DELIVERY}, {ORDERED} or {FIRST_HOP}"


def register(subparsers: Any) -> None:
    dlq = subparsers.add_parser("dlq", help="inspect, redrive and discard dead-lettered messages")
    sub = dlq.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False, parents=[STACK_OPTION])
    common.add_argument(
        "--queue",
        choices=QUEUES,
        default=DELIVERY,
        help="delivery: the DeadLetterQueue (default); ordered: the OrderedDeadLetterQueue (FIFO); "
        "first-hop: the FirstHopDeadLetterQueue (FIFO: first-hop records the redrive backstop moved); "
        "eventbridge: the Genesys rule's dead-letter queue; "
        "intake-failures: the intake's on-failure destination",
    )
    common.add_argument(
        "--dlq-url",
        help="URL of the queue --queue names (default: DEAD_LETTER_QUEUE_URL, ORDERED_DEAD_LETTER_QUEUE_URL, "
        "FIRST_HOP_DEAD_LETTER_QUEUE_URL, EVENTBRIDGE_DEAD_LETTER_QUEUE_URL or INTAKE_FAILURE_QUEUE_URL)",
    )
    common.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    common.add_argument(
        "--max", type=positive_int, metavar="N", help="look at (list), move (redrive) or discard at most N"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress line on stderr")

    listing = sub.add_parser(
        "list", parents=[common], help="group a queue's messages by reason (and target): nothing is removed"
    )
    listing.add_argument(
        "--visibility",
        type=whole_number_up_to(43_200, "SQS hides a message at most 12 h"),
        default=30,
        metavar="SECONDS",
        help="how long scanned messages stay hidden if this command dies (they are put back at the end)",
    )
    listing.set_defaults(func=_list)

    redrive = sub.add_parser(
        "redrive",
        parents=[common],
        help="move DLQ messages back to the queue they came from, or failed events back through the intake",
    )
    redrive.add_argument(
        "--queue-url",
        help="where tasks are queued (default: DELIVERY_QUEUE_URL; ORDERED_QUEUE_URL for --queue ordered; "
        "FIRST_HOP_QUEUE_URL, or the stack's output FirstHopQueueUrl with --stack-name, for --queue "
        "first-hop)",
    )
    redrive.add_argument(
        "--target",
        action="append",
        metavar="TARGET_ID",
        help="only this target (repeatable; delivery, ordered, first-hop)",
    )
    redrive.add_argument(
        "--integration",
        action="append",
        metavar="INTEGRATION_ID",
        help="only this integration (repeatable; delivery, ordered, first-hop)",
    )
    redrive.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="only this reason (repeatable; delivery, ordered, first-hop): exhausted, permanent-status, "
        "target-gone, poison, unknown-target, target-disabled, claim-check-missing, redrive-backstop",
    )
    redrive.add_argument("--dry-run", action="store_true", help="show what would move; move nothing")
    redrive.add_argument(
        "--method",
        choices=("auto", "move-task", "resend"),
        default="auto",
        help="delivery: auto: SQS move task when nothing is filtered or bounded, else re-send "
        "(ordered: always re-send, each conversation in the order it was accepted; first-hop: always "
        "re-send, each letter with a fresh deduplication id); "
        "resend: always re-send (fresh attempt counters); move-task: fail if SQS lacks it",
    )
    redrive.add_argument(
        "--rate",
        type=whole_number_up_to(500, "SQS moves at most 500 messages a second"),
        metavar="PER_SECOND",
        help="move task rate limit (max 500): only where a move task may run, unfiltered and unbounded "
        "(delivery; ordered and first-hop with --method move-task); refused where the redrive re-sends",
    )
    redrive.set_defaults(func=_redrive)

    from relay.cli import dlq_discard_cmd

    dlq_discard_cmd.register(sub, common)


class ProgressLine:
    """A one-line progress bar on stderr: redrawn in place on a terminal, an occasional line otherwise."""

    WIDTH = 24

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        interval_seconds: float | None = None,
    ) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = self._stream.isatty()
        self._clock = clock
        self._interval = interval_seconds if interval_seconds is not None else (0.1 if self._tty else 5.0)
        self._last = -float("inf")
        self._drawn = False
        self._undrawn: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        if not self._enabled:
            return
        if self._clock() - self._last < self._interval:
            self._undrawn = progress  # drawn at close, so the last line agrees with the summary
            return
        self._last = self._clock()
        self._draw(progress)

    def _draw(self, progress: Progress) -> None:
        line = self.render(progress.phase, progress.done, progress.total, progress.moved, progress.failed)
        self._stream.write(f"\r{line}\x1b[K" if self._tty else f"{line}\n")
        self._stream.flush()
        self._drawn = True
        self._undrawn = None

    @classmethod
    def render(cls, phase: str, done: int, total: int | None, moved: int, failed: int) -> str:
        if total:
            filled = min(cls.WIDTH, cls.WIDTH * done // total)
            bar = f"[{'#' * filled}{'.' * (cls.WIDTH - filled)}] {done}/~{total}"
        else:
            bar = f"{done}"
        if phase == "scan":  # `relay dlq list`: reads only, moves nothing
            return f"{phase}: {bar}"
        if phase == "discard":
            return f"{phase}: {bar}  discarded {moved}  not saved {failed}"
        if phase == "would discard":  # a dry run: ``moved`` counts the letters chosen
            return f"{phase}: {bar}  matched {moved}"
        return f"{phase}: {bar}  moved {moved}  failed {failed}"

    def close(self) -> None:
        if self._undrawn is not None:
            self._draw(self._undrawn)
        if self._drawn and self._tty:
            self._stream.write("\n")
            self._stream.flush()


def _settings_url(explicit: str | None, field: str) -> str:
    if explicit:
        return explicit
    from relay.settings import get_settings

    return get_settings().need(field)


def queue_url_of(args: argparse.Namespace) -> str:
    """The URL of the queue ``--queue`` names: ``--dlq-url``, or its setting."""
    return _settings_url(args.dlq_url, QUEUE_URL_SETTINGS[args.queue])


def destination_of(args: argparse.Namespace) -> str:
    """Where ``redrive`` sends the tasks of the queue ``--queue`` names: ``--queue-url``; with
    ``--stack-name``, the first hop's from the stack's output; else the setting."""
    output = DESTINATION_OUTPUTS.get(args.queue)
    if not args.queue_url and output and getattr(args, "stack_name", None):
        return stack_output(args, output, why=f"redrive --queue {args.queue}")
    return _settings_url(args.queue_url, TASK_QUEUES[args.queue])


# JSON document, table text, and what needs the operator's attention (None: everything done)
Outcome = tuple[dict[str, Any], str, str | None]


class StopOnCtrlC:
    """While a run lasts, a first Ctrl-C asks it to stop after the batch in hand (``requested``): a
    KeyboardInterrupt in the middle of a receive would leave its messages hidden for the visibility
    timeout, and one between a re-send and its delete would leave the original behind to be sent again.
    A second Ctrl-C interrupts at once. SIGTERM (``kill``, ``timeout``, a supervisor) counts as a
    Ctrl-C: its default would end the process mid-batch, with no summary."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():  # only there can a handler be set
            self._previous = {signum: signal.signal(signum, self._interrupt) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, previous)

    def _interrupt(self, signum: int, frame: object) -> None:
        if self._requested:
            raise KeyboardInterrupt
        self._requested = True
        print("stopping after the batch in hand (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def requested(self) -> bool:
        return self._requested


INTERRUPTED_NOW = (
    "interrupted. Messages in hand go back to the DLQ (nothing unsent was deleted); "
    "a move task already started keeps running in SQS."
)
INTERRUPTED_AFTER = (
    "interrupted: stopped after the batch in hand; the summary above is what was done, and every "
    "message not moved is back in the queue (a move task already started keeps running in SQS)"
)

LIST_INTERRUPTED_NOW = "interrupted. The messages read go back to the queue as they were: nothing was moved."
LIST_INTERRUPTED_AFTER = (
    "interrupted: stopped after the batch in hand; the summary above counts what was read, and every "
    "message read is back in the queue (nothing was moved)"
)


def run_with_progress(
    args: argparse.Namespace,
    work: Callable[[ProgressLine, Callable[[], bool]], Outcome],
    *,
    interrupted_now: str = INTERRUPTED_NOW,
    interrupted_after: str = INTERRUPTED_AFTER,
) -> int:
    """Run one command with a progress line, ended before anything else is printed (the error line too).
    ``interrupted_now`` / ``interrupted_after``: what a second / a first Ctrl-C left behind."""
    line = ProgressLine(enabled=not args.no_progress)
    try:
        with StopOnCtrlC() as ctrl_c:
            document, text, attention = work(line, ctrl_c.requested)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_now) from None
    finally:
        line.close()
    if ctrl_c.requested() and "ok" in document:  # a script reading only the JSON must not see "all done"
        document = {**document, "ok": False, "interrupted": True}
    # The text quotes message attributes (anyone with SendMessage on the DLQ writes them), SQS's
    # failure reasons and errors: escaped line by line, whatever part of it forgot to.
    print(json.dumps(document, indent=2) if args.format == "json" else visible_lines(text))
    if ctrl_c.requested():
        raise Interrupted(interrupted_after)
    if attention:
        raise NeedsAttention(attention)
    return ExitCode.OK


def _list(args: argparse.Namespace) -> int:
    from relay.logic.dlq import FailedEventGroups, list_dead_letters
    from relay.settings import get_settings
    from relay.wiring import sqs_queues

    def work(line: ProgressLine, stop: Callable[[], bool]) -> Outcome:
        report = list_dead_letters(
            sqs_queues(get_settings()),
            queue_url_of(args),
            groups=None if args.queue in TASK_QUEUES else FailedEventGroups(args.queue),
            max_messages=args.max,
            visibility_seconds=args.visibility,
            progress=line,
            stop=stop,
        )
        document = report.to_json()
        table = format_groups if args.queue in TASK_QUEUES else format_failed_groups
        limited = " (stopped at --max)" if report.limited else ""
        scanned = _count(report.scanned, "message")
        text = (
            f"{table(document['groups'])}\n\n"
            f"{scanned} scanned{limited}; SQS reports about {report.depth} in the queue."
        )
        if args.queue in FIFO_QUEUES and not report.limited:
            text += behind_shown(document, report.depth, report.scanned, args.queue)
        return document, text, None

    # A list moves nothing: its Ctrl-C says only that what it read is visible again.
    return run_with_progress(
        args, work, interrupted_now=LIST_INTERRUPTED_NOW, interrupted_after=LIST_INTERRUPTED_AFTER
    )


def _redrive(args: argparse.Namespace) -> int:
    if args.queue not in TASK_QUEUES:
        return _resubmit(args)
    from relay.logic.dlq import DLQ_REASONS, RedriveFilter, RedriveOptions, redrive
    from relay.settings import get_settings
    from relay.wiring import sqs_queues

    unknown = sorted(set(args.reason or ()) - set(DLQ_REASONS))
    if unknown:
        raise UsageError(f"unknown reason {', '.join(unknown)}; one of {', '.join(DLQ_REASONS)}")
    try:
        options = RedriveOptions(
            filter=RedriveFilter.of(args.target, args.integration, args.reason),
            max_messages=args.max,
            dry_run=args.dry_run,
            method=args.method,
            max_per_second=args.rate,
        )
    except ValueError as refused:
        raise UsageError(str(refused)) from None
    _refuse_a_rate_nothing_paces(args, options)

    def work(line: ProgressLine, stop: Callable[[], bool]) -> Outcome:
        result = redrive(
            sqs_queues(get_settings()),
            queue_url_of(args),
            destination_of(args),
            options,
            progress=line,
            stop=stop,
        )
        document = result.to_json()
        if document["fallbackReason"]:  # a notice, not the command's output (also in the JSON)
            print(f"relay dlq redrive: note: {document['fallbackReason']}", file=sys.stderr)
        attention = result.attention
        text = format_redrive(document)
        if args.queue in FIFO_QUEUES and args.dry_run and args.max is None:
            text += behind_shown(document, result.depth, result.scanned, args.queue)
        return document, text, attention

    return run_with_progress(args, work)


def _refuse_a_rate_nothing_paces(args: argparse.Namespace, options: RedriveOptions) -> None:
    """--rate paces SQS's move task only. Where the run can never start one, accepting it would let the
    operator believe the re-send is paced: a usage error. (Where it may start one but SQS lacks it, the
    fallback's notice says the re-send is not paced.) A dry run is judged as the run it rehearses."""
    fifo = args.queue in FIFO_QUEUES
    if args.rate is None or replace(options, dry_run=False).wants_move_task(ordered=fifo):
        return
    if options.method == "resend":
        why = "--method resend re-sends every message"
    elif args.queue == ORDERED:
        why = f"--queue {ORDERED} re-sends, in each conversation's order, unless --method move-task"
    elif fifo:
        why = (
            f"--queue {args.queue} re-sends, each letter under a fresh deduplication id, "
            "unless --method move-task"
        )
    else:
        why = "a filter or --max re-sends the messages it picks"
    raise UsageError(f"--rate paces only SQS's move task, which this redrive never starts ({why})")


def _resubmit(args: argparse.Namespace) -> int:
    """``redrive --queue eventbridge|intake-failures``: the events back through the intake."""
    from relay.logic.dlq import ResubmitOptions, resubmit
    from relay.settings import get_settings
    from relay.wiring import sqs_queues
    from relay.wiring.dlq import failed_event_intake

    given = [flag for name, flag in DELIVERY_ONLY.items() if getattr(args, name)]
    given += ["--method"] if args.method != "auto" else []
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise UsageError(f"{', '.join(given)} {verb} only to {TASK_QUEUES_NAMED}")
    settings = get_settings()
    if args.queue_url:
        settings = settings.model_copy(update={"delivery_queue_url": args.queue_url})
    options = ResubmitOptions(max_messages=args.max, dry_run=args.dry_run)

    def work(line: ProgressLine, stop: Callable[[], bool]) -> Outcome:
        queue_url = queue_url_of(args)
        intake = failed_event_intake(settings)
        result = resubmit(
            sqs_queues(settings), args.queue, queue_url, intake, options, progress=line, stop=stop
        )
        document = result.to_json()
        attention = None
        if not result.ok:
            refused = len(result.refused)
            attention = (
                "1 event stays in its queue (the intake refuses it)"
                if refused == 1
                else f"{refused} events stay in their queue (the intake refuses them)"
            ) + (f"; {result.error}" if result.error else "")
        return document, format_resubmit(document), attention

    return run_with_progress(args, work)


def format_groups(groups: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of delivery DLQ group documents (``DeadLetterGroup.to_json``)."""
    return _table(
        (
            "REASON",
            "INTEGRATION",
            "TARGET",
            "COUNT",
            "OLDEST",
            "LAST STATUS",
            "LAST ERROR",
            "SAMPLE DELIVERY ID",
        ),
        [
            (
                g["reason"],
                g["integrationId"],
                g["targetId"],
                str(g["count"]),
                _age(g["oldestAgeSeconds"]),
                ",".join(g["lastStatuses"]) or "-",
                ",".join(g["lastErrors"]) or "-",
                g["sampleDeliveryId"] or f"(message {g['sampleMessageId']})",
            )
            for g in groups
        ],
    )


def format_failed_groups(groups: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of failure-queue group documents (``FailedEventGroup.to_json``)."""
    return _table(
        ("REASON", "ERROR TYPE", "COUNT", "OLDEST", "SAMPLE EVENT ID"),
        [
            (
                g["reason"],
                g["errorType"] or "-",
                str(g["count"]),
                _age(g["oldestAgeSeconds"]),
                g["sampleEventId"] or f"(message {g['sampleMessageId']})",
            )
            for g in groups
        ],
    )


def chosen_groups(document: dict[str, Any], table: Callable[[Sequence[dict[str, Any]]], str]) -> str:
    """The table of the groups a run chose (moved, or would discard...): a queue that had messages, of
    which the filters chose none, is not shown as "no messages"."""
    if document["groups"] or not document["scanned"]:
        return table(document["groups"])
    return f"none of the {_count(document['scanned'], 'message')} scanned was chosen"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    return format_table([header, *rows]) if rows else "no messages"


def _age(seconds: int | None) -> str:
    """2d03h, 5h12m, 7m05s, 42s."""
    if seconds is None:
        return "-"
    for unit, size, small_unit, small_size in (
        ("d", 86_400, "h", 3_600),
        ("h", 3_600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // small_size:02d}{small_unit}"
    return f"{seconds}s"


def behind_shown(
    document: dict[str, Any], depth: int, scanned: int, queue: str, then: str | None = None
) -> str:
    """What a scan of a FIFO DLQ (``queue``: ordered, first-hop) cannot see (``behindShown`` in
    ``document``, and a note for the text ending in ``then``): SQS hands out no more of a message group
    while some of its letters are in flight, and a scan that moves nothing holds them until it ends. An
    ordered DLQ's groups are conversations; the first hop's are single deliveries, which hold more than
    one letter only when a redriven copy came back while its original stayed (re-sent, not deleted)."""
    from relay.logic.dlq.discard import FIFO_GROUPS

    document["behindShown"] = behind = max(0, depth - scanned)
    if not behind:
        return ""
    group = FIFO_GROUPS[queue]
    if then is None:
        then = f"in their {group}s, not counted above (a redrive moves them too, in order)."
    return (
        f"\nA FIFO queue shows no more of a {group} while a scan holds some of its letters: about"
        f" {behind} more wait behind them {then}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def format_redrive(document: dict[str, Any]) -> str:
    lines = []
    mode = document["mode"]
    task = document["task"]
    if mode == "move-task" and task is not None:
        to_move = task["toMove"] if task["toMove"] is not None else "?"
        lines.append(f"SQS move task {task['status']}: {task['moved']} of {to_move} messages moved")
        if task["failureReason"]:
            lines.append(f"failure reason: {task['failureReason']}")
    else:
        verb = "would move" if mode == "dry-run" else "moved"
        lines.append(chosen_groups(document, format_groups))
        lines.append("")
        count = document["matched"] if mode == "dry-run" else document["moved"]
        lines.append(
            f"{verb} {count} of {document['scanned']} scanned; skipped {document['skipped']}, "
            f"send failed {document['sendFailed']} (left in the DLQ), "
            f"re-sent but not deleted {document['notDeleted']}, "
            f"arrived during the run {document['arrivedDuringRun']} (left for the next run)"
        )
    if document["error"]:
        lines.append(f"error: {document['error']}")
    return "\n".join(lines)


def format_resubmit(document: dict[str, Any]) -> str:
    """The summary of ``redrive --queue eventbridge|intake-failures`` (``ResubmitResult.to_json``); its
    lines quote event ids a sender chose, escaped where every dlq summary is (``_run``)."""
    dry_run = document["mode"] == "dry-run"
    lines = [format_failed_groups(document["groups"]), ""]
    if dry_run:
        lines.append(f"would send {document['matched']} of {document['scanned']} scanned through the intake")
    else:
        lines.append(
            f"sent {document['accepted']} of {document['scanned']} scanned through the intake (accepted, "
            f"deleted); refused {len(document['refused'])} (left in the queue), accepted but not deleted "
            f"{document['notDeleted']}, skipped {document['skipped']}"
        )
    for refusal in document["refused"]:
        event = refusal["eventId"] or "(no event)"
        lines.append(f"refused: event {event}, message {refusal['messageId']}: {refusal['reason']}")
    if document["error"]:
        lines.append(f"error: {document['error']}")
    return "\n".join(lines)

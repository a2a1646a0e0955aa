"""``relay dlq discard``: remove the letters a redrive cannot help, never without a copy.

It takes ``redrive``'s queue choice (``--queue``, ``--dlq-url``) and filters (``--target``,
``--integration``, ``--reason`` on the delivery, ordered and first-hop DLQs; ``--id`` on every queue: a
message id, delivery id or event id), ``--max``, ``--dry-run`` and ``--format``. A run with no filter is
refused unless ``--all`` says the whole queue is meant. Each letter is appended to ``--save FILE`` (one JSON
line: message id, the body as received, its message attributes, reason, ids, when it was discarded;
created with mode 0600) and the file fsynced before the letter is deleted; a letter whose line could
not be written stays in the queue and ends the run. The run is audited (a log line, and an audit record
per letter under its target in the audit bucket: who, when, which ids; never a body).

As everywhere in ``relay dlq``, only ids, reasons and counts are printed, never a body.

Exit codes (relay.cli.exit_codes): 0 done, or an empty queue; 1 something chosen was left in the
queue (not saved, not deleted), a filter value no letter of the queue carries (a typo, or a name for
an id: as in redrive), or the audit record could not be written;
2 usage (no filter and no ``--all``, ``--save`` missing or not openable); 3 the queue or the audit
bucket's settings unreadable; 130 on Ctrl-C (the batch in hand is saved and deleted, or put back: never
left hidden, never deleted unsaved).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay.cli import dlq_cmd
from relay.cli.exit_codes import UsageError

if TYPE_CHECKING:
    from relay.adapters.letter_file import LetterFile
    from relay.logic.dlq.discard import DiscardOptions

MAX_IDS_SHOWN = 50  # a dry run's text lists at most this many letters (the JSON lists them all)
EPILOG = """\
Nothing is removed without a copy: each letter is appended to --save FILE as one JSON line (messageId,
the body exactly as received, messageAttributes, reason, target and ids, discardedAt) and the file is
fsynced before the letter is deleted; a letter whose line could not be written stays in the queue and
the run stops (exit 1). FILE is created with mode 0600 and appended to if it exists; it must be a
regular file. A filter (--reason, --target, --integration, --id) or --all is required. Bodies are never
printed. Each run is audited: a log line, and an audit record per letter (outcome dlq-discarded: who,
when, which ids; never a body). Ctrl-C stops after the batch in hand (saved and deleted, or put back).

examples:
  relay dlq discard --reason poison --dry-run
  relay dlq discard --reason poison --save poison.jsonl
  relay dlq discard --target TARGET_ID --save retired.jsonl
  relay dlq discard --queue ordered --id MESSAGE_ID --save one.jsonl
  relay dlq discard --queue eventbridge --all --save eventbridge.jsonl

docs/operations-dlq.md, "Discarding", has the details."""


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "discard",
        parents=[common],
        help="delete letters a redrive cannot help (poison, a retired target), each saved to a file first",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--save",
        metavar="FILE",
        help="required (but on --dry-run): append each letter to FILE as one JSON line, body and "
        "attributes as received, fsynced before the letter is deleted (created with mode 0600)",
    )
    parser.add_argument(
        "--target",
        action="append",
        metavar="TARGET_ID",
        help="only this target (repeatable; delivery, ordered, first-hop)",
    )
    parser.add_argument(
        "--integration",
        action="append",
        metavar="INTEGRATION_ID",
        help="only this integration (repeatable; delivery, ordered, first-hop)",
    )
    parser.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="only this reason (repeatable; delivery, ordered, first-hop): poison, target-gone, "
        "unknown-target, ...",
    )
    parser.add_argument(
        "--id",
        action="append",
        dest="ids",
        metavar="ID",
        help="only the letter with this message id, delivery id or event id (repeatable; every queue)",
    )
    parser.add_argument(
        "--all", action="store_true", dest="everything", help="no filter: discard every letter of the queue"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would be discarded; write and delete nothing"
    )
    parser.set_defaults(func=_discard)


def _discard(args: argparse.Namespace) -> int:
    from relay.logic.dlq import DLQ_REASONS, RedriveFilter
    from relay.logic.dlq.discard import DiscardFilter, DiscardOptions

    given = [flag for name, flag in dlq_cmd.DELIVERY_ONLY.items() if getattr(args, name, None)]
    if args.queue not in dlq_cmd.TASK_QUEUES and given:
        verb = "applies" if len(given) == 1 else "apply"
        raise UsageError(
            f"{', '.join(given)} {verb} only to {dlq_cmd.TASK_QUEUES_NAMED} (--queue {args.queue} is "
            "filtered by --id)"
        )
    unknown = sorted(set(args.reason or ()) - set(DLQ_REASONS))
    if unknown:
        raise UsageError(f"unknown reason {', '.join(unknown)}; one of {', '.join(DLQ_REASONS)}")
    try:
        options = DiscardOptions(
            filter=DiscardFilter(
                RedriveFilter.of(args.target, args.integration, args.reason), frozenset(args.ids or ())
            ),
            everything=args.everything,
            max_messages=args.max,
            dry_run=args.dry_run,
        )
    except ValueError as refused:
        raise UsageError(f"{refused}; nothing was discarded") from None
    if not args.dry_run and not args.save:
        raise UsageError(
            "--save FILE is required: every letter is saved there before it is deleted; nothing was discarded"
        )
    return _discard_with(args, options)


def _discard_with(args: argparse.Namespace, options: DiscardOptions) -> int:
    import uuid

    from relay.logic.dlq.discard import DiscardAudit, discard
    from relay.settings import get_settings
    from relay.wiring import sqs_queues

    settings = get_settings()
    queue_url = dlq_cmd.queue_url_of(args)  # a queue URL setting missing: nothing opened yet
    copies, audit = None, None
    if not args.dry_run:
        from relay.wiring.operator import actor, audit_sink

        sink = audit_sink(settings)  # no audit bucket: refused before anything is opened or deleted
        copies = _open(args.save)
        audit = DiscardAudit(sink, actor(settings), uuid.uuid4().hex)

    def work(line: dlq_cmd.ProgressLine, stop: Callable[[], bool]) -> dlq_cmd.Outcome:
        result = discard(
            sqs_queues(settings), args.queue, queue_url, options, copies, audit, progress=line, stop=stop
        )
        document = result.to_json()
        if result.note:  # nothing was left behind by it: a notice, not the command's output
            print(f"relay dlq discard: note: {result.note}", file=sys.stderr)
        text = format_discard(document, args.queue)
        if args.queue in dlq_cmd.FIFO_QUEUES:
            seen_later = " (a real run sees those behind the letters it discards)" if args.dry_run else ""
            text += dlq_cmd.behind_shown(
                document, result.depth, result.scanned, args.queue, then=f"not looked at{seen_later}."
            )
        return document, text, result.attention

    try:
        return dlq_cmd.run_with_progress(
            args,
            work,
            interrupted_now="interrupted. Letters in hand go back to the queue (nothing unsaved was deleted)",
            interrupted_after="interrupted: stopped after the batch in hand; the summary above is what was "
            "discarded (every letter discarded is in the --save file), and every other letter is back "
            "in the queue",
        )
    finally:
        if copies is not None:
            copies.close()


def _open(path: str) -> LetterFile:
    from relay.adapters.letter_file import LetterFile

    try:
        copies = LetterFile(path)
    except OSError as exc:
        raise UsageError(
            f"--save {path}: cannot open it for appending ({exc.strerror or type(exc).__name__}); "
            "nothing was discarded"
        ) from None
    if copies.readable_by_others:
        print(
            f"relay dlq discard: note: {path} is readable by others (mode {copies.mode:04o}) and will "
            "hold message bodies: consider chmod 600",
            file=sys.stderr,
        )
    return copies


def format_discard(document: dict[str, Any], queue: str) -> str:
    """The summary of ``relay dlq discard`` (``DiscardResult.to_json``): ids, reasons and counts only."""
    table = dlq_cmd.format_groups if queue in dlq_cmd.TASK_QUEUES else dlq_cmd.format_failed_groups
    lines = [dlq_cmd.chosen_groups(document, table), ""]
    if document["mode"] == "dry-run":
        lines.append(
            f"would discard {document['matched']} of {document['scanned']} scanned"
            + (
                f" ({document['arrivedDuringRun']} arrived during the run)"
                if document["arrivedDuringRun"]
                else ""
            )
        )
        letters = document["letters"]
        if letters:
            lines.append("")
            rows = [("MESSAGE ID", "REASON", "TARGET", "DELIVERY ID", "EVENT ID")]
            rows += [
                (
                    letter["messageId"],
                    letter["reason"],
                    letter["targetId"] or "-",
                    letter["deliveryId"] or "-",
                    letter["eventId"] or "-",
                )
                for letter in letters[:MAX_IDS_SHOWN]
            ]
            from relay.cli.terminal import format_table

            lines.append(format_table(rows))
            if len(letters) > MAX_IDS_SHOWN:
                lines.append(f"... and {len(letters) - MAX_IDS_SHOWN} more (--format json lists them all)")
    else:
        lines.append(
            f"discarded {document['discarded']} of {document['scanned']} scanned (each saved to "
            f"{document['saveFile']} first); skipped {document['skipped']}, arrived during the run "
            f"{document['arrivedDuringRun']} (left for the next run), not saved {document['notSaved']} "
            f"(left in the queue), saved but not deleted {document['notDeleted']} (left in the queue, "
            "and in the file)"
        )
    if document["error"]:
        lines.append(f"error: {document['error']}")
    return "\n".join(lines)

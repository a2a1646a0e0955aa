"""``relay deliveries show ID | replay ID``: what happened to an event, and send it again.

- ``show`` prints every attempt for every target, in time order (status, latency, outcome, error code
  and text, DLQ reason, breaker state), from the audit objects of the days ``--since`` reaches into
  (default 24 h); ID is an event id, a delivery id or a conversation id. ``--athena`` runs the stack's
  saved timeline query in Athena instead, for long ranges.
- ``replay`` queues the archived event again, for one target or every target it had, through the
  normal delivery path (fresh attempt counters, the same ``deliveryId`` unless ``--new-id``); every
  replay is audited. ``--dry-run`` shows what would be queued.

Only ids, outcomes and timings are printed: never an event's text or a response body.

Exit codes (relay.cli.exit_codes): 3 when ID names nothing in the days searched, when a replay is
refused (past retention, a target unknown, disabled or not the event's: the line says why), or AWS
fails; 1 when a replay was queued but its audit record could not be written.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from relay.cli.arguments import duration, positive_seconds
from relay.cli.exit_codes import CommandFailed, ExitCode, NeedsAttention, UsageError
from relay.cli.stack_option import STACK_OPTION, stack_output
from relay.cli.terminal import format_table, visible

if TYPE_CHECKING:
    from relay.logic.deliveries.replay import Replay
    from relay.logic.deliveries.timeline import Timeline
    from relay.models.targets import Target

# Stack outputs naming the Athena workgroup and the saved timeline query (template.yaml).
WORKGROUP_OUTPUT = "AthenaWorkGroupName"
TIMELINE_QUERY_OUTPUT = "EventTimelineQueryId"
ATHENA_TIMEOUT_SECONDS = 300.0  # how long `show --athena` lets its query run unless --timeout says


def where_a_conversation_waits(conversation_id: str | None = None) -> str:
    """What tells that an ordered conversation waits. Not ``relay dlq list --queue ordered``: that lists
    the ordered dead-letter queue only, and the OrderedDeliveryQueue, where a held or blocked
    conversation sits, is FIFO: listing it would receive its messages and hold their groups."""
    show = (
        f"relay deliveries show {conversation_id}"
        if conversation_id
        else "relay deliveries show CONVERSATION_ID"
    )
    return (
        f"{show} lists the records of the conversation a dispatcher has received (outcome held or "
        "blocked), and the OrderedGroupBlocked alarm and the OrderedHeld metric tell that a conversation "
        "waits"
    )


def register(subparsers: Any) -> None:
    group = subparsers.add_parser(
        "deliveries", help="find what happened to an event (every attempt, every target) and replay it"
    )
    sub = group.add_subparsers(dest="deliveries_command", metavar="SUBCOMMAND", required=True)

    show = sub.add_parser(
        "show",
        parents=[STACK_OPTION],
        help="every attempt for every target of an event, a delivery or a conversation, in time order",
    )
    show.add_argument("ident", metavar="ID", help="an event id, a delivery id or a conversation id")
    show.add_argument(
        "--since",
        type=duration,
        default=timedelta(hours=24),
        metavar="DURATION",
        help="look this far back (90m, 24h, 7d; default 24h): the audit's days from then to now",
    )
    show.add_argument("--target", metavar="TARGET_ID", help="only this target's attempts")
    show.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    show.add_argument(
        "--athena",
        action="store_true",
        help="run the stack's saved timeline query in Athena instead of reading the audit objects "
        "(long ranges; needs --stack-name)",
    )
    show.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help=f"with --athena: the longest the query may run (default {ATHENA_TIMEOUT_SECONDS:g})",
    )
    show.set_defaults(func=_show)

    replay = sub.add_parser(
        "replay",
        parents=[STACK_OPTION],
        help="queue an archived event again for one target or every target it had",
    )
    replay.add_argument("ident", metavar="ID", help="an event id or a delivery id (that delivery's target)")
    replay.add_argument(
        "--target", metavar="TARGET_ID", help="only this target (default: every target it had)"
    )
    replay.add_argument(
        "--new-id",
        action="store_true",
        help="give the replay a fresh deliveryId (webhook-id): receivers will not take it for a duplicate",
    )
    replay.add_argument("--dry-run", action="store_true", help="show what would be queued; queue nothing")
    replay.add_argument(
        "--since",
        type=duration,
        default=timedelta(days=7),
        metavar="DURATION",
        help="look this far back in the archive (default 7d, the archive's default retention)",
    )
    replay.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    replay.set_defaults(func=_replay)


# --- show -------------------------------------------------------------------------------------------
def _show(args: Any, out: IO[str] | None = None) -> int:
    from relay.logic.deliveries.timeline import days_back

    out = out or sys.stdout
    if args.timeout is not None and not args.athena:
        raise UsageError("--timeout applies only with --athena (the audit objects are read without a query)")
    dates = days_back(datetime.now(UTC), args.since)
    typed, forms = args.ident, tuple(spellings(args.ident))
    if args.athena:  # the saved query takes one id: it runs once per spelling
        found, whole, other_targets = _look_up(args, forms, dates, read=None)
    else:
        # The audit objects are read once for every spelling (a read is one GET per object of the
        # range); with --target, that target's objects only (the audit is partitioned by target), and
        # every target's only when those hold nothing, to say which targets the event went to.
        found, whole, other_targets = _look_up(
            args, forms, dates, _audit_lines(forms, dates, target=args.target)
        )
        if args.target and not found.found:
            found, whole, other_targets = _look_up(args, forms, dates, _audit_lines(forms, dates))
    if not found.found and whole is not None:  # the event is there, for other targets only
        raise CommandFailed(
            f"no audit record names {typed} to target {args.target} from {dates[0]} to {dates[-1]}; "
            f"its records name other targets: {', '.join(sorted(other_targets))}"
            + _why_not_for(whole, args.target)
        )
    if not found.found:
        where = f" to target {args.target}" if args.target else ""
        raise CommandFailed(
            f"no audit record names {typed}{where} from {dates[0]} to {dates[-1]}: "
            "look further back with --since (or --athena for long ranges); an accepted event of an ordered "
            "conversation is audited only once a dispatcher receives it, so one waiting behind a held or "
            f"blocked record has no record yet: {where_a_conversation_waits()}; and a Genesys EventBridge "
            "event the intake refused never became a delivery: relay dlq list --queue intake-failures "
            "(and --queue eventbridge) lists those"
        )
    if args.format == "json":
        print(json.dumps(found.to_json(), indent=2), file=out)
    else:
        print(format_timeline(found), file=out)
    # With --target the other targets' lines were left out on purpose, and a delivery id names one
    # target's lines only: either way a target without a line is no sign of a wait.
    if not args.target and not any(a["deliveryId"] == args.ident for a in found.attempts):
        _say_what_may_wait(found)
    return ExitCode.OK


def _look_up(
    args: Any, forms: tuple[str, ...], dates: list[str], read: list[dict[str, Any]] | None
) -> tuple[Timeline, Timeline | None, set[str]]:
    """The timeline of the first spelling in ``forms`` that names something in ``read`` (the audit lines
    read; None: the Athena query's, per spelling), for ``--target`` only if given; then, when that
    target has none, every target's (``whole``) and the targets they name. ``args.ident`` becomes the
    spelling looked at last, which the messages name."""
    from relay.logic.deliveries.timeline import timeline

    whole: Timeline | None = None  # every target's lines, of the spelling the other targets' lines name
    other_targets: set[str] = set()
    for spelling in forms:
        args.ident = spelling
        lines = _athena_lines(args, dates) if read is None else read
        found = timeline(lines, spelling, dates)
        if args.target:
            other_targets |= {str(line["targetId"]) for line in found.attempts}
            whole = whole or (found if found.attempts else None)
            found = timeline([line for line in lines if line.get("targetId") == args.target], spelling, dates)
        if found.found:
            break
    return found, whole, other_targets


def spellings(ident: str) -> list[str]:
    """``ident`` as given, then, for a UUID written otherwise (upper case, braces), its lower-case forms:
    the canonical one (the relay writes delivery ids that way, and so does Genesys its ids) and, for 32
    hex digits without hyphens, those digits (how Genesys writes Open Messaging event ids); a
    receiver's database may hand either back in upper case. The form given comes first: an id a sender
    chose is kept as written."""
    try:
        parsed = uuid.UUID(ident)
    except ValueError:
        return [ident]
    forms = [ident, str(parsed)] if "-" in ident else [ident, parsed.hex, str(parsed)]
    return list(dict.fromkeys(forms))


def _say_what_may_wait(found: Timeline) -> None:
    """Name, on stderr, each ordered target that has no line for an event shown: its delivery may be
    waiting in its conversation, which the audit cannot show yet."""
    for event_id, target, conversation in _ordered_without_a_line(found, _targets_of(found)):
        print(
            visible(
                f"relay deliveries show: event {event_id} has no record for ordered target "
                f"{target.target_id} ({target.name}): one waiting behind a held or blocked record of its "
                "conversation has none until a dispatcher receives it, unless the target's filters left "
                "the event out; " + where_a_conversation_waits(conversation)
            ),
            file=sys.stderr,
        )


def _why_not_for(whole: Timeline, target_id: str) -> str:
    """Why an event audited for other targets may have no line for ``target_id``: a wait in its ordered
    conversation, or its event filters (one TargetsTable read for both)."""
    targets = _targets_of(whole)
    return _may_wait_for(whole, target_id, targets) or _may_have_filtered(target_id, targets)


def _may_wait_for(whole: Timeline, target_id: str, targets: Mapping[str, Sequence[Target]]) -> str:
    """For ``show --target`` naming an ordered target the event has no line for: its delivery may be
    waiting in its conversation (the audit knows nothing of it yet), so the error says so too."""
    for _, target, conversation in _ordered_without_a_line(whole, targets):
        if target.target_id == target_id:
            return (
                f"; {target_id} is an ordered target: a delivery waiting behind a held or blocked record "
                "of its conversation has no record until a dispatcher receives it; "
                + where_a_conversation_waits(conversation)
            )
    return ""


def _may_have_filtered(target_id: str, targets: Mapping[str, Sequence[Target]]) -> str:
    """For ``show --target`` naming a target with event filters that has no line for the event: the
    filters may have left it out at the intake, which the audit does not record (no task, no line)."""
    from relay.models.event_filters import EventFilters

    named = [t for ts in targets.values() for t in ts if t.target_id == target_id]
    if any(target.filters != EventFilters() for target in named):
        return (
            f"; {target_id} has event filters, which may have left the event out: a filtered event is "
            "never queued for that target and has no record (relay targets list shows its filters)"
        )
    return ""


def _ordered_without_a_line(
    found: Timeline, targets: Mapping[str, Sequence[Target]]
) -> list[tuple[str, Target, str | None]]:
    """(event id, ordered target, conversation id) for each ordered target of the events' integrations
    (``targets``: _targets_of) that has no line for the event."""
    from relay.logic.deliveries.timeline import unaudited_ordered

    conversations = {line["eventId"]: line["conversationId"] for line in found.attempts}
    return [
        (event_id, target, conversations.get(event_id))
        for event_id, target in unaudited_ordered(found, targets)
    ]


def _targets_of(found: Timeline) -> dict[str, list[Target]]:
    """The targets of each integration ``found``'s lines name, as the TargetsTable holds them now; none
    when it cannot be read (the notes built on them are a courtesy: what was found stands on its own)."""
    from relay.errors import DependencyUnavailable
    from relay.settings import get_settings
    from relay.wiring import target_store

    store = target_store(get_settings(), cache_ttl_seconds=0)
    try:
        entries = {i: store.get(i) for i in {line["integrationId"] for line in found.attempts} if i}
    except DependencyUnavailable:
        return {}
    return {i: list(entry.targets) for i, entry in entries.items() if entry is not None}


def _audit_lines(
    forms: tuple[str, ...], dates: list[str], *, target: str | None = None
) -> list[dict[str, Any]]:
    from relay.settings import get_settings
    from relay.wiring.operator import audit_reader

    return audit_reader(get_settings()).lines(dates, containing=forms, target=target)


def _athena_lines(args: Any, dates: list[str]) -> list[dict[str, Any]]:
    from relay.logic.deliveries.timeline import from_table_row
    from relay.settings import get_settings
    from relay.wiring.operator import athena_queries

    why = "--athena"
    workgroup = stack_output(args, WORKGROUP_OUTPUT, why=why)
    query_id = stack_output(args, TIMELINE_QUERY_OUTPUT, why=why)
    # The saved query's parameters, in order: the first day to read, then the id.
    rows = athena_queries(get_settings()).run_named(
        query_id, workgroup, [dates[0], args.ident], timeout_seconds=args.timeout or ATHENA_TIMEOUT_SECONDS
    )
    return [from_table_row(row) for row in rows]


def format_timeline(found: Timeline) -> str:
    """The attempts as a table (an EVENT column when several events are shown; the error's text last),
    then one line per delivery: where it stands and its delivery id."""
    several = len({a["eventId"] for a in found.attempts}) > 1
    header = (
        "TIME",
        "TARGET",
        "ATTEMPT",
        "OUTCOME",
        "STATUS",
        "LATENCY_MS",
        "ERROR",
        "DLQ_REASON",
        "BREAKER",
        "NOTE",
        "ERROR_DETAIL",
    )
    rows: list[tuple[str, ...]] = [("TIME", "EVENT", *header[1:]) if several else header]
    for a in found.attempts:
        cells = [
            _text(a[key])
            for key in (
                "targetId",
                "attempt",
                "outcome",
                "status",
                "latencyMs",
                "errorCode",
                "dlqReason",
                "breakerState",
            )
        ]
        event = [_text(a["eventId"])] if several else []
        # The error's text last: it is the longest cell, and it says what to fix (which token endpoint
        # answered what, which TLS failure) where the code only names the kind.
        rows.append((_text(a["startedAt"]), *event, *cells, _note(a), _text(a["error"])))
    summary = [format_table(rows), ""]
    for d in found.deliveries():
        if d["lastOutcome"] == "replayed" and d["replayOf"] and not d["attempts"]:
            # A --new-id replay's attempts name the new id, which the old one's lines do not
            new = ", ".join(d["deliveryIds"])
            summary.append(
                visible(
                    f"event {d['eventId']} to {d['targetId']}: replayed as {new}, replacing {d['replayOf']}; "
                    f"its attempts are under the new id: relay deliveries show {new}"
                )
            )
            continue
        tried = f"{d['attempts']} attempt{'s' if d['attempts'] != 1 else ''}"
        if d["attemptsInAll"] != d["attempts"]:
            since = "its last replay" if d["restartedBy"] == "replay" else "it was dead-lettered"
            tried += f" since {since} ({d['attemptsInAll']} in all)"
        summary.append(
            visible(
                f"event {d['eventId']} to {d['targetId']}: {d['lastOutcome']} after {tried}; "
                f"deliveryId {', '.join(d['deliveryIds']) or '-'}"
                + (f", replacing {d['replayOf']}" if d["replayOf"] else "")
            )
        )
    return "\n".join(summary)


# Outcomes whose DLQ reason is what the record would have been dead-lettered for: it is in no DLQ, and
# the note says where it is, so nobody looks for a letter that does not exist.
_IN_NO_DLQ = {
    "blocked": "blocked in its conversation, in no DLQ",
    "left-for-redelivery": "left in its queue, in no DLQ",
}


def _note(attempt: dict[str, Any]) -> str:
    if attempt["actor"]:
        replaces = f", replacing {attempt['replayOf']}" if attempt["replayOf"] else ""
        return f"by {attempt['actor']}{replaces}"
    outcome, retry_in, back_in = attempt["outcome"], attempt["retryInSeconds"], attempt["deferredSeconds"]
    notes = [_IN_NO_DLQ[outcome]] if attempt["dlqReason"] and outcome in _IN_NO_DLQ else []
    if retry_in is not None:  # 0: the wait rounded down to none
        notes.append(f"retry in {retry_in} s" if retry_in else "retry at once")
    elif back_in is not None:
        notes.append(f"back in {back_in} s")
    return "; ".join(notes) or "-"


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


# --- replay -----------------------------------------------------------------------------------------
def _replay(args: Any, out: IO[str] | None = None) -> int:
    from relay.errors import ReplayRefused
    from relay.logic.deliveries.lookup import find_events
    from relay.logic.deliveries.replay import plan_replay, run_replay
    from relay.logic.deliveries.timeline import days_back
    from relay.settings import get_settings
    from relay.wiring import sqs_queues, target_store
    from relay.wiring.operator import actor, audit_sink, event_archive

    out = out or sys.stdout
    settings = get_settings()
    now = datetime.now(UTC)
    dates = days_back(now, args.since)
    archive = event_archive(settings)
    forms = spellings(args.ident)
    found = archive.records(dates, containing=tuple(forms))  # one read for every spelling
    unreadable = found.unreadable
    for spelling in forms:
        events = find_events(found, spelling)
        if events:
            args.ident = spelling  # a refusal names the id as typed unless another spelling found it
            break
    try:
        replay = plan_replay(
            events,
            args.ident,
            searched=f"{dates[0]} to {dates[-1]}",
            targets=target_store(settings, cache_ttl_seconds=0),
            archive=archive,
            target_id=args.target,
            new_id=args.new_id,
            unreadable_lines=unreadable,
        )
    except ReplayRefused as exc:
        raise CommandFailed(str(exc)) from None
    if args.dry_run:
        _print_replay(args, replay, out, verb="would queue")
        return ExitCode.OK
    settings.need("delivery_queue_url")
    audited = run_replay(
        replay,
        queue=sqs_queues(settings),
        audit=audit_sink(settings),
        actor=actor(settings),
        # When it is queued, not when the command started: the archive search before it takes as long
        # as there are objects to read (a minute and more), and the timeline orders the replay by it.
        now=datetime.now(UTC),
        operation_id=uuid.uuid4().hex,
    )
    _print_replay(args, replay, out, verb="queued", actor=audited.records[0]["actor"])
    if audited.unwritten:
        raise NeedsAttention(
            f"replay queued, but its audit record could not be written for {', '.join(audited.unwritten)} "
            "(it is in the command's log output)"
        )
    return ExitCode.OK


def _print_replay(args: Any, replay: Replay, out: IO[str], *, verb: str, actor: str | None = None) -> None:
    doc = replay.to_json()
    if replay.out_of_order:
        print(
            f"relay deliveries replay: {', '.join(replay.out_of_order)} "
            f"{'deliver' if len(replay.out_of_order) > 1 else 'delivers'} in conversation order; "
            "this replay goes outside it, now. If the original is still held behind an earlier record "
            "of its conversation, it arrives again when that one is settled (the same webhook-id unless "
            "--new-id).",
            file=sys.stderr,
        )
    if args.format == "json":
        print(
            json.dumps({"mode": "dry-run" if args.dry_run else "replayed", "actor": actor, **doc}), file=out
        )
        return
    conversation = f", conversation {doc['conversationId']}" if doc["conversationId"] else ""
    print(visible(f"event {doc['eventId']} (integration {doc['integrationId']}{conversation})"), file=out)
    for d in doc["deliveries"]:
        replacing = f" (replacing {d['replayOf']})" if d["replayOf"] else ""
        print(f"  {verb} for {d['targetId']}: deliveryId {d['deliveryId']}{replacing}", file=out)
    if actor:
        print(f"audited as {actor}", file=out)
